"""``EventQueue``: bounded, non-blocking hand-off that numbers every accepted event.

``put`` returns the event's sequence number (0 if it was dropped); batches are
``(seq, event)`` tuples in sequence order. Policies: ``block`` (the default: never drops,
``accepting`` turns False at capacity), ``drop_oldest`` and ``drop_newest`` (exact drop
accounting through ``dropped`` and ``on_drop``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
from factories import expected_ids, make_event
from hypothesis import given
from hypothesis import strategies as st

from detectors.base import Alert
from sidecar.detection.observed import Observed
from sidecar.events.model import InferenceEvent
from sidecar.events.queue import POLICIES, EventQueue
from sidecar.events.record import EVENT_SEQ_STEP

WAIT_S = 2.0
DROP_POLICIES = ["drop_oldest", "drop_newest"]


Batch = list[tuple[int, InferenceEvent]]


def ids(batch: Batch) -> list[str]:
    return [event.inference_id for _, event in batch]


def seqs(batch: Batch) -> list[int]:
    return [seq for seq, _ in batch]


def nth(*ns: int) -> list[int]:
    """The seqs a default queue hands its ``n``-th accepted events (1-based): each event
    owns a block of ``EVENT_SEQ_STEP`` seqs and the first block starts at one step."""
    return [n * EVENT_SEQ_STEP for n in ns]


class Recorder:
    """Records the calls of ``on_drop`` (reason, n) or ``on_accept`` (seq)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def drop(self, reason: str, n: int) -> None:
        self.calls.append((reason, n))

    def accept(self, seq: int) -> None:
        self.calls.append(seq)


async def settle() -> None:
    """Give tasks a few loop iterations to reach their next await."""
    for _ in range(5):
        await asyncio.sleep(0)


async def get(q: EventQueue, max_items: int) -> Batch:
    return await asyncio.wait_for(q.get_batch(max_items), WAIT_S)


