"""The ``EventLog`` contract (``sidecar/durability/base.py``), checked for every log.

Each check runs over ``WriteAheadLog`` and ``MemoryLog``. Where the two legitimately differ
(the write-ahead log drops and trims whole segments) the checks state invariants that hold
for both; exact per-segment figures live in ``test_wal.py``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from sidecar.durability import EventLog, LogFull, LogStats, MemoryLog, WriteAheadLog
from sidecar.durability.base import full_headroom
from sidecar.durability.framing import frame_size
from sidecar.events.record import (
    EVENT_SEQ_STEP,
    Record,
    is_notice,
    next_event_seq,
    starts_event,
    trailing_seqs,
)

MAX_BYTES = 64 * 1024
SEGMENT_BYTES = 4096
WAIT_S = 10.0


def rec(seq: int, size: int = 100) -> Record:
    body = f"v{seq}:".encode()
    return Record(seq=seq, key=f"k{seq % 7}".encode(), value=body + b"x" * max(0, size - len(body)),
                  headers=(("ce_id", str(seq).encode()),))


def batch(first: int, n: int, size: int = 100) -> list[Record]:
    return [rec(s, size) for s in range(first, first + n)]


def ev(n: int) -> int:
    """The first seq of event ``n``'s block: the seq of the record that is event ``n``."""
    return n * EVENT_SEQ_STEP


def events(first: int, n: int, size: int = 100) -> list[Record]:
    """Records for events ``first`` .. ``first + n - 1``, one per event block: what the
    drop counters count (a record whose seq is not a block's first is not an event)."""
    return [rec(ev(e), size) for e in range(first, first + n)]


def evs(numbers: range | list[int]) -> list[int]:
    return [ev(e) for e in numbers]


@dataclass(frozen=True)
class LogCase:
    id: str
    make: Callable[[Path, int, str], EventLog]  # (directory, max_bytes, when_full)
    restartable: bool


LOG_CASES = [
    LogCase("wal", lambda d, m, w: WriteAheadLog(str(d), m, SEGMENT_BYTES, w), True),
    LogCase("memory", lambda d, m, w: MemoryLog(m, w), False),
]


@pytest.fixture(params=LOG_CASES, ids=[c.id for c in LOG_CASES])
def case(request: pytest.FixtureRequest) -> LogCase:
    value: LogCase = request.param
    return value


@pytest.fixture
def make(case: LogCase, tmp_path: Path) -> Iterator[Callable[..., EventLog]]:
    made: list[EventLog] = []

    def factory(max_bytes: int = MAX_BYTES, when_full: str = "block") -> EventLog:
        made.append(case.make(tmp_path / f"log{len(made)}", max_bytes, when_full))
        return made[-1]

    yield factory
    for log in made:
        log.close()


def drain(log: EventLog, max_records: int = 10_000) -> list[Record]:
    out: list[Record] = []
    for _ in range(10_000):
        got = log.read(max_records, 1 << 30)
        if not got:
            return out
        out += got
    raise AssertionError("read never ran dry")


def seqs(records: list[Record]) -> list[int]:
    return [r.seq for r in records]


# --- round trip and reading -------------------------------------------------------------


def test_round_trip_in_seq_order(make: Callable[..., EventLog]) -> None:
    log = make()
    sent = batch(1, 50) + batch(51, 1) + batch(52, 30, size=900)
    log.append(sent[:50])
    log.append(sent[50:51])
    log.append(sent[51:])
    log.sync()
    assert drain(log) == sent
    assert log.read(10, 1 << 20) == []  # caught up: non-blocking, empty


def test_read_respects_max_records(make: Callable[..., EventLog]) -> None:
    log = make()
    log.append(batch(1, 25))
    got = [seqs(log.read(10, 1 << 20)) for _ in range(4)]
    assert got == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26)), []]


