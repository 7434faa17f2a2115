"""``Pipeline``: queue → ``LogWriter`` → log → ``Delivery`` → sink, end to end.

In order, retries without loss or duplicates, drain on stop, drops counted by reason,
the gauges it binds, and what a stop leaves behind: with ``durability: memory`` the
undelivered events are counted as dropped, on disk they wait in the write-ahead log for
the next start. Stage details are in ``test_writer.py`` and ``test_delivery.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

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
    retried,
    sample,
)
from factories import fast_retries as fast_retries  # a fixture
from factories import wait_until as _wait_until

from sidecar.durability.base import EventLog
from sidecar.durability.memory import MemoryLog
from sidecar.durability.wal import WriteAheadLog
from sidecar.events.cloudevents import to_record
from sidecar.events.queue import EventQueue
from sidecar.events.record import EVENT_SEQ_STEP
from sidecar.pipeline import delivery as delivery_module
from sidecar.pipeline import writer as writer_module
from sidecar.pipeline.runner import Pipeline
from sidecar.sinks.memory import MemorySink
from sidecar.telemetry import Metrics

wait_until = partial(_wait_until, poll_s=0.005)


def ev(n: int) -> int:
    """The seq of event ``n`` (1-based, across restarts): each event owns a block of
    ``EVENT_SEQ_STEP`` seqs and is numbered at its block's first seq."""
    return n * EVENT_SEQ_STEP


def evs(numbers: range) -> list[int]:
    return [ev(n) for n in numbers]


def dropped(metrics: Metrics, reason: str) -> float:
    return sample(metrics, "inference_sidecar_events_dropped_total", {"reason": reason})


def total_dropped(metrics: Metrics) -> float:
    """events_dropped_total summed over every reason."""
    return sum(
        s.value
        for family in metrics.events_dropped.collect()
        for s in family.samples
        if s.name == "inference_sidecar_events_dropped_total"
    )


class Harness:
    """Wired like ``Sidecar``: the queue numbers after the log and reports to it."""

    def __init__(
        self,
        capacity: int = 100_000,
        when_full: str = "block",
        mode: str = "sync",
        interval: float = 0.05,
        log: EventLog | None = None,
        sink: MemorySink | None = None,
    ) -> None:
        self.metrics = Metrics(IDENTITY)
        self.log: EventLog = log if log is not None else RecordingLog()
        self.queue = EventQueue(
            capacity, when_full,
            on_drop=lambda reason, n: self.metrics.events_dropped.labels(reason).inc(n),
            first_seq=self.log.next_seq, on_accept=self.log.note_accepted,
        )
        self.sink = sink if sink is not None else RecordingSink()
        self.pipeline = Pipeline(self.queue, self.log, self.sink, self.metrics, mode=mode,
                                 interval=interval)
        self.stopped = False

    def put(self, numbers: range | list[int]) -> list[int]:
        seqs = [self.queue.put(make_event(n)) for n in numbers]
        assert all(seqs)
        return seqs

    async def stop(self, drain_s: float = WAIT_S) -> bool:
        self.stopped = True
        return await asyncio.wait_for(self.pipeline.stop(drain_s=drain_s), WAIT_S + 5)

    async def cleanup(self) -> None:
        if not self.stopped:
            self.sink.fail_next = 0
            await self.stop(drain_s=1.0)


make_harness = harness_fixture(Harness)


# --- delivery ---------------------------------------------------------------------------


