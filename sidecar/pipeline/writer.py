"""Stage 1 of the pipeline: queue → CloudEvents records → durable log (→ fsync).

Encoding, appending and fsync run in the writer's own thread; the task on the loop only
moves batches and wakes whoever waits. Durability modes:

- ``sync``: every batch is fsynced before ``Durability.advance`` releases the responses
  waiting for it. Batches form while the previous fsync runs, so one fsync covers many
  events under load (group commit).
- ``batch``: fsync at most every ``interval``; a crash loses at most that window, which
  the log counts on restart (``lost_on_crash``).
- ``memory``: the log is in memory; nothing survives the process.

A full log under ``block`` (``LogFull``) or a failing disk keeps the batch and retries;
the queue in front absorbs the wait, and admission control refuses new requests.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sidecar.durability.base import EventLog, LogFull
from sidecar.events.cloudevents import to_record
from sidecar.logs import get_logger
from sidecar.pipeline.handoff import Batch, BatchSource

log = get_logger("writer")

BATCH_MAX = 1024
LINGER_S = 0.002  # batch and memory modes only: sync responses wait for their batch
RETRY_S = 0.005
DISK_RETRY_MAX_S = 1.0


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
        waiters, expired = self._waiters, 0
        while waiters and waiters[0][1] <= now:
            future = waiters.popleft()[2]
            if not future.done():
                future.set_exception(TimeoutError())
                expired += 1
        return expired

    async def run_watchdog(self, every_s: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every_s)
            self.expire(loop.time())


class LogWriter:
    def __init__(
        self,
        queue: BatchSource,
        event_log: EventLog,
        mode: str,
        interval: float,
        on_appended: Callable[[], None],
        on_disk_error: Callable[[bool], None],
        on_drop: Callable[[str, int], None],
        durability_timeout: float = 5.0,
    ) -> None:
        self.queue = queue
        self.log = event_log
        self.mode = mode
        self.interval = interval
        self.durability = Durability(durability_timeout)
        self._on_appended = on_appended
        self._on_disk_error = on_disk_error
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-wal")
        self._last_sync = time.monotonic()
        self._dirty = False
        self._appended = False  # whether the batch in hand is in the log already
        self._on_drop = on_drop
        self.give_up_at: float | None = None  # monotonic deadline, set at shutdown

    def _append(self, batch: Batch) -> None:
        before = self.log.stats()
        self.log.append([to_record(event, seq) for seq, event in batch])
        self._dirty = True
        after = self.log.stats()
        if after.dropped_oldest != before.dropped_oldest:
            self._on_drop("log_full_oldest", after.dropped_oldest - before.dropped_oldest)
        if after.dropped_newest != before.dropped_newest:
            self._on_drop("log_full_newest", after.dropped_newest - before.dropped_newest)

    def _sync_due(self) -> bool:
        return self.mode == "sync" or time.monotonic() - self._last_sync >= self.interval

    def _sync(self) -> None:
        if self._dirty:
            self.log.sync()
            self._dirty = False
        self._last_sync = time.monotonic()

    def _persist(self, batch: Batch) -> None:
        """Writer thread: append (once), then fsync if due. One hand-off per batch; after a
        failed fsync the retry must not append the batch again."""
        if not self._appended:
            self._append(batch)
            self._appended = True
        if self._sync_due():
            self._sync()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.queue.get_batch(BATCH_MAX)
            if not batch:
                await self._retry(loop, self._sync, 0)  # the last fsync: best effort
                return
            if self.mode != "sync" and len(batch) < BATCH_MAX and not self.queue.closed:
                # Nothing waits on this batch: let it grow, one hand-off for many events.
                await asyncio.sleep(LINGER_S)
                batch.extend(self.queue.take(BATCH_MAX - len(batch)))
            await self._write(loop, batch)

    async def _write(
        self, loop: asyncio.AbstractEventLoop, batch: Batch
    ) -> None:
        self._appended = False
        gave_up = await self._retry(loop, functools.partial(self._persist, batch), len(batch))
        if self._appended:
            self._on_appended()
        if gave_up:
            if not self._appended:
                self._on_drop(gave_up, len(batch))
            return
        if self.mode in ("sync", "memory"):
            self.durability.advance(batch[-1][0])

    async def _retry(
        self, loop: asyncio.AbstractEventLoop, step: Callable[[], None], events: int
    ) -> str | None:
        """Run ``step`` in the writer thread until it succeeds (None), or until shutdown
        gives up: then the drop reason."""
        delay = RETRY_S
        failing = False
        while True:
            try:
                await loop.run_in_executor(self._executor, step)
                break
            except LogFull:
                drop, pause = "log_full_at_shutdown", RETRY_S  # block: wait for a trim
            except OSError as exc:
                drop, pause, delay = "disk_error_at_shutdown", delay, min(delay * 2,
                                                                         DISK_RETRY_MAX_S)
                failing = True
                self._on_disk_error(True)
                log.error("event log write failed; events kept for retry", extra={"fields": {
                    "reason": exc.strerror or type(exc).__name__, "events": events}})
            if self.give_up_at is not None and time.monotonic() > self.give_up_at:
                log.error("event log unavailable at shutdown; giving up",
                          extra={"fields": {"reason": drop, "events": events}})
                return drop
            await asyncio.sleep(pause)
        if failing:
            self._on_disk_error(False)
        return None

    async def run_periodic_sync(self) -> None:
        """In batch mode, fsync at least every ``interval`` even when traffic stops."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            if self._dirty and time.monotonic() - self._last_sync >= self.interval:
                try:
                    await loop.run_in_executor(self._executor, self._sync)
                except OSError as exc:
                    log.error("event log fsync failed", extra={"fields": {
                        "reason": exc.strerror or type(exc).__name__}})

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