def test_read_respects_max_bytes_but_always_returns_one(make: Callable[..., EventLog]) -> None:
    log = make()
    log.append(batch(1, 10, size=1000))
    one = frame_size(rec(1, 1000))
    assert seqs(log.read(100, 3 * one)) == [1, 2, 3]
    assert seqs(log.read(100, 1)) == [4]  # smaller than any record: still progress
    assert seqs(log.read(100, 0)) == [5]
    assert seqs(log.read(100, 1 << 20)) == list(range(6, 11))


def test_empty_log_reads_nothing(make: Callable[..., EventLog]) -> None:
    log = make()
    assert log.read(10, 1000) == []
    log.rewind()
    assert log.read(10, 1000) == []
    assert log.last_seq == 0
    assert log.stats() == LogStats(0, 0, 0, 0, 0, 0, 0, None)


def test_empty_append_is_a_no_op(make: Callable[..., EventLog]) -> None:
    log = make()
    log.append([])
    assert log.stats().records_pending == 0
    assert log.last_seq == 0


def test_seqs_must_increase(make: Callable[..., EventLog]) -> None:
    log = make()
    log.append(batch(5, 3))
    for bad in ([rec(7)], [rec(3)], [rec(9), rec(9)], [rec(10), rec(9)]):
        with pytest.raises(ValueError, match="increase"):
            log.append(bad)
    assert seqs(drain(log)) == [5, 6, 7]
    assert log.last_seq == 7


# --- ack, rewind, stats -----------------------------------------------------------------


def test_rewind_redelivers_from_the_first_unacked(make: Callable[..., EventLog]) -> None:
    log = make()
    log.append(batch(1, 40))
    assert seqs(drain(log)) == list(range(1, 41))
    log.ack(15)
    log.rewind()
    assert seqs(drain(log)) == list(range(16, 41))
    log.rewind()
    log.rewind()
    assert seqs(log.read(3, 1 << 20)) == [16, 17, 18]


def test_ack_counts_pending_and_moves_the_read_position(make: Callable[..., EventLog]) -> None:
    log = make()
    log.append(batch(1, 100))
    assert log.stats().records_pending == 100
    log.ack(30)  # acked without having been read: never handed out afterwards
    assert log.stats().records_pending == 70
    assert seqs(log.read(5, 1 << 20)) == [31, 32, 33, 34, 35]
    log.ack(20)  # going back is a no-op
    assert log.stats().records_pending == 70
    log.ack(10**9)  # beyond the end: capped at last_seq
    assert log.stats().records_pending == 0
    assert log.read(10, 1 << 20) == []
    log.append(batch(101, 2))
    assert log.stats().records_pending == 2
    assert seqs(drain(log)) == [101, 102]


def test_ack_with_gaps_in_seqs(make: Callable[..., EventLog]) -> None:
    log = make()
    log.append([rec(s) for s in (2, 5, 9, 10, 40)])
    log.ack(6)
    assert log.stats().records_pending == 3
    assert seqs(drain(log)) == [9, 10, 40]


def test_oldest_pending_ts_tracks_the_first_unacked(make: Callable[..., EventLog]) -> None:
    log = make()
    t0 = time.time()
    log.append(batch(1, 10))
    t1 = time.time()
    log.append(batch(11, 10))
    t2 = time.time()
    first = log.stats().oldest_pending_ts
    assert first is not None and t0 <= first <= t1
    log.ack(10)
    second = log.stats().oldest_pending_ts
    assert second is not None and t1 <= second <= t2
    log.ack(20)
    assert log.stats().oldest_pending_ts is None


def test_bytes_used_counts_framing_and_drops_after_ack(make: Callable[..., EventLog]) -> None:
    log = make()
    records = batch(1, 10)
    log.append(records)
    used = log.stats().bytes_used
    assert used >= sum(frame_size(r) for r in records) > sum(r.size for r in records)
    log.ack(10)
    log.append(batch(11, 100))  # the write-ahead log trims once it moves to a new segment
    log.ack(110)
    assert log.stats().bytes_used < used + sum(frame_size(r) for r in batch(11, 100))


