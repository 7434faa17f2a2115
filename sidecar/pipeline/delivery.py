"""Stage 2 of the pipeline: durable log → sink, trimmed only after the sink acknowledged.

Reads and sink writes run in the delivery thread (kafka-python's ``send()`` may block for
``max_block_ms``; file writes block too), never on the loop. A failed batch is kept and
retried with capped exponential backoff, so a broker that is slow, down or absent only
makes the log grow; when it returns the log drains in order. Delivery is at-least-once:
a batch that failed part-way is sent again whole, and consumers de-duplicate by the
CloudEvents ``id`` (the inference id).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

from sidecar.durability.base import EventLog
from sidecar.events.record import Record
from sidecar.logs import get_logger
from sidecar.sinks.base import Sink, SinkError
from sidecar.telemetry import Metrics

log = get_logger("delivery")

READ_MAX_RECORDS = 500
READ_MAX_BYTES = 1024**2
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 2.0


class Delivery:
    def __init__(self, event_log: EventLog, sink: Sink, metrics: Metrics) -> None:
        self.log = event_log
        self.sink = sink
        self.delivered = 0
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-sink")
        self._wakeup = asyncio.Event()
        self._stopping = False

    def notify(self) -> None:
        """New records are in the log (called on the loop by the writer)."""
        self._wakeup.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delivered = self._metrics.events_delivered.labels(self.sink.name)
        while True:
            self._wakeup.clear()
            records = await loop.run_in_executor(
                self._executor, self.log.read, READ_MAX_RECORDS, READ_MAX_BYTES
            )
            if not records:
                if self._stopping:
                    return
                await self._wakeup.wait()
                continue
            await self._deliver(loop, records)
            await loop.run_in_executor(self._executor, self.log.ack, records[-1].seq)
            self.delivered += len(records)
            delivered.inc(len(records))

    async def _deliver(self, loop: asyncio.AbstractEventLoop, records: list[Record]) -> None:
        delay = RETRY_INITIAL_S
        attempt = 0
        while True:
            try:
                await loop.run_in_executor(self._executor, self.sink.write, records)
                if attempt:
                    log.info("sink recovered", extra={"fields": {"sink": self.sink.name,
                                                                 "attempts": attempt + 1}})
                return
            except SinkError as exc:
                attempt += 1
                self._metrics.delivery_failures.labels(self.sink.name).inc(len(records))
                log.warning("sink write failed; batch kept for retry", extra={"fields": {
                    "sink": self.sink.name, "reason": str(exc), "batch": len(records),
                    "attempt": attempt, "retry_in_s": delay}})
            if self._stopping and attempt >= 3:
                raise SinkError("sink still failing at shutdown; events stay in the log")
            await asyncio.sleep(delay)
            self._metrics.events_retried.labels(self.sink.name).inc(len(records))
            delay = min(delay * 2, RETRY_MAX_S)

    def lag_seconds(self) -> float:
        oldest = self.log.stats().oldest_pending_ts
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    async def stop(self, task: asyncio.Task[None] | None, drain_s: float) -> bool:
        """Deliver what the log holds, for at most ``drain_s``; True if it all went out.

        Closes the sink in every case, also when delivery never started.
        """
        self._stopping = True
        self._wakeup.set()
        drained = task is None and self.log.stats().records_pending == 0
        try:
            if task is not None:
                await asyncio.wait_for(asyncio.shield(task), drain_s)
                drained = True
        except (TimeoutError, SinkError):
            drained = False
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SinkError):
                await task
        await asyncio.get_running_loop().run_in_executor(self._executor, self.sink.close)
        self._executor.shutdown(wait=True)
        return drained
