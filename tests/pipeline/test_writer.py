"""Stage 1 of the pipeline: ``LogWriter`` (queue → CloudEvents records → log → fsync) and
``Durability`` (responses waiting for their event's fsync, released in sequence order).

The log is a real ``MemoryLog`` (fast, same semantics as the write-ahead log) with fault
injection on top; one test runs over a real ``WriteAheadLog`` in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from factories import (
    EVENT_FRAME,
    WAIT_S,
    RecordingLog,
    expected_ids,
    harness_fixture,
    ids,
    make_event,
    record_sleeps,
    seqs,
    wait_until,
)

from sidecar.durability.base import EventLog
from sidecar.durability.framing import frame_size
from sidecar.durability.memory import MemoryLog
from sidecar.durability.wal import WriteAheadLog
from sidecar.events.cloudevents import to_record
from sidecar.events.queue import EventQueue
from sidecar.events.record import EVENT_SEQ_STEP, Record
from sidecar.pipeline import rounds as rounds_module
from sidecar.pipeline import writer as writer_module
from sidecar.pipeline.waiters import Durability
from sidecar.pipeline.writer import LogWriter

WRITER_LOGGER = "inference_sidecar.writer"


def ev(n: int) -> int:
    """The seq of event ``n`` (1-based) in the log: each event owns a block of
    ``EVENT_SEQ_STEP`` seqs. The harness's queue starts at the log's next_seq: at event 1
    for an empty log, at event 3 after ``nearly_full_log``'s two prefilled events."""
    return n * EVENT_SEQ_STEP


def evs(numbers: range | list[int]) -> list[int]:
    return [ev(n) for n in numbers]


def read_all(log: EventLog) -> list[Record]:
    return log.read(10**6, 1 << 40)


def appended_seqs(log: RecordingLog) -> list[int]:
    """Seqs the writer appended so far (safe to read from the loop: a list of lists)."""
    return [s for batch in log.appended for s in batch]


def prefill(log: MemoryLog, count: int, size: int) -> None:
    """Append ``count`` records of ``size`` value bytes directly, as events 1..count (block
    seqs, so that drop counters, which count events, count them)."""
    log.append([Record(seq=s, key=b"k", value=b"x" * size) for s in evs(range(1, count + 1))])


def nearly_full_log(when_full: str) -> RecordingLog:
    """A log holding two big records (events 1 and 2), with room for one event but not two."""
    big = Record(seq=1, key=b"k", value=b"x" * 3000)
    max_bytes = 2 * frame_size(big) + EVENT_FRAME + EVENT_FRAME // 2
    log = RecordingLog(max_bytes, when_full)
    prefill(log, 2, 3000)
    return log


class WriterHarness:
    def __init__(
        self, mode: str = "sync", interval: float = 0.05, log: RecordingLog | None = None
    ) -> None:
        self.log = log if log is not None else RecordingLog()
        self.queue = EventQueue(100_000, "block", first_seq=self.log.next_seq,
                                on_accept=self.log.note_accepted)
        self.notified = 0
        self.disk_errors: list[bool] = []
        self.drops: list[tuple[str, int]] = []
        self.writer = LogWriter(
            self.queue, self.log, mode, interval,
            on_appended=self._notify, on_disk_error=self.disk_errors.append,
            on_drop=lambda reason, n: self.drops.append((reason, n)),
        )
        self.task: asyncio.Task[None] | None = None
        self.periodic: asyncio.Task[None] | None = None
        self.finished = False

    def _notify(self) -> None:
        self.notified += 1

    def put(self, numbers: range | list[int]) -> list[int]:
        out = [self.queue.put(make_event(n)) for n in numbers]
        assert all(out)
        return out

    def whole_rounds(self) -> WriterHarness:
        """Let the first round take every event queued, however small the log: these tests
        are about a round the log has no room for (the writer otherwise cuts rounds to
        half of what the log holds, by the largest record seen)."""
        self.writer.rounds.record_max = 1.0
        return self

    def wait_for(self, seqs: list[int]) -> list[asyncio.Future[None]]:
        futures = [self.writer.durability.wait(s) for s in seqs]
        assert all(f is not None for f in futures)
        return [f for f in futures if f is not None]

    def start(self, periodic: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self.writer.run(), name="log-writer")
        if periodic:
            self.periodic = loop.create_task(self.writer.run_periodic_sync(),
                                             name="periodic-fsync")

    async def finish(self) -> None:
        """Close the queue, let the writer drain it, stop the periodic fsync."""
        self.finished = True
        self.queue.close()
        if self.log.sync_gate is not None:
            self.log.sync_gate.set()
        try:
            if self.task is not None:
                await asyncio.wait_for(self.task, WAIT_S)
        finally:
            if self.periodic is not None:
                self.periodic.cancel()
                await asyncio.gather(self.periodic, return_exceptions=True)
            await asyncio.to_thread(self.writer.shutdown)

    async def cleanup(self) -> None:
        if self.log.sync_gate is not None:
            self.log.sync_gate.set()
        self.log.fail_appends = self.log.fail_syncs = 0
        self.queue.close()
        self.writer.give_up_at = time.monotonic()  # a test left the log full
        for task in (self.task, self.periodic):
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(self.writer.shutdown)


