"""The privacy stage on its own (``sidecar/pipeline/privacy.py``): order, pass-through,
fail closed, the bounded hand-off. The worker here is a stand-in object with ``call``:
the real masking worker process is exercised end to end in ``tests/privacy``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from factories import make_event

from sidecar.events.model import InferenceEvent
from sidecar.events.queue import EventQueue
from sidecar.pipeline.privacy import Handoff, PrivacyStage
from sidecar.privacy.context import Capture, decision
from sidecar.privacy.profile import load_profile
from sidecar.workers.child import WorkerError

STRICT = load_profile("strict")


class StandIn:
    """Answers like MaskingService: one record per item, or fails as told."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.calls: list[list[Any]] = []

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def call(self, items: list[Any], timeout_s: float) -> Any:
        self.calls.append(items)
        if self.fail is not None:
            raise self.fail
        records = [{"privacy": {"profile": "strict", "failure": None,
                                "capture_reason": chosen.reason},
                    "payload": {"request": captured.inference_id} if chosen.captured else None,
                    "headers": {"request": {"user-agent": "ua"}}}
                   for _, captured, chosen in items]
        return records, {"analyzer_error": 1}


def captured_event(n: int) -> InferenceEvent:
    event = make_event(n, privacy={"profile": "strict", "failure": "not_masked"})
    capture = Capture(STRICT, [("user-agent", "ua"), ("authorization", "Bearer secret")])
    capture.request(b'{"messages": []}', "application/json", "")
    event.capture = capture
    return event


async def run_stage(events: list[InferenceEvent], worker: StandIn
                    ) -> tuple[list[InferenceEvent], list[tuple[str, int]]]:
    queue = EventQueue(100)
    for event in events:
        queue.put(event)
    queue.close()
    handoff = Handoff(1000)
    failures: list[tuple[str, int]] = []
    stage = PrivacyStage(queue, handoff, worker,  # type: ignore[arg-type]
                         on_failure=lambda stage, n: failures.append((stage, n)))
    await asyncio.wait_for(stage.run(), 10)
    out = [event for _, event in handoff.take(1000)]
    stage.shutdown()
    assert handoff.closed
    return out, failures


async def test_masked_in_order_and_the_raw_capture_is_gone() -> None:
    events = [captured_event(0), make_event(1), captured_event(2)]
    worker = StandIn()
    out, failures = await run_stage(events, worker)
    assert [e.inference_id for e in out] == ["inf-000000", "inf-000001", "inf-000002"]
    assert len(worker.calls) == 1 and len(worker.calls[0]) == 2  # one call, captured only
    assert all(getattr(e, "capture", None) is None for e in out)
    assert out[0].headers == {"request": {"user-agent": "ua"}}
    assert out[1].headers is None and out[1].privacy is None  # untouched
    assert failures == [("analyzer_error", 1)]  # the worker's own counts are passed on


async def test_unsampled_events_send_no_bodies_to_the_worker() -> None:
    worker = StandIn()
    await run_stage([captured_event(n) for n in range(40)], worker)
    items = worker.calls[0]
    unsampled = [c for _, c, chosen in items if not chosen.captured]
    assert unsampled and all(c.request_body is None and c.query is None for c in unsampled)
    assert all(c.request_headers for _, c, _ in items)  # headers are metadata: always


@pytest.mark.parametrize(("error", "failure"), [
    (WorkerError("privacy worker process exited (signal 9); restarting it"),
     "worker_unavailable"),
    (RuntimeError("a bug"), "stage_error"),
])
async def test_a_failing_worker_fails_closed_and_loses_no_event(
    error: BaseException, failure: str
) -> None:
    out, failures = await run_stage([captured_event(0), make_event(1), captured_event(2)],
                                    StandIn(fail=error))
    assert len(out) == 3
    for event in (out[0], out[2]):
        assert event.payload is None and event.headers is None
        assert event.privacy is not None and event.privacy["failure"] == failure
        assert getattr(event, "capture", None) is None
    assert failures == [(failure, 2)]


async def test_one_unusable_capture_fails_alone() -> None:
    broken = captured_event(1)
    broken.capture.profile = None  # _captured cannot read it
    out, failures = await run_stage([captured_event(0), broken, captured_event(2)], StandIn())
    assert out[1].privacy is not None and out[1].privacy["failure"] == "capture_error"
    assert out[0].headers is not None and out[2].headers is not None
    assert ("capture_error", 1) in failures


async def test_the_handoff_is_bounded_and_ordered() -> None:
    handoff = Handoff(capacity=4)
    await handoff.put_batch([(n, make_event(n)) for n in range(4)])
    blocked = asyncio.create_task(handoff.put_batch([(4, make_event(4))]))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # full: the stage waits, the queue in front fills
    assert [seq for seq, _ in handoff.take(2)] == [0, 1]
    await asyncio.wait_for(blocked, 1)
    assert [seq for seq, _ in await handoff.get_batch(10)] == [2, 3, 4]
    handoff.close()
    assert await handoff.get_batch(10) == []


