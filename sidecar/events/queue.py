"""``EventQueue``: the one hand-off between the request path and the event pipeline.

Bounded, never blocks the request path. When full it applies ``when_full``:
``drop_oldest`` (keep the newest evidence; the default) or ``drop_newest``; every
drop is counted by reason. Single consumer: the pipeline task on the same loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from sidecar.events.model import InferenceEvent


class EventQueue:
    def __init__(
        self,
        capacity: int,
        when_full: str = "drop_oldest",
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown when_full policy {when_full!r}")
        self.capacity = capacity
        self.when_full = when_full
        self.dropped = 0
        self._items: deque[InferenceEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._on_drop = on_drop

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, event: InferenceEvent) -> bool:
        """Enqueue without blocking; returns False if this event was the one dropped."""
        accepted = True
        if len(self._items) >= self.capacity:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop("queue_full", 1)
            if self.when_full == "drop_newest":
                accepted = False
            else:
                self._items.popleft()
        if accepted:
            self._items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return accepted

    async def get_batch(self, max_items: int) -> list[InferenceEvent]:
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
        items = self._items
        n = min(max_items, len(items))
        return [items.popleft() for _ in range(n)]

    def close(self) -> None:
        """No more events will come; the consumer drains what is left, then stops."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