make_writer = harness_fixture(WriterHarness)


# --- Durability -------------------------------------------------------------------------


async def test_wait_returns_none_for_a_seq_already_durable() -> None:
    d = Durability()
    assert d.durable_seq == 0
    d.advance(5)
    assert d.durable_seq == 5
    assert d.wait(3) is None
    assert d.wait(5) is None
    future = d.wait(6)
    assert future is not None and not future.done()


async def test_advance_releases_exactly_the_waiters_up_to_seq_in_sequence_order() -> None:
    d = Durability()
    released: list[int] = []
    futures = {}
    for seq in range(1, 7):
        future = d.wait(seq)
        assert future is not None
        future.add_done_callback(lambda _, s=seq: released.append(s))
        futures[seq] = future
    d.advance(4)
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert released == [1, 2, 3, 4]
    assert [futures[s].done() for s in range(1, 7)] == [True] * 4 + [False] * 2
    d.advance(6)
    await asyncio.sleep(0)
    assert released == [1, 2, 3, 4, 5, 6]


async def test_advance_never_goes_back() -> None:
    d = Durability()
    d.advance(10)
    d.advance(3)
    assert d.durable_seq == 10
    assert d.wait(10) is None


async def test_a_cancelled_waiter_does_not_stop_the_others() -> None:
    # The handler gives up on a waiter after durability_timeout (its future is cancelled).
    d = Durability()
    first, second, third = (d.wait(s) for s in (1, 2, 3))
    assert first is not None and second is not None and third is not None
    second.cancel()
    d.advance(3)
    assert first.done() and not first.cancelled()
    assert third.done() and not third.cancelled()


async def test_advance_without_waiters_just_moves_durable_seq() -> None:
    d = Durability()
    d.advance(7)
    assert d.durable_seq == 7


# --- appending --------------------------------------------------------------------------


