"""``Handoff``: the bounded buffer between two pipeline stages, and ``BatchSource``, what a
stage reads batches from (the EventQueue or a Handoff).

A Handoff holds about two batches: when the stage after it is slow, the stage before it
waits, the EventQueue fills, and its ``when_full`` policy applies, as it would without
the stages in between. Order is kept: a stage passes each batch on whole, in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from sidecar.events.model import AnyEvent

Batch = list[tuple[int, AnyEvent]]


class BatchSource(Protocol):
    """Where a stage takes events from: the EventQueue, or the previous stage's Handoff."""

    @property
    def closed(self) -> bool: ...

    async def get_batch(self, max_items: int) -> Batch: ...

    def take(self, max_items: int) -> Batch: ...


class Handoff:
    """Batches between the writer and the stages that complete events, in both
    directions; the reading side is EventQueue's."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[tuple[int, AnyEvent]] = deque()
        self._closed = False
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    @staticmethod
    def _wake(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)

    async def put_batch(self, batch: Batch) -> None:
        while len(self._items) >= self.capacity:
            self._writable = asyncio.get_running_loop().create_future()
            await self._writable
        self._items.extend(batch)
        self._wake(self._readable)

    def put_nowait(self, batch: Batch) -> None:
        """For a producer that bounds what it puts itself (the log writer: ``ROOM``)."""
        self._items.extend(batch)
        self._wake(self._readable)

    def notify_on(self, future: asyncio.Future[None]) -> None:
        """Complete ``future`` at the next put or close (see ``EventQueue.notify_on``)."""
        self._readable = future

    async def get_batch(self, max_items: int) -> Batch:
        while not self._items:
            if self._closed:
                return []
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable
        return self.take(max_items)

    def take(self, max_items: int) -> Batch:
        items = self._items
        taken = [items.popleft() for _ in range(min(max_items, len(items)))]
        self._wake(self._writable)
        return taken

    def close(self) -> None:
        self._closed = True
        self._wake(self._readable)
