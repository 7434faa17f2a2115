"""Delivery: durable log → sink, trimmed only after the sink acknowledged.

An event written ahead (``sidecar/pipeline/ahead.py``) is sent once, from its final
record; its ahead record is held (in memory, and the log not trimmed past it) until the
final is read, or sent alone, marked, when the ``Ledger`` shows the final will not come.

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
from sidecar.pipeline import ahead
from sidecar.pipeline.ahead import Ledger, Mark
from sidecar.sinks.base import Sink, SinkError
from sidecar.telemetry import Metrics

log = get_logger("delivery")

READ_MAX_RECORDS = 500
READ_MAX_BYTES = 1024**2
LINGER_S = 0.025  # after a small round (see run); events reach the sink this much later
LINGER_BELOW = READ_MAX_RECORDS // 4
RETRY_INITIAL_S = 0.05
RETRY_MAX_S = 2.0


class Delivery:
    def __init__(self, event_log: EventLog, sink: Sink, metrics: Metrics,
                 ledger: Ledger | None = None) -> None:
        self.log = event_log
        self.sink = sink
        self.ledger = ledger if ledger is not None else Ledger(event_log.last_seq)
        self.delivered = 0
        self.failure: str | None = None  # why the last attempt failed, until one succeeds
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-sink")
        self._wakeup = asyncio.Event()
        self._stopping = False
        # A batch the sink has not taken yet, and the seq to ack once it has.
        self._pending: tuple[list[Record], int] | None = None
        self._waiting: dict[int, Record] = {}  # ahead records read, in seq order, no final yet
        self._read_through = 0
        self._mark: Mark | None = None
        self._delivered_total = metrics.events_delivered.labels(sink.name)
        # Records a read found damaged (the disk changed after recovery) are skipped by the
        # log and gone with the next ack: counted as dropped here; those found at start-up
        # the server counted.
        self._corrupt_seen = event_log.corrupt_skipped

    def notify(self) -> None:
        """New records are in the log (called on the loop by the writer)."""
        self._wakeup.set()

    def _sort(self, records: list[Record]) -> list[Record]:
        """What of ``records`` goes to the sink: all but ahead records, which wait."""
        out: list[Record] = []
        waiting = self._waiting
        for record in records:
            is_ahead, completes = ahead.part(record)
            if is_ahead:
                waiting[record.seq] = record
            elif completes is not None:
                waiting.pop(completes, None)
                out.append(ahead.public(record))
            else:
                out.append(record)
        return out

    def _orphans(self, caught_up: bool) -> list[Record]:
        """Ahead records whose final will not come: once delivery has read through what
        the writer had appended when ``_mark`` was taken, those below its bound."""
        mark = self._mark
        if mark is None or not (caught_up or self._read_through >= mark.appended):
            return []
        self._mark = None
        out: list[Record] = []
        for seq in [s for s in self._waiting if s < mark.bound]:  # in seq order
            reason = (ahead.LOST_IN_CRASH if seq <= self.ledger.recovered_through
                      else ahead.LOG_FULL)
            out.append(ahead.orphan(self._waiting.pop(seq), reason))
            self._metrics.events_incomplete.labels(reason).inc()
        return out

    def _step(self) -> int:
        """Delivery thread: read a batch (unless one is kept from a failed try), write it,
        ack it. One hand-off per batch; returns how many records it took from the log
        (0: nothing to do); raises ``SinkError`` keeping the batch."""
        taken = 0
        if self._pending is None:
            if self._mark is None:
                self._mark = self.ledger.mark  # before the read: see _orphans
            records = self.log.read(READ_MAX_RECORDS, READ_MAX_BYTES)
            corrupt = self.log.corrupt_skipped
            if corrupt != self._corrupt_seen:
                self._metrics.events_dropped.labels("corrupt").inc(corrupt - self._corrupt_seen)
                self._corrupt_seen = corrupt
            if records:
                self._read_through = max(self._read_through, records[-1].seq)
            out = self._sort(records)
            orphans = self._orphans(caught_up=not records)
            out += orphans
            taken = len(records) + len(orphans)
            if not taken:
                return 0
            upto = self._read_through
            if self._waiting:  # never trim an ahead record still waiting for its final
                upto = min(upto, next(iter(self._waiting)) - 1)
            self._pending = (out, upto)
        out, upto = self._pending
        if out:
            self.sink.write(out)
        self.log.ack(upto)
        self._pending = None
        # Counted here, with the ack: a write that completes after shutdown gave up waiting
        # for it still counts (and is not delivered again).
        self.delivered += len(out)
        self._delivered_total.inc(len(out))
        return max(taken, 1)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = self._metrics.delivery_failures.labels(self.sink.name)
        retried = self._metrics.events_retried.labels(self.sink.name)
        log_errors = self._metrics.log_read_errors
        delay, attempt = RETRY_INITIAL_S, 0
        while True:
            self._wakeup.clear()
            try:
                delivered = await loop.run_in_executor(self._executor, self._step)
            except Exception as exc:
                # Any failure, of the sink or of the log (EIO or ENOSPC reading a segment
                # or storing the cursor): the batch in hand is kept and tried again. Ending
                # here would stop delivery for good while the proxy keeps serving.
                attempt += 1
                batch = len(self._pending[0]) if self._pending else 0
                if isinstance(exc, SinkError):
                    failures.inc(batch)
                    message, reason = "sink write failed; batch kept for retry", str(exc)
                elif isinstance(exc, OSError):
                    log_errors.inc()
                    message = "event log read failed; retrying"
                    reason = exc.strerror or type(exc).__name__
                else:  # a bug: visible, counted, and retried rather than ending delivery
                    failures.inc(batch)
                    message, reason = "delivery step failed unexpectedly; retrying", \
                        type(exc).__name__
                self.failure = reason
                log.warning(message, extra={"fields": {
                    "sink": self.sink.name, "reason": reason, "batch": batch,
                    "attempt": attempt, "retry_in_s": delay}})
                if self._stopping and attempt >= 3:
                    raise SinkError("delivery failing at shutdown; events stay in the log") \
                        from exc
                await asyncio.sleep(delay)
                retried.inc(batch)  # a batch kept after a failed ack goes to the sink again
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self.failure = None
            if attempt:
                log.info("delivery recovered", extra={"fields": {"sink": self.sink.name,
                                                                 "attempts": attempt + 1}})
                delay, attempt = RETRY_INITIAL_S, 0
            if delivered == 0:
                if self._stopping:
                    return
                await self._wakeup.wait()
                continue
            if delivered < LINGER_BELOW and not self._stopping:
                # Let a batch form: each batch costs two thread hand-offs (their context
                # switches and GIL hand-overs) and a sink round trip (for Kafka, one to the
                # producer's process too), which for a few events cost more CPU than the
                # proxying. Nothing waits on delivery, so 25 ms late costs nothing.
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