def test_last_and_next_seq(make: Callable[..., EventLog]) -> None:
    # next_seq is the first seq of the next event block (``sidecar/events/record.py``).
    step = EVENT_SEQ_STEP
    log = make()
    assert (log.last_seq, log.next_seq) == (0, step)
    log.append([rec(n * step) for n in range(1, 6)])
    assert (log.last_seq, log.next_seq) == (5 * step, 6 * step)
    log.append([rec(5 * step + 1)])  # a later record in the same event's block
    assert (log.last_seq, log.next_seq) == (5 * step + 1, 6 * step)
    log.note_accepted(9 * step)
    assert (log.last_seq, log.next_seq) == (5 * step + 1, 10 * step)
    log.note_accepted(3 * step)  # never goes back
    assert log.next_seq == 10 * step


# --- when_full --------------------------------------------------------------------------


def test_block_raises_log_full_and_appends_nothing(make: Callable[..., EventLog]) -> None:
    log = make(max_bytes=32 * 1024, when_full="block")
    n = 0
    with pytest.raises(LogFull):
        for _ in range(1000):
            log.append(batch(n + 1, 10, size=500))
            n += 10
    assert 0 < n < 10_000
    before = log.stats()
    assert before.bytes_used <= 32 * 1024
    with pytest.raises(LogFull):
        log.append(batch(n + 1, 10, size=500))
    assert log.stats() == before
    assert log.last_seq == n
    got = drain(log)
    assert seqs(got) == list(range(1, n + 1))
    log.ack(n)
    log.append(batch(n + 1, 10, size=500))  # room again once delivered
    assert seqs(drain(log)) == list(range(n + 1, n + 11))


def test_drop_newest_keeps_a_prefix_and_counts_the_rest(make: Callable[..., EventLog]) -> None:
    log = make(max_bytes=32 * 1024, when_full="drop_newest")
    offered = 0
    for i in range(40):
        log.append(events(offered + 1, 10, size=500))
        offered += 10
        stats = log.stats()
        assert stats.bytes_used <= 32 * 1024, i
        assert stats.records_pending + stats.dropped_newest == offered
        assert stats.dropped_oldest == 0
    got = seqs(drain(log))
    assert got == evs(range(1, len(got) + 1))  # the oldest kept, newest refused
    assert log.stats().dropped_newest == offered - len(got) > 0


def test_drop_oldest_keeps_the_newest_and_counts_exactly(make: Callable[..., EventLog]) -> None:
    log = make(max_bytes=32 * 1024, when_full="drop_oldest")
    offered = 0
    for i in range(40):
        log.append(events(offered + 1, 10, size=500))
        offered += 10
        stats = log.stats()
        assert stats.bytes_used <= 32 * 1024, i
        assert stats.records_pending + stats.dropped_oldest == offered
        assert stats.dropped_newest == 0
    got = seqs(drain(log))
    assert got == evs(range(offered - len(got) + 1, offered + 1))
    assert log.stats().dropped_oldest == offered - len(got) > 0


def test_drop_oldest_moves_the_read_position(make: Callable[..., EventLog]) -> None:
    log = make(max_bytes=32 * 1024, when_full="drop_oldest")
    log.append(events(1, 10, size=500))
    assert seqs(log.read(3, 1 << 20)) == evs([1, 2, 3])
    offered = 10
    for _ in range(20):
        log.append(events(offered + 1, 10, size=500))
        offered += 10
    got = seqs(drain(log))
    stats = log.stats()
    # 1-3 were read before they were dropped: in flight (delivery sends them), not lost.
    assert stats.dropped_in_flight == 3
    lost = stats.dropped_oldest + stats.dropped_in_flight
    assert got == evs(range(lost + 1, offered + 1))  # nothing dropped, nothing twice


def test_drop_oldest_with_a_batch_bigger_than_the_log(make: Callable[..., EventLog]) -> None:
    log = make(max_bytes=32 * 1024, when_full="drop_oldest")
    log.append(events(1, 5, size=500))
    log.append(events(6, 200, size=500))  # ~100 KiB into 32 KiB
    stats = log.stats()
    got = seqs(drain(log))
    assert got and got[-1] == ev(205) and got == evs(range(206 - len(got), 206))
    assert stats.dropped_oldest == 205 - len(got)
    assert stats.records_pending == len(got)
    assert stats.bytes_used <= 32 * 1024


