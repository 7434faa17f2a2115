"""``Pipeline``: takes batches off the ``EventQueue`` and hands them to the sink.

The consumer is a task on the event loop, but the sink's blocking ``write`` runs in a
single worker thread, so no file or network I/O ever runs on the loop. A failed write
is retried with backoff (capped), keeping the batch; meanwhile the bounded queue keeps
absorbing events and counts what it has to drop. ``stop()`` drains the queue first.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from sidecar.events.model import InferenceEvent
from sidecar.events.queue import EventQueue
from sidecar.logs import get_logger
from sidecar.sinks.base import Sink, SinkError
from sidecar.telemetry import Metrics

log = get_logger("pipeline")

BATCH_MAX = 512
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 2.0


class Pipeline:
    def __init__(self, queue: EventQueue, sink: Sink, metrics: Metrics) -> None:
        self.queue = queue
        self.sink = sink
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-sink")
        self._task: asyncio.Task[None] | None = None
        self.emitted = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-pipeline")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        emitted = self._metrics.events_emitted.labels(self.sink.name)
        while True:
            batch = await self.queue.get_batch(BATCH_MAX)
            self._metrics.events_queued.set(len(self.queue))
            if not batch:
                return
            await self._deliver(loop, batch)
            self.emitted += len(batch)
            emitted.inc(len(batch))

    async def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[InferenceEvent]) -> None:
        delay = RETRY_INITIAL_S
        while True:
            try:
                await loop.run_in_executor(self._executor, self.sink.write, batch)
                return
            except SinkError as exc:
                self._metrics.sink_errors.labels(self.sink.name).inc()
                log.error("sink write failed; batch kept for retry",
                          extra={"fields": {"sink": self.sink.name, "reason": str(exc),
                                            "batch": len(batch), "retry_in_s": delay}})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def stop(self, drain_s: float | None = None) -> bool:
        """Close the queue and wait until it is drained; False if ``drain_s`` ran out."""
        self.queue.close()
        drained = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), drain_s)
            except TimeoutError:
                drained = False
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await asyncio.get_running_loop().run_in_executor(self._executor, self.sink.close)
        self._executor.shutdown(wait=True)
        return drained
