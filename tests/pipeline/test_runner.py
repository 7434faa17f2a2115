"""``Pipeline``: queue → sink in order, retries without loss or duplicates, drain on stop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from sidecar.events.model import InferenceEvent
from sidecar.events.queue import EventQueue
from sidecar.pipeline import runner as runner_module
from sidecar.pipeline.runner import Pipeline
from sidecar.sinks.memory import MemorySink
from sidecar.telemetry import Metrics

IDENTITY = {
    "model_name": "credit-scorer",
    "model_version": "2.4.1",
    "policy_version": "pol-7",
    "evidence_bundle_id": "eb-2025-01",
}
WAIT_S = 10.0


def make_event(n: int, **overrides: Any) -> InferenceEvent:
    values: dict[str, Any] = {
        "inference_id": f"inf-{n:06d}",
        "timestamp": "2025-01-01T00:00:00.000Z",
        "model_name": "credit-scorer",
        "model_version": "2.4.1",
        "policy_version": "pol-7",
        "evidence_bundle_id": "eb-2025-01",
        "method": "POST",
        "route": "/v1/{name}/predict",
        "path": "/v1/credit/predict",
        "client_address": "127.0.0.1",
        "status": 200,
        "outcome": "ok",
    }
    values.update(overrides)
    return InferenceEvent(**values)


def ids(events: Sequence[InferenceEvent]) -> list[str]:
    return [e.inference_id for e in events]


def expected_ids(numbers: range | list[int]) -> list[str]:
    return [f"inf-{n:06d}" for n in numbers]


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def emitted(metrics: Metrics, sink: str = "memory") -> float:
    return sample(metrics, "inference_sidecar_events_emitted_total", {"sink": sink})


def sink_errors(metrics: Metrics, sink: str = "memory") -> float:
    return sample(metrics, "inference_sidecar_sink_errors_total", {"sink": sink})


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


class RecordingSink(MemorySink):
    """A MemorySink that also records the thread of each write and close calls."""

    def __init__(self) -> None:
        super().__init__()
        self.write_threads: list[int] = []
        self.batches: list[int] = []
        self.closed = 0

    def write(self, events: Sequence[InferenceEvent]) -> None:
        self.write_threads.append(threading.get_ident())
        self.batches.append(len(events))
        super().write(events)

    def close(self) -> None:
        self.closed += 1
        super().close()


class Harness:
    def __init__(self, capacity: int = 100_000, sink: MemorySink | None = None) -> None:
        self.metrics = Metrics(IDENTITY)
        self.queue = EventQueue(
            capacity, on_drop=lambda reason, n: self.metrics.events_dropped.labels(reason).inc(n)
        )
        self.sink = sink if sink is not None else MemorySink()
        self.pipeline = Pipeline(self.queue, self.sink, self.metrics)
        self.stopped = False

    def put(self, numbers: range | list[int]) -> None:
        for n in numbers:
            assert self.queue.put(make_event(n))

    async def stop(self, drain_s: float | None = WAIT_S) -> bool:
        self.stopped = True
        return await asyncio.wait_for(self.pipeline.stop(drain_s=drain_s), WAIT_S + 5)


@pytest.fixture
async def make_harness() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(**kwargs: Any) -> Harness:
        harness = Harness(**kwargs)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        if not harness.stopped:
            harness.sink.fail_next = 0
            await harness.stop(drain_s=1.0)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "RETRY_INITIAL_S", 0.005)
    monkeypatch.setattr(runner_module, "RETRY_MAX_S", 0.02)


# --- delivery ---------------------------------------------------------------------------


async def test_events_reach_the_sink_in_order(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.pipeline.start()
    h.put(range(100))
    await wait_until(lambda: len(h.sink.events) >= 100)
    assert ids(h.sink.events) == expected_ids(range(100))
    assert h.pipeline.emitted == 100
    assert emitted(h.metrics) == 100
    assert sink_errors(h.metrics) == 0
    assert await h.stop() is True
    assert ids(h.sink.events) == expected_ids(range(100))


async def test_events_put_before_start_are_delivered(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.put(range(10))
    h.pipeline.start()
    await wait_until(lambda: len(h.sink.events) >= 10)
    assert ids(h.sink.events) == expected_ids(range(10))


async def test_events_arriving_over_time_stay_in_order(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.pipeline.start()
    for chunk in range(10):
        h.put(range(chunk * 7, chunk * 7 + 7))
        await asyncio.sleep(0.001)
    await wait_until(lambda: len(h.sink.events) >= 70)
    assert ids(h.sink.events) == expected_ids(range(70))


async def test_batches_are_at_most_batch_max(make_harness: Callable[..., Harness]) -> None:
    sink = RecordingSink()
    h = make_harness(sink=sink)
    total = runner_module.BATCH_MAX * 2 + 3
    h.put(range(total))
    h.pipeline.start()
    await wait_until(lambda: len(sink.events) >= total)
    assert max(sink.batches) <= runner_module.BATCH_MAX
    assert sum(sink.batches) == total
    assert ids(sink.events) == expected_ids(range(total))


async def test_sink_write_runs_off_the_event_loop_thread(
    make_harness: Callable[..., Harness],
) -> None:
    sink = RecordingSink()
    h = make_harness(sink=sink)
    h.pipeline.start()
    h.put(range(3))
    await wait_until(lambda: len(sink.events) >= 3)
    loop_thread = threading.get_ident()
    assert sink.write_threads
    assert all(t != loop_thread for t in sink.write_threads)
    assert len(set(sink.write_threads)) == 1  # a single worker thread


async def test_events_queued_gauge_is_zero_once_drained(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.put(range(20))
    h.pipeline.start()
    await wait_until(lambda: len(h.sink.events) >= 20)
    await h.stop()
    assert sample(h.metrics, "inference_sidecar_events_queued") == 0


# --- retries ----------------------------------------------------------------------------


async def test_sink_failures_are_retried_without_loss_or_duplicates(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.sink.fail_next = 2
    h.put(range(10))
    h.pipeline.start()
    await wait_until(lambda: len(h.sink.events) >= 10)
    await asyncio.sleep(0.05)  # a duplicate, if any, would show up now
    assert ids(h.sink.events) == expected_ids(range(10))
    assert sink_errors(h.metrics) == 2
    assert emitted(h.metrics) == 10
    assert h.pipeline.emitted == 10
    assert await h.stop() is True
    assert ids(h.sink.events) == expected_ids(range(10))


async def test_events_queued_during_retries_keep_their_order(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 5
    h.pipeline.start()
    h.put(range(5))
    await wait_until(lambda: sink_errors(h.metrics) >= 1)
    h.put(range(5, 30))  # arrive while the first batch is being retried
    await wait_until(lambda: len(h.sink.events) >= 30)
    assert ids(h.sink.events) == expected_ids(range(30))
    assert sink_errors(h.metrics) == 5
    assert emitted(h.metrics) == 30


async def test_retry_backoff_doubles_and_is_capped(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: Any) -> Any:
        # runner.asyncio is the asyncio module: record only the pipeline task's sleeps.
        task = asyncio.current_task()
        if task is None or task.get_name() != "event-pipeline":
            return await real_sleep(delay, *args)
        delays.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(runner_module.asyncio, "sleep", recording_sleep)
    h = make_harness()
    h.sink.fail_next = 8
    h.put(range(2))
    h.pipeline.start()
    await wait_until(lambda: len(h.sink.events) >= 2)
    monkeypatch.undo()
    start, cap = runner_module.RETRY_INITIAL_S, runner_module.RETRY_MAX_S
    expected = []
    delay = start
    for _ in range(8):
        expected.append(delay)
        delay = min(delay * 2, cap)
    assert delays[:8] == pytest.approx(expected)
    assert max(delays) <= cap


async def test_sink_errors_are_logged_with_the_reason(
    make_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make_harness()
    h.sink.fail_next = 1
    h.put(range(1))
    with caplog.at_level("ERROR", logger="inference_sidecar.pipeline"):
        h.pipeline.start()
        await wait_until(lambda: len(h.sink.events) >= 1)
    records = [r for r in caplog.records if r.name == "inference_sidecar.pipeline"]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["sink"] == "memory"
    assert fields["reason"] == "memory sink told to fail"
    assert fields["batch"] == 1


# --- stop -------------------------------------------------------------------------------


async def test_stop_drains_everything_queued(make_harness: Callable[..., Harness]) -> None:
    sink = RecordingSink()
    h = make_harness(sink=sink)
    h.pipeline.start()
    total = runner_module.BATCH_MAX * 3 + 11
    h.put(range(total))
    assert await h.stop() is True
    assert ids(sink.events) == expected_ids(range(total))
    assert h.pipeline.emitted == total
    assert emitted(h.metrics) == total
    assert len(h.queue) == 0
    assert sink.closed == 1


async def test_stop_drains_through_sink_failures(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    h = make_harness()
    h.sink.fail_next = 3
    h.pipeline.start()
    h.put(range(50))
    assert await h.stop() is True
    assert ids(h.sink.events) == expected_ids(range(50))
    assert sink_errors(h.metrics) == 3


async def test_stop_before_start_closes_the_sink(make_harness: Callable[..., Harness]) -> None:
    sink = RecordingSink()
    h = make_harness(sink=sink)
    assert await h.stop() is True
    assert sink.closed == 1
    assert h.queue.closed is True


async def test_stop_gives_up_after_drain_s_when_the_sink_never_recovers(
    make_harness: Callable[..., Harness], fast_retries: None
) -> None:
    sink = RecordingSink()
    h = make_harness(sink=sink)
    sink.fail_next = 10**9
    h.pipeline.start()
    h.put(range(5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await h.stop(drain_s=0.3) is False
    elapsed = loop.time() - started
    assert 0.25 <= elapsed < 5.0
    assert sink.events == []
    assert sink_errors(h.metrics) >= 1
    assert sink.closed == 1


async def test_events_dropped_by_a_full_queue_are_counted_not_delivered(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(capacity=5)
    for n in range(8):  # pipeline not started: the queue overflows
        h.queue.put(make_event(n))
    assert sample(h.metrics, "inference_sidecar_events_dropped_total",
                  {"reason": "queue_full"}) == 3
    h.pipeline.start()
    assert await h.stop() is True
    assert ids(h.sink.events) == expected_ids(range(3, 8))  # drop_oldest