def test_drop_newest_can_drop_a_whole_batch(make: Callable[..., EventLog]) -> None:
    log = make(max_bytes=32 * 1024, when_full="drop_newest")
    log.append(events(1, 200, size=500))
    kept = log.stats().records_pending
    log.append(events(201, 3, size=500))
    assert log.stats().dropped_newest == 203 - kept
    assert log.last_seq == ev(kept)
    log.append(events(204, 1, size=10))  # seqs keep increasing past the dropped ones
    assert log.stats().dropped_newest + log.stats().records_pending == 204


# Drops count events, not records (``LogStats``): a final record (pipeline/ahead.py) takes a
# seq inside the block of the last event appended before it, and is no event of its own.


def test_drop_newest_counts_a_refused_event_once_with_its_final_records(
    make: Callable[..., EventLog],
) -> None:
    log = make(max_bytes=32 * 1024, when_full="drop_newest")
    log.append(events(1, 200, size=500))  # fills the log
    kept = log.stats().records_pending
    before = log.stats()
    log.append([rec(ev(201), 500), rec(ev(201) + 1, 500), rec(ev(201) + 2, 500)])
    after = log.stats()
    assert after.dropped_newest - before.dropped_newest == 1  # one event, not 3 records
    assert after.records_pending == kept  # all three refused
    assert after.dropped_oldest == 0
    assert log.last_seq == ev(kept)
    assert seqs(drain(log)) == evs(range(1, kept + 1))


def test_drop_oldest_counts_only_the_event_records_it_deletes(
    make: Callable[..., EventLog],
) -> None:
    log = make(max_bytes=16 * 1024, when_full="drop_oldest")
    sent: list[int] = []
    event_seqs: set[int] = set()
    for n in range(1, 41):
        # a round as the writer makes it: the final record completing event n - 2 (seq in
        # the block of event n - 1, the last appended), then event n
        round_ = [rec(ev(n - 1) + 1, 500)] if n > 2 else []
        round_.append(rec(ev(n), 500))
        log.append(round_)
        sent += seqs(round_)
        event_seqs.add(ev(n))
    stats = log.stats()
    got = seqs(drain(log))
    assert got == sent[len(sent) - len(got):]  # the newest kept, nothing acked
    deleted = sent[: len(sent) - len(got)]
    deleted_events = [s for s in deleted if s in event_seqs]
    assert deleted_events and len(deleted_events) < len(deleted)  # finals deleted too
    assert stats.dropped_oldest == len(deleted_events)
    assert stats.records_pending == len(got)
    assert stats.dropped_newest == 0


def test_drop_oldest_of_a_batch_bigger_than_the_log_counts_only_its_events(
    make: Callable[..., EventLog],
) -> None:
    log = make(max_bytes=16 * 1024, when_full="drop_oldest")
    # events 1..60, each followed by a final record in its block: ~66 KiB into 16 KiB
    records = [rec(ev(n) + i, 500) for n in range(1, 61) for i in (0, 1)]
    log.append(records)
    stats = log.stats()
    got = seqs(drain(log))
    assert got and got == seqs(records)[len(records) - len(got):]
    deleted = seqs(records)[: len(records) - len(got)]
    deleted_events = [s for s in deleted if s in evs(range(1, 61))]
    assert deleted_events and len(deleted_events) < len(deleted)  # finals deleted too
    assert stats.dropped_oldest == len(deleted_events)
    assert stats.records_pending == len(got)


def test_unknown_policy_is_refused(case: LogCase, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="when_full"):
        case.make(tmp_path, MAX_BYTES, "drop_all")