async def test_events_are_appended_in_order_as_cloudevents_records(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer()
    assert h.put(range(50)) == evs(range(1, 51))
    h.start()
    await h.finish()
    records = read_all(h.log)
    assert seqs(records) == evs(range(1, 51))
    assert ids(records) == expected_ids(range(50))
    assert records[0] == to_record(make_event(0), ev(1))
    assert all(r.key == b"credit-scorer" for r in records)


async def test_events_put_while_running_keep_their_order(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer()
    h.start()
    for chunk in range(10):
        h.put(range(chunk * 7, chunk * 7 + 7))
        await asyncio.sleep(0.001)
    await h.finish()
    assert ids(read_all(h.log)) == expected_ids(range(70))
    assert sum(len(a) for a in h.log.appended) == 70


async def test_log_io_runs_in_one_worker_thread_off_the_loop(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer()
    h.start()
    for chunk in range(5):
        h.put(range(chunk * 3, chunk * 3 + 3))
        await wait_until(lambda n=chunk: len(appended_seqs(h.log)) >= (n + 1) * 3)
    await h.finish()
    assert h.log.threads
    assert threading.get_ident() not in h.log.threads
    assert len(h.log.threads) == 1


async def test_batches_are_at_most_batch_max(make_writer: Callable[..., WriterHarness]) -> None:
    h = make_writer()
    total = rounds_module.BATCH_MAX * 2 + 3
    h.put(range(total))
    h.start()
    await h.finish()
    assert max(len(a) for a in h.log.appended) <= rounds_module.BATCH_MAX
    assert len(h.log.appended) >= 3
    assert seqs(read_all(h.log)) == evs(range(1, total + 1))


async def test_delivery_is_notified_after_each_append(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer()
    h.start()
    h.put(range(3))
    await wait_until(lambda: h.notified >= 1)
    assert len(h.log.appended) >= 1  # notified only once something is in the log
    h.put(range(3, 6))
    await h.finish()
    assert h.notified == len(h.log.appended)


async def test_run_returns_once_the_queue_is_closed_and_drained(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer()
    h.start()
    await asyncio.sleep(0.01)
    assert h.task is not None and not h.task.done()  # an empty open queue: it waits
    h.put(range(5))
    h.queue.close()
    await asyncio.wait_for(h.task, WAIT_S)
    assert seqs(read_all(h.log)) == evs([1, 2, 3, 4, 5])


# --- sync mode: durability and group commit ---------------------------------------------


async def test_sync_mode_releases_a_waiter_only_after_its_event_is_fsynced(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer(mode="sync")
    h.start()
    synced_at_release: dict[int, int] = {}
    futures: list[asyncio.Future[None]] = []
    for chunk in range(5):
        for seq in h.put(range(chunk * 4, chunk * 4 + 4)):
            (future,) = h.wait_for([seq])
            future.add_done_callback(
                lambda _, s=seq: synced_at_release.setdefault(s, h.log.synced_through))
            futures.append(future)
        await asyncio.sleep(0.002)
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    await asyncio.sleep(0)
    assert sorted(synced_at_release) == evs(range(1, 21))
    assert all(synced >= seq for seq, synced in synced_at_release.items()), synced_at_release
    assert h.writer.durability.durable_seq == ev(20)
    await h.finish()


async def test_group_commit_one_fsync_releases_many_waiters(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer(mode="sync")
    futures = h.wait_for(h.put(range(200)))
    h.start()
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert h.log.syncs == 1
    assert h.log.appended == [evs(range(1, 201))]
    await h.finish()
    assert h.log.syncs == 1  # nothing was left dirty for the final fsync


async def test_batches_form_while_an_fsync_runs(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer(mode="sync")
    h.log.sync_gate = threading.Event()
    first = h.wait_for(h.put([0]))
    h.start()
    assert await asyncio.to_thread(h.log.in_sync.wait, WAIT_S)  # the first fsync is slow
    rest = h.wait_for(h.put(range(1, 51)))
    await asyncio.sleep(0.02)
    assert not any(f.done() for f in first + rest)  # nothing released before its fsync
    h.log.sync_gate.set()
    await asyncio.wait_for(asyncio.gather(*first, *rest), WAIT_S)
    # The 50 events that arrived during the first fsync shared the second one.
    assert h.log.appended == [[ev(1)], evs(range(2, 52))]
    assert h.log.syncs == 2
    await h.finish()


async def test_memory_mode_releases_waiters_without_fsync(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer(mode="memory")
    futures = h.wait_for(h.put(range(10)))
    h.start()
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert h.log.syncs == 0
    assert h.writer.durability.durable_seq == ev(10)
    await h.finish()


# --- batch mode: periodic fsync ---------------------------------------------------------


async def test_batch_mode_does_not_fsync_each_batch_but_fsyncs_at_the_end(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer(mode="batch", interval=60.0)
    h.start()
    for chunk in range(3):
        h.put(range(chunk * 5, chunk * 5 + 5))
        await wait_until(lambda n=chunk: len(appended_seqs(h.log)) >= (n + 1) * 5)
    assert h.log.syncs == 0
    await h.finish()  # queue closed: what is left is fsynced before run() returns
    assert h.log.syncs == 1
    assert h.log.synced_through == ev(15)


async def test_batch_mode_lingers_at_most_a_fifth_of_its_fsync_interval(
    make_writer: Callable[..., WriterHarness],
) -> None:
    """The linger that lets a round grow must not eat the window a crash may lose."""
    assert make_writer(mode="batch", interval=0.01).writer.linger == pytest.approx(0.002)
    assert make_writer(mode="batch", interval=60.0).writer.linger == writer_module.LINGER_S
    assert make_writer(mode="memory", interval=0.01).writer.linger == writer_module.LINGER_S


async def test_batch_mode_fsyncs_inline_once_the_interval_has_passed(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer(mode="batch", interval=0.5)  # no periodic task: only the inline rule
    h.start()
    h.put([0])
    await wait_until(lambda: len(h.log.appended) >= 1)
    h.put([1])
    await wait_until(lambda: len(h.log.appended) >= 2)
    before = h.log.syncs
    await asyncio.sleep(0.55)
    h.put([2])
    await wait_until(lambda: len(h.log.appended) >= 3)
    assert h.log.syncs == before + 1
    assert h.log.synced_through == ev(3)
    assert h.log.syncs < len(h.log.appended)  # not every batch was fsynced


async def test_batch_mode_periodic_fsync_covers_traffic_that_stops(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer(mode="batch", interval=0.2)
    h.start(periodic=True)
    h.put([0])
    await wait_until(lambda: h.log.synced_through >= ev(1), timeout=5.0)
    # Appended right after an fsync, so the inline rule cannot fsync it: only the
    # periodic task can, once the interval has passed without more traffic.
    h.put([1])
    await wait_until(lambda: len(h.log.appended) >= 2)
    syncs = h.log.syncs
    await wait_until(lambda: h.log.synced_through >= ev(2), timeout=5.0)
    assert h.log.syncs == syncs + 1
    # Nothing new: the periodic task does not fsync a clean log.
    idle_from = h.log.syncs
    await asyncio.sleep(0.5)
    assert h.log.syncs == idle_from


async def test_periodic_fsync_failure_is_logged_and_retried(
    make_writer: Callable[..., WriterHarness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make_writer(mode="batch", interval=0.2)
    h.log.fail_syncs = 1
    with caplog.at_level("ERROR", logger=WRITER_LOGGER):
        h.start(periodic=True)
        h.put([0])
        await wait_until(lambda: h.log.synced_through >= ev(1), timeout=5.0)
    failures = [r for r in caplog.records if r.getMessage() == "event log fsync failed"]
    assert len(failures) == 1
    assert failures[0].fields["reason"] == "Input/output error"  # type: ignore[attr-defined]
    assert h.periodic is not None and not h.periodic.done()
    assert h.task is not None and not h.task.done()


# --- a failing disk ---------------------------------------------------------------------


async def test_a_disk_error_on_append_is_retried_and_reported(
    make_writer: Callable[..., WriterHarness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make_writer(mode="sync")
    h.log.fail_appends = 3
    futures = h.wait_for(h.put(range(10)))
    with caplog.at_level("ERROR", logger=WRITER_LOGGER):
        h.start()
        await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    records = read_all(h.log)
    assert seqs(records) == evs(range(1, 11))  # kept, then stored once
    assert ids(records) == expected_ids(range(10))
    assert h.disk_errors == [True, True, True, False]
    logged = [r for r in caplog.records if r.name == WRITER_LOGGER]
    assert len(logged) == 3
    for record in logged:
        assert record.fields["reason"] == "No space left on device"  # type: ignore[attr-defined]
        assert record.fields["events"] == 10  # type: ignore[attr-defined]
    assert h.drops == []
    await h.finish()


async def test_no_disk_error_report_without_a_disk_error(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer()
    h.put(range(5))
    h.start()
    await h.finish()
    assert h.disk_errors == []


async def test_disk_retry_backoff_doubles_and_is_capped(
    make_writer: Callable[..., WriterHarness], monkeypatch: pytest.MonkeyPatch
) -> None:
    delays = record_sleeps(monkeypatch, writer_module, "log-writer")
    h = make_writer()
    failures = 12
    h.log.fail_appends = failures
    futures = h.wait_for(h.put(range(2)))
    h.start()
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    monkeypatch.undo()
    expected, delay = [], writer_module.RETRY_S
    for _ in range(failures):
        expected.append(delay)
        delay = min(delay * 2, writer_module.DISK_RETRY_MAX_S)
    assert delays == pytest.approx(expected)
    assert max(delays) == writer_module.DISK_RETRY_MAX_S
    await h.finish()


async def test_an_fsync_error_is_retried_without_appending_the_batch_twice(
    make_writer: Callable[..., WriterHarness],
) -> None:
    # fsync can fail (EIO) after the append itself succeeded; the retry must not hand the
    # log the same seqs again (the log refuses seqs that do not increase).
    h = make_writer(mode="sync")
    h.log.fail_syncs = 1
    futures = h.wait_for(h.put(range(10)))
    h.start()
    assert h.task is not None
    task = h.task
    await wait_until(lambda: all(f.done() for f in futures) or task.done())
    if task.done() and task.exception() is not None:
        raise AssertionError(f"the log writer died: {task.exception()!r}")
    assert seqs(read_all(h.log)) == evs(range(1, 11))
    assert h.log.synced_through == ev(10)
    assert h.disk_errors[0] is True and h.disk_errors[-1] is False
    h.put(range(10, 12))
    await h.finish()
    assert seqs(read_all(h.log)) == evs([11, 12])


# --- a full log -------------------------------------------------------------------------


async def test_log_full_under_block_is_retried_and_the_batch_is_kept(
    make_writer: Callable[..., WriterHarness],
) -> None:
    h = make_writer(mode="sync", log=nearly_full_log("block")).whole_rounds()
    futures = h.wait_for(h.put(range(5)))
    h.start()
    await wait_until(lambda: h.log.refused_full >= 3)  # LogFull, retried, still full
    assert not any(f.done() for f in futures)
    assert h.log.stats().records_pending == 2
    assert h.notified == 0
    h.log.ack(ev(2))  # delivery trims the log (the two prefilled records, events 1 and 2)
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    records = read_all(h.log)
    assert seqs(records) == evs([3, 4, 5, 6, 7])
    assert ids(records) == expected_ids(range(5))
    assert h.drops == []
    assert h.disk_errors == []  # a full log is not a disk error
    stats = h.log.stats()
    assert stats.dropped_newest == stats.dropped_oldest == 0
    await h.finish()


async def test_a_round_never_outgrows_the_log(make_writer: Callable[..., WriterHarness]) -> None:
    """Thirty events in the queue and a log that holds twenty: taken as one round, they
    would never fit, however much delivery trims. Rounds are cut to what the log holds."""
    h = make_writer(mode="sync", log=RecordingLog(20 * EVENT_FRAME, "block"))
    futures = h.wait_for(h.put(range(30)))
    h.start()
    for _ in range(200):  # delivery, trimming whatever is in the log
        if all(f.done() for f in futures):
            break
        h.log.ack(h.log.last_seq)
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert len(h.log.appended) >= 2 and not h.writer.blocked
    await h.finish()


async def test_a_full_log_that_drops_keeps_taking_whole_rounds(
    make_writer: Callable[..., WriterHarness],
) -> None:
    """Under drop_oldest a full log is the normal state while the sink is away: rounds
    must not shrink to one record (one append, and in sync mode one fsync, per event)."""
    h = make_writer(mode="sync", log=RecordingLog(64 * EVENT_FRAME, "drop_oldest"))
    futures = h.wait_for(h.put(range(1000)))
    h.start()
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert h.log.stats().dropped_oldest > 0
    assert len(h.log.appended) < 100  # about 1000 / 32 rounds, not 1000
    await h.finish()


async def test_while_a_full_log_refuses_a_round_the_writer_says_it_is_blocked(
    make_writer: Callable[..., WriterHarness],
) -> None:
    """Admission control reads ``blocked``: new requests get a 503 at once instead of
    waiting out their durability timeout behind the held round."""
    h = make_writer(mode="sync", log=nearly_full_log("block"))
    futures = h.wait_for(h.put(range(2)))
    h.start()
    await wait_until(lambda: h.log.refused_full >= 1)
    assert h.writer.blocked
    h.log.ack(ev(2))
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert not h.writer.blocked
    await h.finish()


async def test_log_full_at_shutdown_gives_up_at_the_deadline_and_counts_the_drops(
    make_writer: Callable[..., WriterHarness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make_writer(mode="sync", log=nearly_full_log("block")).whole_rounds()
    h.put(range(3))
    h.queue.close()
    started = time.monotonic()
    h.writer.give_up_at = started + 0.2
    with caplog.at_level("ERROR", logger=WRITER_LOGGER):
        h.start()
        assert h.task is not None
        await asyncio.wait_for(h.task, WAIT_S)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < WAIT_S  # kept retrying until the deadline, not longer
    assert h.drops == [("log_full_at_shutdown", 3)]
    assert h.log.refused_full >= 2
    assert h.log.stats().records_pending == 2  # only what was there before
    logged = [r for r in caplog.records if r.name == WRITER_LOGGER]
    assert [r.getMessage() for r in logged] == ["event log unavailable at shutdown; giving up"]
    assert logged[0].fields["events"] == 3  # type: ignore[attr-defined]
    await h.finish()


async def test_a_round_given_up_at_shutdown_never_has_its_responses_released() -> None:
    # A transient disk error at shutdown: the first round is given up on (its event is
    # counted dropped), the next is written. That round's advance must not release the
    # first round's response as if its event were kept.
    log = RecordingLog()
    queue = EventQueue(1000, "block", first_seq=log.next_seq, on_accept=log.note_accepted)
    drops: list[tuple[str, int]] = []
    writer = LogWriter(queue, log, "sync", 0.05, on_appended=lambda: None,
                       on_disk_error=lambda failing: None,
                       on_drop=lambda reason, n: drops.append((reason, n)))
    writer.rounds.record_max = 1e12  # one event a round, as with more queued than a round takes
    futures = [writer.durability.wait(queue.put(make_event(n))) for n in (1, 2)]
    queue.close()
    writer.give_up_at = time.monotonic()
    log.fail_appends = 1
    await asyncio.wait_for(writer.run(), WAIT_S)
    writer.shutdown()
    assert drops == [("disk_error_at_shutdown", 1)]
    assert futures[0] is not None and isinstance(futures[0].exception(), TimeoutError)
    assert futures[1] is not None and futures[1].exception() is None  # kept and synced


@pytest.mark.parametrize(
    ("when_full", "reason", "kept"),
    [("drop_newest", "log_full_newest", [1, 2, 3]),
     ("drop_oldest", "log_full_oldest", [3, 4, 5, 6, 7])],
)
async def test_log_drops_are_reported_with_their_reason(
    make_writer: Callable[..., WriterHarness], when_full: str, reason: str, kept: list[int]
) -> None:
    h = make_writer(mode="sync", log=nearly_full_log(when_full)).whole_rounds()
    futures = h.wait_for(h.put(range(5)))
    h.start()
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    stats = h.log.stats()
    dropped = stats.dropped_newest if when_full == "drop_newest" else stats.dropped_oldest
    assert dropped == 2 + 5 - len(kept) > 0  # every record here is an event
    assert h.drops == [(reason, dropped)]
    # kept: the events (by number) left in the log; 1 and 2 are the prefilled ones, the
    # harness's five are 3 to 7
    assert seqs(read_all(h.log)) == evs(kept)
    await h.finish()


# --- on a real write-ahead log ----------------------------------------------------------


async def test_sync_mode_on_a_write_ahead_log_survives_reopening(tmp_path: Path) -> None:
    directory = str(tmp_path / "wal")
    wal = WriteAheadLog(directory, 1 << 20, 64 * 1024, "block")
    queue = EventQueue(1000, "block", first_seq=wal.next_seq, on_accept=wal.note_accepted)
    disk_errors: list[bool] = []
    writer = LogWriter(queue, wal, "sync", 0.05, on_appended=lambda: None,
                       on_disk_error=disk_errors.append, on_drop=lambda r, n: None)
    task = asyncio.get_running_loop().create_task(writer.run(), name="log-writer")
    try:
        futures = []
        for n in range(20):
            future = writer.durability.wait(queue.put(make_event(n)))
            assert future is not None
            futures.append(future)
        await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
        queue.close()
        await asyncio.wait_for(task, WAIT_S)
    finally:
        queue.close()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(writer.shutdown)
        wal.close()
    assert disk_errors == []
    reopened = WriteAheadLog(directory, 1 << 20, 64 * 1024, "block")
    try:
        assert reopened.stats().records_pending == 20
        assert reopened.stats().lost_on_crash == 0
        records = read_all(reopened)
        assert seqs(records) == evs(range(1, 21))
        assert records == [to_record(make_event(n), ev(n + 1)) for n in range(20)]
        assert reopened.next_seq == ev(21)
    finally:
        reopened.close()