async def test_events_reach_the_sink_in_order(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.pipeline.start()
    assert h.put(range(100)) == evs(range(1, 101))
    await wait_until(lambda: len(h.sink.records) >= 100 and h.pipeline.delivery.delivered >= 100)
    assert ids(h.sink.records) == expected_ids(range(100))
    assert [r.seq for r in h.sink.records] == evs(range(1, 101))
    assert h.pipeline.delivery.delivered == 100
    assert delivered(h.metrics) == 100
    assert failures(h.metrics) == 0
    assert await h.stop() is True
    assert ids(h.sink.records) == expected_ids(range(100))


async def test_events_emitted_is_one_unlabelled_series_the_pipeline_leaves_alone(
    make_harness: Callable[..., Harness],
) -> None:
    # events_emitted_total counts acceptance into the pipeline (the request path does it);
    # counting again on delivery would double it. It has no labels.
    h = make_harness()
    h.pipeline.start()
    h.put(range(5))
    await wait_until(lambda: len(h.sink.records) >= 5 and h.pipeline.delivery.delivered >= 5)
    (family,) = h.metrics.events_emitted.collect()
    totals = [s for s in family.samples if s.name == "inference_sidecar_events_emitted_total"]
    assert [(s.labels, s.value) for s in totals] == [({}, 0.0)]


async def test_the_sink_gets_cloudevents_records(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.pipeline.start()
    event = make_event(1, status=504, outcome="timeout")
    seq = h.queue.put(event)
    await wait_until(lambda: len(h.sink.records) >= 1 and h.pipeline.delivery.delivered >= 1)
    assert h.sink.records == [to_record(event, seq)]


async def test_events_put_before_start_are_delivered(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.put(range(10))
    h.pipeline.start()
    await wait_until(lambda: len(h.sink.records) >= 10 and h.pipeline.delivery.delivered >= 10)
    assert ids(h.sink.records) == expected_ids(range(10))


async def test_events_arriving_over_time_stay_in_order(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.pipeline.start()
    for chunk in range(10):
        h.put(range(chunk * 7, chunk * 7 + 7))
        await asyncio.sleep(0.001)
    await wait_until(lambda: len(h.sink.records) >= 70 and h.pipeline.delivery.delivered >= 70)
    assert ids(h.sink.records) == expected_ids(range(70))


async def test_batches_are_bounded_at_both_stages(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    total = writer_module.BATCH_MAX * 2 + 3
    h.put(range(total))
    h.pipeline.start()
    await wait_until(lambda: len(h.sink.records) >= total)
    assert isinstance(h.sink, RecordingSink)
    assert max(h.sink.batches) <= delivery_module.READ_MAX_RECORDS
    assert sum(h.sink.batches) == total
    assert ids(h.sink.records) == expected_ids(range(total))


async def test_log_and_sink_io_run_in_their_own_threads_off_the_loop(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.pipeline.start()
    h.put(range(3))
    await wait_until(lambda: len(h.sink.records) >= 3 and h.pipeline.delivery.delivered >= 3)
    assert isinstance(h.sink, RecordingSink) and isinstance(h.log, RecordingLog)
    loop_thread = threading.get_ident()
    sink_threads, log_threads = set(h.sink.write_threads), h.log.append_threads
    assert len(sink_threads) == 1 and len(log_threads) == 1
    assert loop_thread not in sink_threads | log_threads
    assert sink_threads != log_threads  # a slow sink never holds up the log writer


async def test_gauges_are_zero_once_drained(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.put(range(20))
    h.pipeline.start()
    await wait_until(lambda: len(h.sink.records) >= 20 and h.pipeline.delivery.delivered >= 20)
    await wait_until(lambda: h.log.stats().records_pending == 0)
    assert sample(h.metrics, "inference_sidecar_events_queued") == 0
    assert sample(h.metrics, "inference_sidecar_log_events") == 0
    assert sample(h.metrics, "inference_sidecar_log_bytes") == 0
    assert sample(h.metrics, "inference_sidecar_delivery_lag_seconds") == 0
    await h.stop()
    assert sample(h.metrics, "inference_sidecar_events_queued") == 0


async def test_gauges_show_what_waits_while_the_sink_is_down(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 10**9
    h.put(range(7))
    assert sample(h.metrics, "inference_sidecar_events_queued") == 7
    h.pipeline.start()
    await wait_until(lambda: failures(h.metrics) >= 7)
    assert sample(h.metrics, "inference_sidecar_events_queued") == 0  # moved to the log
    assert sample(h.metrics, "inference_sidecar_log_events") == 7
    assert sample(h.metrics, "inference_sidecar_log_bytes") == h.log.stats().bytes_used > 0
    await asyncio.sleep(0.1)
    assert sample(h.metrics, "inference_sidecar_delivery_lag_seconds") >= 0.1
    h.sink.fail_next = 0
    await wait_until(lambda: len(h.sink.records) >= 7 and h.pipeline.delivery.delivered >= 7)


# --- retries ----------------------------------------------------------------------------


async def test_sink_failures_are_retried_without_loss_or_duplicates(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 2
    h.put(range(10))
    h.pipeline.start()
    await wait_until(lambda: len(h.sink.records) >= 10 and h.pipeline.delivery.delivered >= 10)
    await asyncio.sleep(0.05)  # a duplicate, if any, would show up now
    assert ids(h.sink.records) == expected_ids(range(10))
    assert failures(h.metrics) == 2 * 10
    assert retried(h.metrics) == 2 * 10
    assert delivered(h.metrics) == 10
    assert h.pipeline.delivery.delivered == 10
    assert await h.stop() is True
    assert ids(h.sink.records) == expected_ids(range(10))


async def test_events_queued_during_retries_keep_their_order(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 5
    h.pipeline.start()
    h.put(range(5))
    await wait_until(lambda: failures(h.metrics) >= 1)
    h.put(range(5, 30))  # arrive while the first batch is being retried
    await wait_until(lambda: len(h.sink.records) >= 30 and h.pipeline.delivery.delivered >= 30)
    assert ids(h.sink.records) == expected_ids(range(30))
    assert failures(h.metrics) == 5 * 5
    assert delivered(h.metrics) == 30


async def test_a_failing_disk_turns_disk_ok_false_until_it_recovers(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "RETRY_S", 0.05)  # room to observe the failing state
    log = RecordingLog()
    log.fail_appends = 2
    h = make_harness(log=log)
    assert h.pipeline.disk_ok is True
    h.put(range(4))
    h.pipeline.start()
    await wait_until(lambda: not h.pipeline.disk_ok)
    assert sample(h.metrics, "inference_sidecar_log_write_errors_total") >= 1
    await wait_until(lambda: len(h.sink.records) >= 4 and h.pipeline.delivery.delivered >= 4)
    assert h.pipeline.disk_ok is True
    assert sample(h.metrics, "inference_sidecar_log_write_errors_total") == 2
    assert ids(h.sink.records) == expected_ids(range(4))


# --- durability -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "memory"])
async def test_waiters_are_released_once_the_event_is_in_the_log(
    make_harness: Callable[..., Harness], mode: str
) -> None:
    h = make_harness(mode=mode)
    seqs = h.put(range(5))
    futures = [h.pipeline.durability.wait(s) for s in seqs]
    assert all(f is not None and not f.done() for f in futures)
    h.pipeline.start()
    await asyncio.wait_for(asyncio.gather(*[f for f in futures if f is not None]), WAIT_S)
    assert h.log.last_seq >= seqs[-1]


async def test_batch_mode_runs_the_periodic_fsync_and_stops_it(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(mode="batch", interval=0.01)
    h.pipeline.start()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "periodic-fsync" in names
    h.put(range(5))
    await wait_until(lambda: len(h.sink.records) >= 5 and h.pipeline.delivery.delivered >= 5)
    assert await h.stop() is True
    await asyncio.sleep(0)
    assert "periodic-fsync" not in {t.get_name() for t in asyncio.all_tasks()}


@pytest.mark.parametrize("mode", ["sync", "memory"])
async def test_no_periodic_fsync_outside_batch_mode(
    make_harness: Callable[..., Harness], mode: str
) -> None:
    h = make_harness(mode=mode)
    h.pipeline.start()
    assert "periodic-fsync" not in {t.get_name() for t in asyncio.all_tasks()}


# --- admission and drops ----------------------------------------------------------------


async def test_a_full_block_queue_stops_accepting_until_the_pipeline_catches_up(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(capacity=5, when_full="block")
    h.put(range(8))  # in-flight requests may still enqueue: nothing dropped
    assert h.queue.accepting is False
    assert dropped(h.metrics, "queue_full") == 0
    h.pipeline.start()
    await wait_until(lambda: h.queue.accepting)
    await wait_until(lambda: len(h.sink.records) >= 8 and h.pipeline.delivery.delivered >= 8)
    assert ids(h.sink.records) == expected_ids(range(8))


async def test_events_dropped_by_a_full_queue_are_counted_not_delivered(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(capacity=5, when_full="drop_oldest")
    for n in range(8):  # pipeline not started: the queue overflows
        h.queue.put(make_event(n))
    assert dropped(h.metrics, "queue_full") == 3
    h.pipeline.start()
    assert await h.stop() is True
    assert ids(h.sink.records) == expected_ids(range(3, 8))  # drop_oldest


async def test_events_dropped_by_a_full_log_are_counted_by_reason(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    # The sink is down, so the log fills; drop_newest refuses what does not fit.
    log = MemoryLog(3 * EVENT_FRAME + EVENT_FRAME // 2, "drop_newest")
    h = make_harness(log=log, when_full="drop_newest")
    h.sink.fail_next = 10**9
    h.pipeline.start()
    h.put(range(10))
    await wait_until(lambda: dropped(h.metrics, "log_full_newest") == 7)
    assert log.stats().records_pending == 3
    h.sink.fail_next = 0
    await wait_until(lambda: len(h.sink.records) >= 3 and h.pipeline.delivery.delivered >= 3)
    assert ids(h.sink.records) == expected_ids(range(3))


# --- stop -------------------------------------------------------------------------------


async def test_stop_drains_everything_queued(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.pipeline.start()
    total = writer_module.BATCH_MAX * 3 + 11
    h.put(range(total))
    assert await h.stop() is True
    assert ids(h.sink.records) == expected_ids(range(total))
    assert h.pipeline.delivery.delivered == total
    assert delivered(h.metrics) == total
    assert len(h.queue) == 0
    assert isinstance(h.sink, RecordingSink) and h.sink.closed == 1
    with pytest.raises(ValueError, match="closed"):
        h.log.read(1, 1)  # the log is closed too


async def test_stop_drains_through_sink_failures(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 2
    h.pipeline.start()
    h.put(range(50))
    assert await h.stop() is True
    assert ids(h.sink.records) == expected_ids(range(50))
    assert failures(h.metrics) >= 2


async def test_stop_before_start_closes_the_sink_and_the_log(
    make_harness: Callable[..., Harness],
) -> None:
    # A failed start (Sidecar.start raising before pipeline.start) still calls stop: the
    # sink (a file, a Kafka producer) must be closed, not leaked.
    h = make_harness()
    assert await h.stop() is True
    assert h.queue.closed is True
    with pytest.raises(ValueError, match="closed"):
        h.log.read(1, 1)
    assert isinstance(h.sink, RecordingSink)
    assert h.sink.closed == 1


async def test_stop_gives_up_when_the_sink_never_recovers(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness(mode="memory")
    h.sink.fail_next = 10**9
    h.pipeline.start()
    h.put(range(5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await h.stop(drain_s=0.3) is False
    assert loop.time() - started < 5.0
    assert h.sink.records == []
    assert failures(h.metrics) >= 5
    assert isinstance(h.sink, RecordingSink) and h.sink.closed == 1
    # With durability: memory the undelivered events are lost, and counted.
    assert dropped(h.metrics, "shutdown") == 5


async def test_stop_with_a_full_log_drops_at_the_deadline_and_counts_everything(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    # when_full: block, sink down, log full: the writer cannot append, and stop must not
    # hang. Every accepted event ends up delivered or dropped with a reason.
    log = MemoryLog(3 * EVENT_FRAME + EVENT_FRAME // 2, "block")
    h = make_harness(log=log, mode="memory", when_full="block")
    h.sink.fail_next = 10**9
    h.pipeline.start()
    h.put(range(3))
    await wait_until(lambda: log.stats().records_pending == 3)
    h.put(range(3, 10))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await h.stop(drain_s=0.3) is False
    assert loop.time() - started < 5.0
    at_shutdown = dropped(h.metrics, "log_full_at_shutdown")
    assert at_shutdown == 7
    assert dropped(h.metrics, "shutdown") == 3
    assert delivered(h.metrics) + at_shutdown + dropped(h.metrics, "shutdown") == 10


async def test_stop_with_a_failing_disk_returns_within_drain_s(
    make_harness: Callable[..., Harness],
) -> None:
    # The disk fails for good (EIO, ENOSPC): like a full log, it must not hang shutdown
    # past drain_s (the orchestrator's SIGKILL would follow, losing everything uncounted).
    log = RecordingLog()
    log.fail_appends = 10**9
    h = make_harness(log=log)
    h.pipeline.start()
    h.put(range(3))
    await wait_until(lambda: not h.pipeline.disk_ok)
    h.stopped = True
    try:
        drained = await asyncio.wait_for(h.pipeline.stop(drain_s=0.3), 5.0)
    except TimeoutError:
        raise AssertionError("Pipeline.stop(drain_s=0.3) still running after 5 s") from None
    finally:
        log.fail_appends = 0  # let whatever still runs finish, then clean up
        await _force_cleanup(h)
    assert drained is False
    assert h.sink.records == []
    assert total_dropped(h.metrics) == 3  # never silently lost: dropped, and counted


async def _force_cleanup(h: Harness) -> None:
    """Stop what a failed ``Pipeline.stop`` left running (tasks, threads, the log)."""
    p = h.pipeline
    for name, task in list(p._tasks.items()):
        if not task.done():
            if name == "delivery":
                await p.delivery.stop(task, 1.0)
            else:
                task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await asyncio.to_thread(p.writer.shutdown)
    h.log.close()


# --- on a real write-ahead log ----------------------------------------------------------


async def test_events_flow_through_a_write_ahead_log(
    tmp_path: Path, make_harness: Callable[..., Harness]
) -> None:
    directory = tmp_path / "wal"
    wal = WriteAheadLog(str(directory), 1 << 20, 16 * 1024, "block")
    h = make_harness(log=wal, mode="sync")
    h.pipeline.start()
    seqs = h.put(range(60))
    futures = [h.pipeline.durability.wait(s) for s in seqs]
    await asyncio.wait_for(asyncio.gather(*[f for f in futures if f is not None]), WAIT_S)
    await wait_until(lambda: len(h.sink.records) >= 60 and h.pipeline.delivery.delivered >= 60)
    assert await h.stop() is True
    assert ids(h.sink.records) == expected_ids(range(60))
    reopened = WriteAheadLog(str(directory), 1 << 20, 16 * 1024, "block")
    try:
        assert reopened.stats().records_pending == 0
        assert reopened.next_seq == ev(61)
    finally:
        reopened.close()


async def test_undelivered_events_wait_in_the_log_for_the_next_start(
    tmp_path: Path, make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    directory = str(tmp_path / "wal")
    first = make_harness(log=WriteAheadLog(directory, 1 << 20, 16 * 1024, "block"))
    first.sink.fail_next = 10**9  # the sink is down for the whole first run
    first.pipeline.start()
    first.put(range(5))
    assert await first.stop(drain_s=0.3) is False
    assert dropped(first.metrics, "shutdown") == 0  # on disk nothing is lost
    assert first.sink.records == []

    second = make_harness(log=WriteAheadLog(directory, 1 << 20, 16 * 1024, "block"))
    assert second.log.stats().records_pending == 5
    second.pipeline.start()
    assert second.put(range(5, 8)) == evs(range(6, 9))  # numbering continues after the log
    await wait_until(lambda: len(second.sink.records) >= 8)
    assert await second.stop() is True
    assert ids(second.sink.records) == expected_ids(range(8))
    assert [r.seq for r in second.sink.records] == evs(range(1, 9))