# --- construction and capacity ----------------------------------------------------------


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="drop_everything"):
        EventQueue(10, "drop_everything")


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_is_rejected(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventQueue(capacity)


def test_the_policies_are_block_and_the_two_drops() -> None:
    assert set(POLICIES) == {"block", "drop_oldest", "drop_newest"}


def test_default_policy_is_block() -> None:
    q = EventQueue(4)
    assert q.when_full == "block"
    assert q.capacity == 4
    assert len(q) == 0
    assert q.dropped == 0
    assert q.closed is False
    assert q.accepting is True


@pytest.mark.parametrize("policy", POLICIES)
def test_put_below_capacity_accepts_everything_with_consecutive_seqs(policy: str) -> None:
    drops, accepts = Recorder(), Recorder()
    q = EventQueue(5, policy, on_drop=drops.drop, on_accept=accepts.accept)
    results = [q.put(make_event(i)) for i in range(5)]
    # Consecutive event blocks: the first block's seq, then one step apart.
    assert results == nth(1, 2, 3, 4, 5)
    assert results[0] == EVENT_SEQ_STEP
    assert [b - a for a, b in pairwise(results)] == [EVENT_SEQ_STEP] * 4
    assert len(q) == 5
    assert q.dropped == 0
    assert drops.calls == []
    assert accepts.calls == nth(1, 2, 3, 4, 5)


@pytest.mark.parametrize("policy", POLICIES)
def test_numbering_starts_at_first_seq(policy: str) -> None:
    # The durable log's numbering continues across restarts through first_seq.
    # first_seq is used as is for the first event, then each event is one block further.
    q = EventQueue(10, policy, first_seq=4711)
    assert [q.put(make_event(i)) for i in range(3)] == [
        4711, 4711 + EVENT_SEQ_STEP, 4711 + 2 * EVENT_SEQ_STEP]


async def test_batches_carry_each_events_seq() -> None:
    q = EventQueue(10, first_seq=100)
    for i in range(4):
        q.put(make_event(i))
    batch = await get(q, 10)
    assert seqs(batch) == [100 + i * EVENT_SEQ_STEP for i in range(4)]
    assert ids(batch) == expected_ids(range(4))


@pytest.mark.parametrize("policy", DROP_POLICIES)
def test_length_never_exceeds_capacity_under_a_drop_policy(policy: str) -> None:
    q = EventQueue(3, policy)
    for i in range(50):
        q.put(make_event(i))
        assert len(q) <= 3
        assert q.accepting is True  # drop policies never refuse at admission
    assert len(q) == 3
    assert q.dropped == 47


# --- block ------------------------------------------------------------------------------


def test_block_never_drops_and_stops_accepting_at_capacity() -> None:
    drops = Recorder()
    q = EventQueue(3, "block", on_drop=drops.drop)
    for i in range(3):
        assert q.accepting is True
        q.put(make_event(i))
    assert q.accepting is False
    # Requests already in flight may still enqueue: nothing is dropped, each gets a seq.
    assert [q.put(make_event(i)) for i in range(3, 6)] == nth(4, 5, 6)
    assert len(q) == 6
    assert q.accepting is False
    assert q.dropped == 0
    assert drops.calls == []


async def test_block_accepts_again_once_the_consumer_catches_up() -> None:
    q = EventQueue(3, "block")
    for i in range(5):
        q.put(make_event(i))
    assert q.accepting is False
    assert seqs(await get(q, 2)) == nth(1, 2)
    assert len(q) == 3
    assert q.accepting is False  # still at capacity
    assert seqs(await get(q, 1)) == nth(3)
    assert q.accepting is True
    assert q.put(make_event(5)) == nth(6)[0]
    assert q.accepting is False
    assert ids(await get(q, 10)) == expected_ids([3, 4, 5])


# --- drop policies ----------------------------------------------------------------------


async def test_drop_oldest_keeps_the_newest_events() -> None:
    drops, accepts = Recorder(), Recorder()
    q = EventQueue(3, "drop_oldest", on_drop=drops.drop, on_accept=accepts.accept)
    results = [q.put(make_event(i)) for i in range(5)]
    # The new event is always accepted (and numbered); the oldest ones make room.
    assert results == nth(1, 2, 3, 4, 5)
    assert accepts.calls == nth(1, 2, 3, 4, 5)
    assert q.dropped == 2
    assert drops.calls == [("queue_full", 1), ("queue_full", 1)]
    batch = await get(q, 10)
    assert ids(batch) == expected_ids([2, 3, 4])
    assert seqs(batch) == nth(3, 4, 5)


async def test_drop_newest_keeps_the_oldest_events() -> None:
    drops, accepts = Recorder(), Recorder()
    q = EventQueue(3, "drop_newest", on_drop=drops.drop, on_accept=accepts.accept)
    results = [q.put(make_event(i)) for i in range(5)]
    assert results == [*nth(1, 2, 3), 0, 0]
    assert accepts.calls == nth(1, 2, 3)  # a refused event is never reported accepted
    assert q.dropped == 2
    assert drops.calls == [("queue_full", 1), ("queue_full", 1)]
    batch = await get(q, 10)
    assert ids(batch) == expected_ids([0, 1, 2])
    assert seqs(batch) == nth(1, 2, 3)


async def test_drop_newest_does_not_use_up_seqs() -> None:
    q = EventQueue(1, "drop_newest")
    assert q.put(make_event(0)) == nth(1)[0]
    assert q.put(make_event(1)) == 0
    assert q.put(make_event(2)) == 0
    await get(q, 1)
    assert q.put(make_event(3)) == nth(2)[0]  # no gap for the refused events


@pytest.mark.parametrize("policy", DROP_POLICIES)
def test_drops_are_counted_without_a_callback(policy: str) -> None:
    q = EventQueue(1, policy)
    for i in range(4):
        q.put(make_event(i))
    assert q.dropped == 3
    assert len(q) == 1


async def test_room_freed_by_a_batch_is_reused_without_drops() -> None:
    drops = Recorder()
    q = EventQueue(2, "drop_newest", on_drop=drops.drop)
    assert q.put(make_event(0)) and q.put(make_event(1))
    assert ids(await get(q, 1)) == expected_ids([0])
    assert q.put(make_event(2)) == nth(3)[0]
    assert q.put(make_event(3)) == 0
    assert q.dropped == 1
    assert drops.calls == [("queue_full", 1)]
    assert ids(await get(q, 5)) == expected_ids([1, 2])


def _drain_sync(q: EventQueue) -> Batch:
    async def drain() -> Batch:
        q.close()
        out: Batch = []
        while batch := await asyncio.wait_for(q.get_batch(7), WAIT_S):
            out.extend(batch)
        return out

    return asyncio.run(drain())


@given(
    capacity=st.integers(min_value=1, max_value=20),
    count=st.integers(min_value=0, max_value=60),
    policy=st.sampled_from(list(POLICIES)),
    first_seq=st.integers(min_value=1, max_value=10**12),
)
def test_property_policy_keeps_exactly_the_right_events(
    capacity: int, count: int, policy: str, first_seq: int
) -> None:
    drops, accepts = Recorder(), Recorder()
    q = EventQueue(capacity, policy, on_drop=drops.drop, first_seq=first_seq,
                   on_accept=accepts.accept)
    results = [q.put(make_event(i)) for i in range(count)]
    if policy == "block":
        dropped, kept = 0, list(range(count))
        assert results == [first_seq + i * EVENT_SEQ_STEP for i in range(count)]
        assert q.accepting is (count < capacity)
    elif policy == "drop_oldest":
        dropped = max(0, count - capacity)
        kept = list(range(count))[-capacity:] if count else []
        assert results == [first_seq + i * EVENT_SEQ_STEP for i in range(count)]
    else:
        dropped, kept = max(0, count - capacity), list(range(min(count, capacity)))
        assert results == [
            first_seq + i * EVENT_SEQ_STEP if i < capacity else 0 for i in range(count)]
    assert q.dropped == dropped
    assert drops.calls == [("queue_full", 1)] * dropped
    assert accepts.calls == [r for r in results if r]
    drained = _drain_sync(q)
    assert ids(drained) == expected_ids(kept)
    # Every event that came out is numbered with the seq put() returned for it.
    assert seqs(drained) == [results[i] for i in kept]
    assert all(a < b for a, b in zip(seqs(drained), seqs(drained)[1:], strict=False))


# --- get_batch --------------------------------------------------------------------------


async def test_get_batch_returns_in_order_and_respects_max_items() -> None:
    q = EventQueue(100)
    for i in range(10):
        q.put(make_event(i))
    assert ids(await get(q, 4)) == expected_ids(range(0, 4))
    assert len(q) == 6
    assert ids(await get(q, 4)) == expected_ids(range(4, 8))
    assert seqs(await get(q, 100)) == nth(9, 10)
    assert len(q) == 0


async def test_get_batch_returns_what_is_there_without_waiting_for_more() -> None:
    q = EventQueue(100)
    q.put(make_event(0))
    assert ids(await get(q, 50)) == expected_ids([0])


async def test_get_batch_returns_the_same_event_objects() -> None:
    q = EventQueue(10)
    event = make_event(7)
    seq = q.put(event)
    ((got_seq, got),) = await get(q, 1)
    assert got is event
    assert got_seq == seq


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
    assert seqs(await asyncio.wait_for(consumer, WAIT_S)) == nth(1, 2, 3)


async def test_cancelled_consumer_does_not_break_the_next_one() -> None:
    q = EventQueue(10)
    first = asyncio.create_task(q.get_batch(10))
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, WAIT_S)
    q.put(make_event(5))
    assert ids(await get(q, 10)) == expected_ids([5])
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
    assert ids(await get(q, 3)) == expected_ids([0, 1, 2])
    assert ids(await get(q, 3)) == expected_ids([3, 4])
    assert await get(q, 3) == []
    assert await get(q, 3) == []


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
    assert await get(q, 10) == []


