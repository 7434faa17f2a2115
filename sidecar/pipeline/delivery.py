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
LINGER_S = 0.005
LINGER_BELOW = READ_MAX_RECORDS // 4
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
        self._pending: list[Record] | None = None  # a batch the sink has not taken yet
        self._delivered_total = metrics.events_delivered.labels(sink.name)

    def notify(self) -> None:
        """New records are in the log (called on the loop by the writer)."""
        self._wakeup.set()

    def _step(self) -> int:
        """Delivery thread: read a batch (unless one is kept from a failed try), write it,
        ack it. One hand-off per batch; raises ``SinkError`` keeping the batch."""
        if self._pending is None:
            records = self.log.read(READ_MAX_RECORDS, READ_MAX_BYTES)
            if not records:
                return 0
            self._pending = records
        self.sink.write(self._pending)
        self.log.ack(self._pending[-1].seq)
        delivered, self._pending = len(self._pending), None
        # Counted here, with the ack: a write that completes after shutdown gave up waiting
        # for it still counts (and is not delivered again).
        self.delivered += delivered
        self._delivered_total.inc(delivered)
        return delivered

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = self._metrics.delivery_failures.labels(self.sink.name)
        retried = self._metrics.events_retried.labels(self.sink.name)
        delay, attempt = RETRY_INITIAL_S, 0
        while True:
            self._wakeup.clear()
            try:
                delivered = await loop.run_in_executor(self._executor, self._step)
            except SinkError as exc:
                attempt += 1
                batch = len(self._pending or ())
                failures.inc(batch)
                log.warning("sink write failed; batch kept for retry", extra={"fields": {
                    "sink": self.sink.name, "reason": str(exc), "batch": batch,
                    "attempt": attempt, "retry_in_s": delay}})
                if self._stopping and attempt >= 3:
                    raise SinkError("sink failing at shutdown; events stay in the log") from exc
                await asyncio.sleep(delay)
                retried.inc(batch)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if attempt:
                log.info("sink recovered", extra={"fields": {"sink": self.sink.name,
                                                             "attempts": attempt + 1}})
                delay, attempt = RETRY_INITIAL_S, 0
            if delivered == 0:
                if self._stopping:
                    return
                await self._wakeup.wait()
                continue
            if delivered < LINGER_BELOW and not self._stopping:
                # Let a batch form: each batch costs two thread hand-offs and a sink round
                # trip, which at one event per batch cost more CPU than the proxying.
                await asyncio.sleep(LINGER_S)

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
