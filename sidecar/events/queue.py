"""``EventQueue``: the one hand-off between the request path and the event pipeline.

It never blocks the request path. Each accepted event gets the first seq of the next
event block (``sidecar/events/record.py``), continuing the durable log's numbering
across restarts. ``when_full`` says what a full
queue does (Vector's ``when_full``):

- ``block``: nothing is dropped; instead ``accepting`` turns False and the request path
  refuses new inferences (503) until the pipeline catches up. Requests already in flight
  may still enqueue, so the queue holds at most ``capacity`` plus the in-flight count.
- ``drop_oldest`` / ``drop_newest``: the queue stays at ``capacity`` and counts each drop.

Single consumer: the pipeline's writer task on the same event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from sidecar.events.model import AnyEvent, carried_alerts
from sidecar.events.record import EVENT_SEQ_STEP

POLICIES = ("block", "drop_oldest", "drop_newest")


class EventQueue:
    def __init__(
        self,
        capacity: int,
        when_full: str = "block",
        on_drop: Callable[[str, int], None] | None = None,
        first_seq: int = EVENT_SEQ_STEP,
        on_accept: Callable[[int], None] | None = None,
        on_alerts_dropped: Callable[[str, int], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if when_full not in POLICIES:
            raise ValueError(f"unknown when_full policy {when_full!r}")
        self.capacity = capacity
        self.when_full = when_full
        self.dropped = 0
        self._next_seq = first_seq
        self._items: deque[tuple[int, AnyEvent]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._on_drop = on_drop
        self._on_accept = on_accept
        self._on_alerts_dropped = on_alerts_dropped

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def accepting(self) -> bool:
        """False when a ``block`` queue is full: admission control refuses new requests."""
        return self.when_full != "block" or len(self._items) < self.capacity

    def put(self, event: AnyEvent) -> int:
        """Enqueue without blocking; return the event's sequence number, 0 if dropped."""
        if len(self._items) >= self.capacity and self.when_full != "block":
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop("queue_full", 1)
            lost = event if self.when_full == "drop_newest" else self._items.popleft()[1]
            if self._on_alerts_dropped is not None and (alerts := carried_alerts(lost)):
                self._on_alerts_dropped("queue_full", alerts)
            if lost is event:
                return 0
        seq = self._next_seq
        self._next_seq = seq + EVENT_SEQ_STEP
        self._items.append((seq, event))
        if self._on_accept is not None:
            self._on_accept(seq)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return seq

    async def get_batch(self, max_items: int) -> list[tuple[int, AnyEvent]]:
        """Wait for at least one event (or close); return up to ``max_items`` in order.

        An empty list means the queue is closed and drained.
        """
        while not self._items:
            if self._closed:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take(max_items)

    def take(self, max_items: int) -> list[tuple[int, AnyEvent]]:
        """Up to ``max_items`` events, without waiting."""
        items = self._items
        return [items.popleft() for _ in range(min(max_items, len(items)))]

    def take_while(self, max_items: int, admit: Callable[[AnyEvent], bool]
                   ) -> list[tuple[int, AnyEvent]]:
        """Like ``take``, stopping early at the first event ``admit`` refuses (it stays)."""
        items: deque[tuple[int, AnyEvent]] = self._items
        out: list[tuple[int, AnyEvent]] = []
        while items and len(out) < max_items and admit(items[0][1]):
            out.append(items.popleft())
        return out

    def notify_on(self, future: asyncio.Future[None]) -> None:
        """Complete ``future`` at the next ``put`` or ``close``: for a consumer that waits
        on this queue and something else at once (the log writer)."""
        self._waiter = future

    def close(self) -> None:
        """No more events will come; the consumer drains what is left, then stops."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