async def test_close_is_idempotent() -> None:
    q = EventQueue(10)
    q.put(make_event(0))
    q.close()
    q.close()
    assert ids(await get(q, 10)) == expected_ids([0])
    assert await get(q, 10) == []


def _rejected(n: int) -> InferenceEvent:
    """A request the enforce-mode gate refused: its alert rides on the event until the
    detection stage makes it a notice."""
    event = make_event(n, status=403)
    observed = Observed(b'{"prompt": "x"}', "application/json", {})
    observed.enforced = [Alert("sig", "critical", "blocked", kind="security",
                               inference_id=event.inference_id)]
    event.observed = observed
    return event


@pytest.mark.parametrize(("policy", "first", "second"), [
    ("drop_newest", lambda: make_event(1), lambda: _rejected(2)),
    ("drop_oldest", lambda: _rejected(1), lambda: make_event(2)),
])
def test_a_dropped_event_s_gate_alerts_are_counted_as_dropped_alerts(
    policy: str, first: Callable[[], InferenceEvent], second: Callable[[], InferenceEvent],
) -> None:
    drops: list[tuple[str, int]] = []
    alerts: list[tuple[str, int]] = []
    queue = EventQueue(1, policy, on_drop=lambda r, n: drops.append((r, n)),
                       on_alerts_dropped=lambda r, n: alerts.append((r, n)))
    queue.put(first())
    queue.put(second())
    assert drops == [("queue_full", 1)]
    assert alerts == [("queue_full", 1)]


def test_a_dropped_event_without_alerts_counts_no_alert() -> None:
    alerts: list[tuple[str, int]] = []
    queue = EventQueue(1, "drop_newest", on_alerts_dropped=lambda r, n: alerts.append((r, n)))
    queue.put(make_event(1))
    queue.put(make_event(2))
    assert alerts == []