async def test_repeated_header_only_events_are_answered_from_the_memo() -> None:
    # Unsampled events (the common case) whose recorded headers were masked before skip
    # the worker; sampled ones, and new header values, still go to it.
    def unsampled(n: int, agent: str) -> InferenceEvent:
        event = captured_event(n)
        event.capture.request_headers = [("user-agent", agent), ("authorization", f"k{n}")]
        return event

    first = [unsampled(n, "ua-1") for n in range(30)]
    second = [unsampled(100 + n, "ua-1") for n in range(40)] + [unsampled(999, "ua-new")]
    worker = StandIn()
    out = await run_stage_twice(first, second, worker)
    assert len(worker.calls) == 2
    assert len(worker.calls[0]) == len(first)  # nothing remembered yet
    went = {c.inference_id for _, c, _ in worker.calls[1]}
    sampled = {e.inference_id for e in second
               if decision(STRICT, e.inference_id, 200).captured}
    assert went == sampled | {"inf-000999"}  # the repeats were answered from the memo
    assert len(sampled) < len(second) - 1  # (the ids give a mix; else the test says nothing)
    assert all(e.headers == {"request": {"user-agent": "ua"}} for e in out)
    assert all(getattr(e, "capture", None) is None for e in out)


async def run_stage_twice(first: list[InferenceEvent], second: list[InferenceEvent],
                          worker: StandIn) -> list[InferenceEvent]:
    """Two batches through one stage (the memo lives in the stage); the second's events."""
    queue = EventQueue(1000)
    handoff = Handoff(1000)
    stage = PrivacyStage(queue, handoff, worker,  # type: ignore[arg-type]
                         on_failure=lambda stage, n: None)
    task = asyncio.create_task(stage.run())
    for event in first:
        queue.put(event)
    for _ in range(200):
        if len(handoff) == len(first):
            break
        await asyncio.sleep(0.01)
    for event in second:
        queue.put(event)
    queue.close()
    await asyncio.wait_for(task, 10)
    out = [event for _, event in handoff.take(1000)][len(first):]
    stage.shutdown()
    return out


async def test_events_the_memo_answers_are_written_once_whole_and_skip_the_stage() -> None:
    # The log writer asks the stage first (``settle``): an unsampled event whose headers
    # were masked before is completed at once, so it needs no ahead record, no final
    # record and no trip through the stage.
    from factories import IDENTITY, wait_until

    from sidecar.durability.memory import MemoryLog
    from sidecar.events.record import Record
    from sidecar.pipeline import ahead
    from sidecar.pipeline.runner import Pipeline
    from sidecar.sinks.memory import MemorySink
    from sidecar.telemetry import Metrics

    class KeepingLog(MemoryLog):
        def __init__(self) -> None:
            super().__init__(1 << 30)
            self.parts: dict[str, tuple[bool, int | None]] = {}

        def append(  # type: ignore[override]
                self, records: list[Record], completes: bool = False) -> None:
            super().append(records, completes)
            for record in records:
                self.parts.setdefault(orjson.loads(record.value)["id"], ahead.part(record))

    def unsampled_or_not(n: int) -> InferenceEvent:
        event = captured_event(n)
        event.capture.request_headers = [("user-agent", "ua-1"), ("authorization", f"k{n}")]
        return event

    log, sink, worker = KeepingLog(), MemorySink(), StandIn()
    queue = EventQueue(10_000, "block", first_seq=log.next_seq, on_accept=log.note_accepted)
    pipeline = Pipeline(queue, log, sink, Metrics(IDENTITY), mode="sync",
                        masking=worker)  # type: ignore[arg-type]
    pipeline.start()
    try:
        first = [unsampled_or_not(n) for n in range(20)]
        for event in first:
            queue.put(event)
        await wait_until(lambda: len(sink.records) >= 20)
        calls_before = sum(len(items) for items in worker.calls)
        second = [unsampled_or_not(100 + n) for n in range(60)]
        sampled = {e.inference_id for e in second
                   if decision(STRICT, e.inference_id, 200).captured}
        assert 0 < len(sampled) < 30  # the ids give a mix; else the test says nothing
        for event in second:
            queue.put(event)
        await wait_until(lambda: len(sink.records) >= 80)
    finally:
        assert await pipeline.stop(drain_s=5.0)
    went = [c.inference_id for items in worker.calls for _, c, _ in items][calls_before:]
    assert set(went) == sampled  # only the sampled ones went to the worker
    for event in second:
        written = log.parts[event.inference_id]
        assert written == ((True, None) if event.inference_id in sampled else (False, None))
    delivered = [orjson.loads(r.value) for r in sink.records]
    assert len(delivered) == 80 and len({d["id"] for d in delivered}) == 80
    by_id = {d["id"]: d["data"] for d in delivered}
    for event in second:
        data = by_id[event.inference_id]
        assert data["headers"] == {"request": {"user-agent": "ua"}}
        assert data["privacy"]["failure"] is None