@pytest.mark.parametrize("when_full", ["block", "drop_oldest", "drop_newest"])
def test_full_flag(make: Callable[..., EventLog], when_full: str) -> None:
    log = make(max_bytes=32 * 1024, when_full=when_full)
    assert not log.full
    seq = 0
    for _ in range(200):
        if log.full:
            break
        log.append(batch(seq + 1, 1, size=300))
        seq += 1
    assert log.full
    stats = log.stats()
    assert stats.bytes_used + full_headroom(32 * 1024) > 32 * 1024
    assert stats.bytes_used + full_headroom(32 * 1024) - frame_size(rec(1, 300)) - 8 <= 32 * 1024
    log.ack(seq)
    log.append(batch(seq + 1, 100, size=10))
    log.ack(seq + 100)
    assert not log.full


# --- threads and lifecycle --------------------------------------------------------------


def test_writer_reader_and_stats_threads_together(make: Callable[..., EventLog]) -> None:
    log = make(max_bytes=256 * 1024, when_full="block")
    total, errors = 3000, []
    delivered: list[int] = []
    done = threading.Event()

    def writer() -> None:
        seq = 0
        deadline = time.monotonic() + WAIT_S
        while seq < total and time.monotonic() < deadline:
            try:
                log.append(batch(seq + 1, 50, size=200))
                seq += 50
                log.sync()
            except LogFull:
                time.sleep(0.001)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    def reader() -> None:
        deadline = time.monotonic() + WAIT_S
        while len(delivered) < total and time.monotonic() < deadline:
            try:
                got = log.read(64, 1 << 20)
                if got:
                    delivered.extend(r.seq for r in got)
                    log.ack(got[-1].seq)
                else:
                    time.sleep(0.0005)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
                break
        done.set()

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 2 * WAIT_S
    while not done.wait(0.001) and time.monotonic() < deadline:
        stats = log.stats()  # from a third thread, concurrently
        assert 0 <= stats.records_pending <= total
        _ = log.full
        log.note_accepted(log.last_seq)
    for t in threads:
        t.join(WAIT_S)
    assert not errors
    assert delivered == list(range(1, total + 1))
    assert log.stats().records_pending == 0


def test_closed_log_refuses_work(make: Callable[..., EventLog]) -> None:
    log = make()
    log.append(batch(1, 2))
    log.close()
    log.close()  # idempotent
    for op in (lambda: log.append(batch(3, 1)), lambda: log.read(1, 1), log.rewind,
               lambda: log.ack(1), log.sync):
        with pytest.raises(ValueError, match="closed"):
            op()


# --- property: any interleaving loses nothing and duplicates nothing --------------------


