"""Stage 2 of the pipeline: ``Delivery`` (log → ``sink.write`` → ack, which trims the log).

In order, nothing acked before the sink took it, failed batches retried whole with capped
backoff, counters per sink, ``stop`` drains within ``drain_s`` or says it did not, and
``lag_seconds`` is the age of the oldest undelivered record. The log is a real
``MemoryLog``; one test runs over a real ``WriteAheadLog`` in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories import (
    EVENT_FRAME,
    IDENTITY,
    WAIT_S,
    RecordingLog,
    RecordingSink,
    delivered,
    expected_ids,
    failures,
    harness_fixture,
    ids,
    make_event,
    record_sleeps,
    retried,
    sample,
    wait_until,
)
from factories import fast_retries as fast_retries  # a fixture

from sidecar.durability.base import EventLog
from sidecar.durability.wal import WriteAheadLog
from sidecar.events.cloudevents import to_record
from sidecar.events.record import Record
from sidecar.pipeline import delivery as delivery_module
from sidecar.pipeline.delivery import Delivery
from sidecar.telemetry import Metrics

DELIVERY_LOGGER = "inference_sidecar.delivery"


class Harness:
    def __init__(self, log: EventLog | None = None) -> None:
        self.metrics = Metrics(IDENTITY)
        self.log: EventLog = log if log is not None else RecordingLog()
        self.sink = RecordingSink()
        self.delivery = Delivery(self.log, self.sink, self.metrics)
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        self._next = self.log.next_seq

    def append(self, numbers: range | list[int]) -> list[Record]:
        """Append events as the writer would, and notify delivery."""
        records = [to_record(make_event(n), self._next + i) for i, n in enumerate(numbers)]
        self._next += len(records)
        self.log.append(records)
        self.delivery.notify()
        return records

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.delivery.run(), name="delivery")

    async def stop(self, drain_s: float = WAIT_S) -> bool:
        assert self.task is not None
        self.stopped = True
        return await asyncio.wait_for(self.delivery.stop(self.task, drain_s), WAIT_S + 5)

    async def cleanup(self) -> None:
        self.sink.fail_next = 0
        if self.sink.gate is not None:
            self.sink.gate.set()
        if self.task is not None and not self.stopped:
            await self.stop(drain_s=1.0)
        self.log.close()


make_harness = harness_fixture(Harness)


# --- delivery ---------------------------------------------------------------------------


async def test_records_reach_the_sink_in_order(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.start()
    appended: list[Record] = []
    for chunk in range(4):
        appended += h.append(range(chunk * 25, chunk * 25 + 25))
        await asyncio.sleep(0.001)
    await wait_until(lambda: len(h.sink.records) >= 100 and h.delivery.delivered >= 100)
    assert h.sink.records == appended  # the very records, in order, each once
    assert ids(h.sink.records) == expected_ids(range(100))
    assert h.delivery.delivered == 100
    assert delivered(h.metrics) == 100
    assert failures(h.metrics) == 0
    assert retried(h.metrics) == 0
    # More later: only the new records go out, nothing is delivered twice.
    more = h.append(range(100, 110))
    await wait_until(lambda: len(h.sink.records) >= 110 and h.delivery.delivered >= 110)
    assert await h.stop() is True
    assert h.sink.records == appended + more
    assert delivered(h.metrics) == 110


async def test_records_in_the_log_before_start_are_delivered(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    appended = h.append(range(10))
    h.start()
    await wait_until(lambda: len(h.sink.records) >= 10 and h.delivery.delivered >= 10)
    assert h.sink.records == appended


async def test_idle_delivery_waits_for_notify_without_spinning(
    make_harness: Callable[..., Harness],
) -> None:
    log = RecordingLog()
    h = make_harness(log=log)
    h.start()
    await asyncio.sleep(0.2)
    assert log.reads <= 2  # it waits for the writer's notify instead of polling the log
    assert h.task is not None and not h.task.done()
    h.append(range(3))
    await wait_until(lambda: len(h.sink.records) >= 3 and h.delivery.delivered >= 3)
    assert ids(h.sink.records) == expected_ids(range(3))


async def test_sink_write_runs_off_the_event_loop_in_one_thread(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.start()
    for chunk in range(4):
        h.append(range(chunk * 2, chunk * 2 + 2))
        await wait_until(lambda n=chunk: len(h.sink.records) >= (n + 1) * 2)
    assert h.sink.write_threads
    assert threading.get_ident() not in h.sink.write_threads
    assert len(set(h.sink.write_threads)) == 1


async def test_batches_are_at_most_read_max_records(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    total = delivery_module.READ_MAX_RECORDS * 2 + 7
    h.append(range(total))
    h.start()
    await wait_until(lambda: len(h.sink.records) >= total)
    assert max(h.sink.batches) <= delivery_module.READ_MAX_RECORDS
    assert sum(h.sink.batches) == total
    assert ids(h.sink.records) == expected_ids(range(total))


async def test_batches_are_bounded_by_read_max_bytes(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery_module, "READ_MAX_BYTES", 3 * EVENT_FRAME + EVENT_FRAME // 2)
    h = make_harness()
    h.append(range(20))
    h.start()
    await wait_until(lambda: len(h.sink.records) >= 20 and h.delivery.delivered >= 20)
    assert max(h.sink.batches) == 3
    assert ids(h.sink.records) == expected_ids(range(20))


# --- ack trims the log ------------------------------------------------------------------


async def test_ack_trims_the_log_once_the_sink_took_the_batch(
    make_harness: Callable[..., Harness],
) -> None:
    log = RecordingLog()
    h = make_harness(log=log)
    records = h.append(range(50))
    assert log.stats().records_pending == 50
    h.start()
    await wait_until(lambda: log.stats().records_pending == 0)
    stats = log.stats()
    assert stats.bytes_used == 0
    assert stats.oldest_pending_ts is None
    assert log.acks[-1] == records[-1].seq
    assert len(h.sink.records) == 50


async def test_nothing_is_acked_while_the_sink_fails(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    log = RecordingLog()
    h = make_harness(log=log)
    h.sink.fail_next = 10**9
    appended = h.append(range(10))
    h.start()
    await wait_until(lambda: failures(h.metrics) >= 30)  # three failed attempts
    assert log.acks == []
    assert log.stats().records_pending == 10
    assert h.sink.records == []
    h.sink.fail_next = 0  # the sink comes back
    await wait_until(lambda: log.stats().records_pending == 0)
    assert h.sink.records == appended


async def test_delivery_on_a_write_ahead_log_deletes_delivered_segments(
    tmp_path: Path, make_harness: Callable[..., Harness]
) -> None:
    directory = tmp_path / "wal"
    wal = WriteAheadLog(str(directory), 1 << 20, 8 * 1024, "block")
    h = make_harness(log=wal)
    appended: list[Record] = []
    for chunk in range(6):
        appended += h.append(range(chunk * 5, chunk * 5 + 5))
    assert len(list(directory.glob("*.seg"))) > 2
    h.start()
    # The ack updates the counts under the log's lock and unlinks the trimmed segments
    # right after, in the delivery thread: wait for both, not only the counts.
    await wait_until(lambda: wal.stats().records_pending == 0
                     and len(list(directory.glob("*.seg"))) == 1)
    assert h.sink.records == appended
    assert len(list(directory.glob("*.seg"))) == 1  # only the active segment is left
    assert wal.stats().bytes_used < 8 * 1024
    assert await h.stop() is True
    wal.close()
    reopened = WriteAheadLog(str(directory), 1 << 20, 8 * 1024, "block")
    try:
        assert reopened.stats().records_pending == 0
        assert reopened.read(100, 1 << 20) == []  # acked: not handed out again
    finally:
        reopened.close()


async def test_a_record_found_damaged_when_read_is_counted_as_dropped(
    tmp_path: Path, make_harness: Callable[..., Harness]
) -> None:
    # the disk changed after recovery: the log skips the record, the next ack trims it;
    # the event is gone, so it must be counted (start-up damage is counted by the server)
    directory = tmp_path / "wal"
    wal = WriteAheadLog(str(directory), 1 << 21, 1 << 20, "block")
    h = make_harness(log=wal)
    appended = h.append(range(1, 4))
    wal.sync()
    (segment,) = directory.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[data.find(b'"id":"inf-000002"')] ^= 1  # bit rot in the second record
    segment.write_bytes(bytes(data))
    h.start()
    await wait_until(lambda: wal.stats().records_pending == 0)
    assert h.sink.records == [appended[0], appended[2]]
    assert sample(h.metrics, "inference_sidecar_events_dropped_total", {"reason": "corrupt"}) == 1


# --- retries ----------------------------------------------------------------------------


async def test_sink_failures_are_retried_without_loss_or_duplicates(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 2
    appended = h.append(range(10))
    h.start()
    await wait_until(lambda: len(h.sink.records) >= 10 and h.delivery.delivered >= 10)
    await asyncio.sleep(0.05)  # a duplicate, if any, would show up now
    assert h.sink.records == appended
    assert h.sink.attempts == 3
    assert failures(h.metrics) == 20  # events in the failed batches, two failures
    assert retried(h.metrics) == 20  # the same ten sent again, twice
    assert delivered(h.metrics) == 10
    assert h.delivery.delivered == 10
    assert await h.stop() is True
    assert h.sink.records == appended


@pytest.mark.parametrize("where", ["read", "ack"])
async def test_a_disk_error_in_read_or_ack_is_retried_not_fatal(
    tmp_path: Path, make_harness: Callable[..., Harness], fast_retries: None,
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """EIO reading a segment: the read is tried again. EIO storing the cursor after the
    sink took the batch: the records are acked in memory, not sent again, and the next
    ack stores the cursor. Either way delivery carries on with what comes later."""
    from sidecar.durability import disk
    wal = WriteAheadLog(str(tmp_path / "wal"), 1 << 20, 8 * 1024, "block")
    h = make_harness(log=wal)
    h.start()
    first = h.append(range(3))
    await wait_until(lambda: h.delivery.delivered >= 3)
    faults = [OSError(errno.EIO, "Input/output error")]
    if where == "read":
        real_fetch = disk.fetch

        def fetch(*args: Any) -> Any:
            if faults:
                raise faults.pop()
            return real_fetch(*args)
        monkeypatch.setattr(disk, "fetch", fetch)
    else:
        real_store = disk.CursorFile.store

        def store(self: Any, *args: Any, **kwargs: Any) -> None:
            if faults:
                raise faults.pop()
            real_store(self, *args, **kwargs)
        monkeypatch.setattr(disk.CursorFile, "store", store)
    second = h.append(range(3, 6))
    await wait_until(lambda: not faults and h.delivery.delivered >= 6)
    third = h.append(range(6, 9))
    await wait_until(lambda: h.delivery.delivered >= 9)
    assert h.task is not None and not h.task.done()
    errors = sample(h.metrics, "inference_sidecar_log_read_errors_total")
    assert errors == (1 if where == "read" else 0)
    assert delivered(h.metrics) == 9 and wal.stats().records_pending == 0
    assert h.sink.records == first + second + third  # each once
    assert disk.CursorFile(wal.directory).load() == third[-1].seq
    assert await h.stop() is True
    wal.close()


async def test_drop_oldest_counts_exactly_while_a_batch_is_with_the_sink(
    tmp_path: Path, make_harness: Callable[..., Harness]
) -> None:
    """Events delivery has read and is writing are not lost when drop_oldest deletes their
    segment: counting them dropped too would count them twice (they are delivered)."""
    wal = WriteAheadLog(str(tmp_path / "wal"), 128 * 1024, 64 * 1024, "drop_oldest")
    h = make_harness(log=wal)
    h.sink.gate = threading.Event()
    h.append(range(60))  # a segment and a half
    h.start()
    assert await asyncio.to_thread(h.sink.entered.wait, WAIT_S)  # a batch is in flight
    h.append(range(60, 140))  # the log overflows: its oldest segment is deleted
    assert wal.stats().dropped_oldest + wal.stats().dropped_in_flight > 0
    h.sink.gate.set()
    # The delivered counter goes up just after the ack that empties the log.
    await wait_until(lambda: wal.stats().records_pending == 0
                     and delivered(h.metrics) + wal.stats().dropped_oldest >= 140)
    await asyncio.sleep(0.05)  # a duplicate, if any, would show up now
    stats = wal.stats()
    sent = {r.value for r in h.sink.records}
    assert delivered(h.metrics) == len(sent)  # each once
    assert delivered(h.metrics) + stats.dropped_oldest == 140
    assert await h.stop() is True
    wal.close()


async def test_records_appended_during_retries_keep_their_order(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 5
    h.start()
    h.append(range(5))
    await wait_until(lambda: failures(h.metrics) >= 5)
    h.append(range(5, 30))  # arrive while the first batch is being retried
    await wait_until(lambda: len(h.sink.records) >= 30 and h.delivery.delivered >= 30)
    assert ids(h.sink.records) == expected_ids(range(30))
    assert failures(h.metrics) == 5 * 5
    assert retried(h.metrics) == 5 * 5
    assert delivered(h.metrics) == 30


async def test_retry_backoff_doubles_and_is_capped(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    delays = record_sleeps(monkeypatch, delivery_module, "delivery")
    h = make_harness()
    h.sink.fail_next = 8
    h.append(range(2))
    h.start()
    await wait_until(lambda: len(h.sink.records) >= 2 and h.delivery.delivered >= 2)
    monkeypatch.undo()
    # After a small delivered batch, delivery also lingers briefly to let the next grow.
    delays = [d for d in delays if d != delivery_module.LINGER_S]
    start, cap = delivery_module.RETRY_INITIAL_S, delivery_module.RETRY_MAX_S
    expected, delay = [], start
    for _ in range(8):
        expected.append(delay)
        delay = min(delay * 2, cap)
    assert delays == pytest.approx(expected)
    assert max(delays) == cap


async def test_sink_failures_and_recovery_are_logged(
    make_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture, fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 1
    h.append(range(1))
    with caplog.at_level("INFO", logger=DELIVERY_LOGGER):
        h.start()
        await wait_until(lambda: len(h.sink.records) >= 1 and h.delivery.delivered >= 1)
    logged = [r for r in caplog.records if r.name == DELIVERY_LOGGER]
    assert [(r.levelname, r.getMessage()) for r in logged] == [
        ("WARNING", "sink write failed; batch kept for retry"),
        ("INFO", "delivery recovered"),
    ]
    fields = logged[0].fields  # type: ignore[attr-defined]
    assert fields["sink"] == "memory"
    assert fields["reason"] == "memory sink told to fail"
    assert fields["batch"] == 1
    assert fields["attempt"] == 1
    assert fields["retry_in_s"] == delivery_module.RETRY_INITIAL_S
    assert logged[1].fields == {"sink": "memory", "attempts": 2}  # type: ignore[attr-defined]


# --- stop -------------------------------------------------------------------------------


async def test_stop_drains_everything_in_the_log(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.start()
    total = delivery_module.READ_MAX_RECORDS * 3 + 11
    appended = h.append(range(total))
    assert await h.stop() is True
    assert h.sink.records == appended
    assert h.log.stats().records_pending == 0
    assert h.sink.closed == 1
    assert h.task is not None and h.task.done()


async def test_stop_with_an_empty_log_returns_at_once(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.start()
    await asyncio.sleep(0.01)
    started = time.monotonic()
    assert await h.stop(drain_s=5.0) is True
    assert time.monotonic() - started < 1.0
    assert h.sink.closed == 1


async def test_stop_drains_through_a_few_sink_failures(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 2
    h.start()
    appended = h.append(range(50))
    assert await h.stop() is True
    assert h.sink.records == appended
    assert failures(h.metrics) >= 2


async def test_stop_reports_not_drained_when_the_sink_keeps_failing(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 10**9
    h.append(range(5))
    h.start()
    started = time.monotonic()
    assert await h.stop(drain_s=5.0) is False
    assert time.monotonic() - started < 5.0  # gives up after a few tries, not at drain_s
    assert h.sink.records == []
    assert h.log.stats().records_pending == 5  # kept in the log for the next start
    assert failures(h.metrics) >= 3 * 5
    assert delivered(h.metrics) == 0
    assert h.sink.closed == 1


async def test_stop_reports_not_drained_when_a_write_outlasts_drain_s(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.sink.gate = threading.Event()
    h.append(range(5))
    h.start()
    assert await asyncio.to_thread(h.sink.entered.wait, WAIT_S)
    gate = h.sink.gate
    asyncio.get_running_loop().call_later(0.6, gate.set)  # the write finishes, but late
    started = time.monotonic()
    assert await h.stop(drain_s=0.2) is False
    assert time.monotonic() - started >= 0.2
    # The sink took the batch after the deadline: the delivery thread still acks and
    # counts it (stop waits for the write in flight before closing the sink), so it is not
    # delivered twice.
    assert h.log.stats().records_pending == 0
    assert delivered(h.metrics) == 5
    assert h.sink.closed == 1  # closed after the write in flight returned


# --- lag --------------------------------------------------------------------------------


async def test_lag_seconds_is_the_age_of_the_oldest_undelivered_record(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    assert h.delivery.lag_seconds() == 0.0
    h.append(range(3))
    await asyncio.sleep(0.2)
    first = h.delivery.lag_seconds()
    assert 0.2 <= first < WAIT_S
    await asyncio.sleep(0.05)
    assert h.delivery.lag_seconds() > first
    h.start()
    await wait_until(lambda: h.log.stats().records_pending == 0)
    assert h.delivery.lag_seconds() == 0.0
