"""``EventQueue``: bounded, non-blocking hand-off with exact drop accounting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.events.model import InferenceEvent
from sidecar.events.queue import EventQueue

WAIT_S = 2.0


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


def ids(events: list[InferenceEvent]) -> list[str]:
    return [e.inference_id for e in events]


def expected_ids(numbers: range | list[int]) -> list[str]:
    return [f"inf-{n:06d}" for n in numbers]


class DropRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, reason: str, n: int) -> None:
        self.calls.append((reason, n))


async def settle() -> None:
    """Give tasks a few loop iterations to reach their next await."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- construction and capacity ----------------------------------------------------------


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="drop_everything"):
        EventQueue(10, "drop_everything")


def test_default_policy_is_drop_oldest() -> None:
    q = EventQueue(4)
    assert q.when_full == "drop_oldest"
    assert q.capacity == 4
    assert len(q) == 0
    assert q.dropped == 0
    assert q.closed is False


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_put_below_capacity_accepts_everything(policy: str) -> None:
    recorder = DropRecorder()
    q = EventQueue(5, policy, on_drop=recorder)
    results = [q.put(make_event(i)) for i in range(5)]
    assert results == [True] * 5
    assert len(q) == 5
    assert q.dropped == 0
    assert recorder.calls == []


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_length_never_exceeds_capacity(policy: str) -> None:
    q = EventQueue(3, policy)
    for i in range(50):
        q.put(make_event(i))
        assert len(q) <= 3
    assert len(q) == 3
    assert q.dropped == 47


# --- drop policies ----------------------------------------------------------------------


async def test_drop_oldest_keeps_the_newest_events() -> None:
    recorder = DropRecorder()
    q = EventQueue(3, "drop_oldest", on_drop=recorder)
    results = [q.put(make_event(i)) for i in range(5)]
    # The new event is always accepted; the oldest ones make room.
    assert results == [True] * 5
    assert q.dropped == 2
    assert recorder.calls == [("queue_full", 1), ("queue_full", 1)]
    assert ids(await asyncio.wait_for(q.get_batch(10), WAIT_S)) == expected_ids([2, 3, 4])