class LogMachine(RuleBasedStateMachine):
    """Model: the list of appended seqs, the acked cursor, and the read pointer.

    Every read must return exactly the next records after the pointer (so nothing is
    skipped and nothing handed out twice); only rewind and restart move the pointer back,
    and only to the first unacked record.
    """

    case: LogCase

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="wal-prop-", dir="/tmp"))
        self.log = self.case.make(self.dir, 1 << 30, "block")
        self.appended: list[int] = []
        self.acked = 0
        self.pos = 0  # index in appended of the next record to read
        self.next = 1

    @initialize()
    def start(self) -> None:
        assert self.log.stats().records_pending == 0

    def first_unacked(self) -> int:
        return next((i for i, s in enumerate(self.appended) if s > self.acked), len(self.appended))

    @rule(n=st.integers(1, 12), gap=st.integers(0, 3), size=st.integers(0, 1500),
          new_event=st.booleans())
    def append(self, n: int, gap: int, size: int, new_event: bool) -> None:
        """``new_event``: the batch starts an event block, the rest of it falls in that
        block (as final records do), so the pending counts of events and records differ."""
        first = next_event_seq(self.next - 1) if new_event else self.next + gap
        records = [rec(first + i, size) for i in range(n)]
        self.log.append(records)
        self.appended += [r.seq for r in records]
        self.next = records[-1].seq + 1

    @rule(n=st.integers(1, 20), max_bytes=st.sampled_from([0, 500, 5000, 1 << 20]))
    def read(self, n: int, max_bytes: int) -> None:
        got = self.log.read(n, max_bytes)
        expected = self.appended[self.pos : self.pos + n]
        assert seqs(got) == expected[: len(got)]
        assert bool(got) == bool(expected)  # never [] while something is unread
        for r in got:
            assert r == rec(r.seq, len(r.value)) and r.value.startswith(f"v{r.seq}:".encode())
        self.pos += len(got)

    @precondition(lambda self: self.pos > 0)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.appended[: self.pos]))
        self.log.ack(seq)
        self.acked = max(self.acked, seq)
        self.pos = max(self.pos, self.first_unacked())

    @rule()
    def rewind(self) -> None:
        self.log.rewind()
        self.pos = self.first_unacked()

    @rule()
    def sync(self) -> None:
        self.log.sync()

    @precondition(lambda self: self.case.restartable)
    @rule()
    def restart(self) -> None:
        self.log.close()
        self.log = self.case.make(self.dir, 1 << 30, "block")
        self.pos = self.first_unacked()
        assert self.log.last_seq == max([self.acked, *self.appended[-1:]])
        assert self.log.stats().corrupt_skipped == 0

    @invariant()
    def pending_matches(self) -> None:
        stats = self.log.stats()
        assert stats.records_pending == len(self.appended) - self.first_unacked()
        unacked = self.appended[self.first_unacked():]
        assert stats.events_pending == sum(starts_event(s) for s in unacked)
        if self.case.restartable:
            on_disk = sum(p.stat().st_size for p in self.dir.glob("*.seg"))
            assert stats.bytes_used == on_disk
            assert len(list(self.dir.glob("*.seg"))) <= 1 + stats.records_pending

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PolicyMachine(RuleBasedStateMachine):
    """Under every ``when_full`` policy, in a log small enough to fill: each append (of
    events, some followed by a final record in their block) changes ``events_pending`` by
    exactly the events it did not count as dropped, what can be read is exactly what is
    pending, and no record is handed out twice between rewinds."""

    case: LogCase

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="wal-policy-", dir="/tmp"))
        self.next = 1  # the next event's number: every record appended is an event
        self.acked = 0
        self.last_read = 0  # highest seq handed out since the last rewind/restart
        self.returned: list[int] = []

    @initialize(policy=st.sampled_from(["block", "drop_oldest", "drop_newest"]))
    def open_log(self, policy: str) -> None:
        self.policy = policy
        self.log = self.case.make(self.dir, 16 * 1024, policy)

    @rule(n=st.integers(1, 40), size=st.integers(0, 900), finals=st.integers(0, 3))
    def append(self, n: int, size: int, finals: int) -> None:
        """``finals``: every ``finals``-th event gets a final record too (0: none)."""
        before = self.log.stats()
        records = []
        for i, record in enumerate(events(self.next, n, size)):
            records.append(record)
            if finals and i % finals == 0:
                records.append(rec(record.seq + 1, size))
        try:
            self.log.append(records)
        except LogFull:
            assert self.policy == "block"
            assert self.log.stats() == before
            return
        self.next += n
        after = self.log.stats()
        dropped = (after.dropped_oldest - before.dropped_oldest) + (
            after.dropped_newest - before.dropped_newest
        )
        in_flight = after.dropped_in_flight - before.dropped_in_flight
        assert after.events_pending - before.events_pending == n - dropped - in_flight
        # Only events handed out and not acked can be dropped in flight.
        assert in_flight <= len([s for s in self.returned if s > self.acked])
        assert after.records_pending - before.records_pending <= len(records) - dropped
        assert after.events_pending <= after.records_pending
        assert after.bytes_used <= 16 * 1024
        if self.policy == "block":
            assert dropped == 0

    @rule(n=st.integers(1, 30))
    def read(self, n: int) -> None:
        got = seqs(self.log.read(n, 1 << 20))
        assert got == sorted(set(got))
        assert all(s > max(self.last_read, self.acked) for s in got)
        self.last_read = max([self.last_read, *got])
        self.returned += got

    @precondition(lambda self: bool(self.returned))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.returned))
        self.log.ack(seq)
        self.acked = max(self.acked, seq)

    @rule()
    def everything_pending_is_readable(self) -> None:
        self.log.rewind()
        got = seqs(drain(self.log))
        assert len(got) == self.log.stats().records_pending
        assert got == sorted(set(got)) and all(s > self.acked for s in got)
        self.log.rewind()
        self.last_read = self.acked

    @precondition(lambda self: self.case.restartable)
    @rule()
    def restart(self) -> None:
        pending = self.log.stats().records_pending
        self.log.close()
        self.log = self.case.make(self.dir, 16 * 1024, self.policy)
        assert self.log.stats().records_pending == pending
        self.last_read = self.acked

    def teardown(self) -> None:
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


