"""``Durability``: the responses waiting for their event's fsync (``durability: sync``).

The request path waits on the future ``wait(seq)`` returns; the log writer calls
``advance(seq)`` once every record up to ``seq`` is durable (``writer.py``), which
releases the waiters in sequence order, on the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class Durability:
    """Responses waiting for their event's fsync, released in sequence order (on the loop).

    A waiter not released within ``timeout`` gets ``TimeoutError``: one watchdog task
    checks the oldest waiter, instead of a timer per request.
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self.durable_seq = 0
        self.timeout = timeout
        self._waiters: deque[tuple[int, float, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wait(self, seq: int) -> asyncio.Future[None] | None:
        """A future done once ``seq`` is durable; None if it already is."""
        if seq <= self.durable_seq:
            return None
        loop = self._loop
        if loop is None:  # cached: get_running_loop() costs a getpid() syscall on 3.11
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((seq, loop.time() + self.timeout, future))
        return future

    def advance(self, seq: int) -> None:
        self.durable_seq = max(self.durable_seq, seq)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.durable_seq:
            future = waiters.popleft()[2]
            if not future.done():
                future.set_result(None)

    def expire(self, now: float) -> int:
        """Fail the waiters whose deadline passed; how many."""
        return self._fail(lambda _seq, deadline: deadline <= now)

    def fail_through(self, seq: int) -> int:
        """Fail the waiters up to ``seq``, whose events the log never kept (a round given
        up at shutdown): a later round's ``advance`` must not release them; how many."""
        return self._fail(lambda waiting, _deadline: waiting <= seq)

    def _fail(self, due: Callable[[int, float], bool]) -> int:
        # Waiters are in seq order and share one timeout, so in deadline order too.
        waiters, failed = self._waiters, 0
        while waiters and due(waiters[0][0], waiters[0][1]):
            future = waiters.popleft()[2]
            if not future.done():
                future.set_exception(TimeoutError())  # the handler withholds the response
                failed += 1
        return failed

    async def run_watchdog(self, every_s: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every_s)
            self.expire(loop.time())