async def test_drop_newest_keeps_the_oldest_events() -> None:
    recorder = DropRecorder()
    q = EventQueue(3, "drop_newest", on_drop=recorder)
    results = [q.put(make_event(i)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert q.dropped == 2
    assert recorder.calls == [("queue_full", 1), ("queue_full", 1)]
    assert ids(await asyncio.wait_for(q.get_batch(10), WAIT_S)) == expected_ids([0, 1, 2])


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_drops_are_counted_without_a_callback(policy: str) -> None:
    q = EventQueue(1, policy)
    for i in range(4):
        q.put(make_event(i))
    assert q.dropped == 3
    assert len(q) == 1


async def test_room_freed_by_a_batch_is_reused_without_drops() -> None:
    recorder = DropRecorder()
    q = EventQueue(2, "drop_newest", on_drop=recorder)
    assert q.put(make_event(0)) and q.put(make_event(1))
    assert ids(await asyncio.wait_for(q.get_batch(1), WAIT_S)) == expected_ids([0])
    assert q.put(make_event(2)) is True
    assert q.put(make_event(3)) is False
    assert q.dropped == 1
    assert recorder.calls == [("queue_full", 1)]
    assert ids(await asyncio.wait_for(q.get_batch(5), WAIT_S)) == expected_ids([1, 2])


def _drain_sync(q: EventQueue) -> list[str]:
    async def drain() -> list[str]:
        q.close()
        out: list[str] = []
        while batch := await asyncio.wait_for(q.get_batch(7), WAIT_S):
            out.extend(ids(batch))
        return out

    return asyncio.run(drain())


@given(
    capacity=st.integers(min_value=1, max_value=20),
    count=st.integers(min_value=0, max_value=60),
    policy=st.sampled_from(["drop_oldest", "drop_newest"]),
)
def test_property_drop_policy_keeps_exactly_the_right_events(
    capacity: int, count: int, policy: str
) -> None:
    recorder = DropRecorder()
    q = EventQueue(capacity, policy, on_drop=recorder)
    accepted = [q.put(make_event(i)) for i in range(count)]
    dropped = max(0, count - capacity)
    assert q.dropped == dropped
    assert recorder.calls == [("queue_full", 1)] * dropped
    if policy == "drop_oldest":
        kept = list(range(count))[-capacity:] if count else []
        assert all(accepted)
    else:
        kept = list(range(min(count, capacity)))
        assert accepted == [i < capacity for i in range(count)]
    assert _drain_sync(q) == expected_ids(kept)


# --- get_batch --------------------------------------------------------------------------


async def test_get_batch_returns_in_order_and_respects_max_items() -> None:
    q = EventQueue(100)
    for i in range(10):
        q.put(make_event(i))
    assert ids(await asyncio.wait_for(q.get_batch(4), WAIT_S)) == expected_ids(range(0, 4))
    assert len(q) == 6
    assert ids(await asyncio.wait_for(q.get_batch(4), WAIT_S)) == expected_ids(range(4, 8))
    assert ids(await asyncio.wait_for(q.get_batch(100), WAIT_S)) == expected_ids([8, 9])
    assert len(q) == 0


async def test_get_batch_returns_what_is_there_without_waiting_for_more() -> None:
    q = EventQueue(100)
    q.put(make_event(0))
    batch = await asyncio.wait_for(q.get_batch(50), WAIT_S)
    assert ids(batch) == expected_ids([0])


async def test_get_batch_returns_the_same_event_objects() -> None:
    q = EventQueue(10)
    event = make_event(7)
    q.put(event)
    (got,) = await asyncio.wait_for(q.get_batch(1), WAIT_S)
    assert got is event


async def test_waiting_consumer_is_woken_by_put() -> None:
    q = EventQueue(10)
    consumer = asyncio.create_task(q.get_batch(10))
    await settle()
    assert not consumer.done()  # nothing queued: it must wait, not return []
    q.put(make_event(1))
    assert ids(await asyncio.wait_for(consumer, WAIT_S)) == expected_ids([1])


async def test_waiting_consumer_gets_everything_put_before_it_runs() -> None:
    q = EventQueue(10)
    consumer = asyncio.create_task(q.get_batch(10))
    await settle()
    for i in range(3):
        q.put(make_event(i))
    assert ids(await asyncio.wait_for(consumer, WAIT_S)) == expected_ids([0, 1, 2])


async def test_cancelled_consumer_does_not_break_the_next_one() -> None:
    q = EventQueue(10)
    first = asyncio.create_task(q.get_batch(10))
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, WAIT_S)
    q.put(make_event(5))
    assert ids(await asyncio.wait_for(q.get_batch(10), WAIT_S)) == expected_ids([5])
    second = asyncio.create_task(q.get_batch(10))
    await settle()
    q.put(make_event(6))
    assert ids(await asyncio.wait_for(second, WAIT_S)) == expected_ids([6])


# --- close ------------------------------------------------------------------------------


async def test_close_drains_then_returns_empty() -> None:
    q = EventQueue(10)
    for i in range(5):
        q.put(make_event(i))
    q.close()
    assert q.closed is True
    assert ids(await asyncio.wait_for(q.get_batch(3), WAIT_S)) == expected_ids([0, 1, 2])
    assert ids(await asyncio.wait_for(q.get_batch(3), WAIT_S)) == expected_ids([3, 4])
    assert await asyncio.wait_for(q.get_batch(3), WAIT_S) == []
    assert await asyncio.wait_for(q.get_batch(3), WAIT_S) == []


async def test_close_wakes_a_waiting_consumer_with_empty() -> None:
    q = EventQueue(10)
    consumer = asyncio.create_task(q.get_batch(10))
    await settle()
    assert not consumer.done()
    q.close()
    assert await asyncio.wait_for(consumer, WAIT_S) == []


async def test_close_of_an_empty_queue_returns_empty_at_once() -> None:
    q = EventQueue(10)
    q.close()
    assert await asyncio.wait_for(q.get_batch(10), WAIT_S) == []


async def test_close_is_idempotent() -> None:
    q = EventQueue(10)
    q.put(make_event(0))
    q.close()
    q.close()
    assert ids(await asyncio.wait_for(q.get_batch(10), WAIT_S)) == expected_ids([0])
    assert await asyncio.wait_for(q.get_batch(10), WAIT_S) == []