PROPERTY_SETTINGS = settings(
    max_examples=50, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class WalMachine(LogMachine):
    case = LOG_CASES[0]


class MemoryMachine(LogMachine):
    case = LOG_CASES[1]


class WalPolicyMachine(PolicyMachine):
    case = LOG_CASES[0]


class MemoryPolicyMachine(PolicyMachine):
    case = LOG_CASES[1]


TestWalMachine = WalMachine.TestCase
TestMemoryMachine = MemoryMachine.TestCase
TestWalPolicyMachine = WalPolicyMachine.TestCase
TestMemoryPolicyMachine = MemoryPolicyMachine.TestCase
for _test in (TestWalMachine, TestMemoryMachine, TestWalPolicyMachine, TestMemoryPolicyMachine):
    _test.settings = PROPERTY_SETTINGS
del _test  # else pytest collects the last machine twice, under this name


# Notices (alerts, policy changes) take odd seqs in the block of the last event appended,
# finals even ones (``trailing_seqs``); a drop counts them apart from events.


def _round(n: int, kinds: str, size: int = 500) -> list[Record]:
    """A round as the writer makes it: trailing records after event ``n - 1`` (``f`` a
    final, ``a`` a notice), then event ``n``."""
    trailing = trailing_seqs(ev(n - 1), [kind == "a" for kind in kinds]) if n > 1 else []
    return [rec(seq, size) for seq in trailing] + [rec(ev(n), size)]


def test_drop_oldest_counts_the_notices_it_deletes_unread(
    make: Callable[..., EventLog],
) -> None:
    log = make(max_bytes=16 * 1024, when_full="drop_oldest")
    sent: list[int] = []
    for n in range(1, 41):
        round_ = _round(n, "fa" if n % 2 else "af")
        log.append(round_)
        sent += seqs(round_)
    stats = log.stats()
    got = seqs(drain(log))
    deleted = sent[: len(sent) - len(got)]
    deleted_notices = [s for s in deleted if is_notice(s)]
    assert deleted_notices and len(deleted_notices) < len(deleted)
    assert stats.notices_dropped == len(deleted_notices)
    assert stats.dropped_oldest == sum(1 for s in deleted if starts_event(s))


def test_drop_oldest_does_not_count_notices_delivery_already_read(
    make: Callable[..., EventLog],
) -> None:
    log = make(max_bytes=16 * 1024, when_full="drop_oldest")
    for n in range(1, 6):
        log.append(_round(n, "a"))
    read = seqs(drain(log))  # delivery holds these and sends them: not lost
    for n in range(6, 60):
        log.append(_round(n, "f"))  # finals only: no notice among the newer records
    stats = log.stats()
    assert read and stats.dropped_in_flight > 0
    assert stats.notices_dropped == 0


def test_drop_newest_counts_the_notices_it_refuses(make: Callable[..., EventLog]) -> None:
    log = make(max_bytes=16 * 1024, when_full="drop_newest")
    for n in range(1, 100):
        log.append(_round(n, "", size=500))
        if log.stats().dropped_newest:
            break
    before = log.stats()
    refused = _round(n + 1, "aafa")  # n + 1: refused too, whole
    log.append(refused)
    after = log.stats()
    assert after.records_pending == before.records_pending
    assert after.notices_dropped - before.notices_dropped == 3
    assert after.dropped_newest - before.dropped_newest == 1
