"""``Pipeline``: the event path after the request path, read top to bottom.

    EventQueue (bounded, in memory)
        │  LogWriter: encode as CloudEvents, append, fsync        (writer thread)
        │     events the stages below still complete are written *ahead*: their
        │     metadata at once (sync responses wait for this fsync only) …
        ├──► Handoff (at most rounds.ROOM events with the stages)
        │      DetectionStage: features, monitor-mode detectors   (worker process)
        │         (unless detectors are off); alerts follow their batch as notices
        │    Handoff
        │      PrivacyStage: mask what the profile records         (worker process)
        │         (only when a privacy profile records anything)
        ◄──┘ … and appended again, completed, as *final* records (pipeline/ahead.py)
        ▼
    EventLog (WriteAheadLog on disk, or MemoryLog)
        │  Delivery: read, sink.write, ack → trim                 (delivery thread)
        ▼     sends an event's final record, not its ahead one
    Sink (Kafka, or the JSON-lines file)

Tasks on the loop drive the stages; every blocking call runs in a stage's own thread.
Stop order: the queue closes and drains into the log, the stages drain back into it
(fsynced), then delivery gets what is left of ``drain_s``; anything undelivered stays in
the on-disk log for the next start (with ``durability: memory`` it is lost, and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from sidecar.durability.base import EventLog
from sidecar.events.queue import EventQueue
from sidecar.logs import get_logger
from sidecar.pipeline.ahead import Ledger
from sidecar.pipeline.delivery import Delivery
from sidecar.pipeline.detection import DetectionStage
from sidecar.pipeline.handoff import Handoff
from sidecar.pipeline.privacy import PrivacyStage
from sidecar.pipeline.rounds import BATCH_MAX as WRITER_BATCH_MAX
from sidecar.pipeline.rounds import ROOM, Completion
from sidecar.pipeline.waiters import Durability
from sidecar.pipeline.writer import LogWriter
from sidecar.sinks.base import Sink
from sidecar.telemetry import Metrics
from sidecar.workers.child import Child

if TYPE_CHECKING:
    from detectors.config import DetectorsConfig

log = get_logger("pipeline")


class Pipeline:
    def __init__(
        self,
        queue: EventQueue,
        event_log: EventLog,
        sink: Sink,
        metrics: Metrics,
        mode: str = "sync",
        interval: float = 0.05,
        durability_timeout: float = 5.0,
        masking: Child | None = None,
        detection: tuple[Child, DetectorsConfig, bytes] | None = None,
    ) -> None:
        self.queue = queue
        self.log = event_log
        self.sink = sink
        self.mode = mode
        self.disk_ok = True
        self._metrics = metrics
        ledger = Ledger(event_log.last_seq)
        self.delivery = Delivery(event_log, sink, metrics, ledger)
        self.privacy: PrivacyStage | None = None
        self.detection: DetectionStage | None = None
        to_stages = source = Handoff(ROOM)
        if detection is not None:
            handoff = Handoff(2 * WRITER_BATCH_MAX)
            child, config, hash_key = detection
            self.detection = DetectionStage(source, handoff, child, metrics, config, hash_key)
            source = handoff
        if masking is not None:
            handoff = Handoff(2 * WRITER_BATCH_MAX)
            self.privacy = PrivacyStage(
                source, handoff, masking,
                on_failure=lambda stage, n: metrics.privacy_failures.labels(stage).inc(n))
            source = handoff
        self.writer = LogWriter(
            queue, event_log, mode, interval,
            on_appended=self.delivery.notify, on_disk_error=self._disk_error,
            on_drop=lambda reason, n: metrics.events_dropped.labels(reason).inc(n),
            on_notices_dropped=lambda reason, n: metrics.alerts_dropped.labels(reason).inc(n),
            durability_timeout=durability_timeout,
            completion=None if source is to_stages else Completion(
                to_stages, source, ledger,
                settle=self.privacy.settle if self.privacy is not None else None),
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        metrics.bind_pipeline(queue_depth=lambda: len(queue), log_stats=event_log.stats,
                              lag=self.delivery.lag_seconds)

    def _disk_error(self, failing: bool) -> None:
        self.disk_ok = not failing
        if failing:
            self._metrics.log_write_errors.inc()

    @property
    def durability(self) -> Durability:
        return self.writer.durability

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.detection is not None:
            self._tasks["detection"] = loop.create_task(self.detection.run(), name="detection")
        if self.privacy is not None:
            self._tasks["privacy"] = loop.create_task(self.privacy.run(), name="privacy")
        self._tasks["writer"] = loop.create_task(self.writer.run(), name="log-writer")
        self._tasks["delivery"] = loop.create_task(self.delivery.run(), name="delivery")
        if self.mode == "batch" or (self.mode == "sync" and self.writer.completion):
            self._tasks["sync"] = loop.create_task(
                self.writer.run_periodic_sync(), name="periodic-fsync")
        if self.mode == "sync":
            self._tasks["watchdog"] = loop.create_task(
                self.durability.run_watchdog(), name="durability-watchdog")

    async def stop(self, drain_s: float) -> bool:
        """Drain queue → log → sink within ``drain_s``; True if everything was delivered."""
        deadline = time.monotonic() + drain_s
        self.queue.close()
        self.writer.give_up_at = deadline  # a full log under `block` must not hang shutdown
        # The queue is bounded, the worker calls and the disk bounded in time: these finish.
        # The writer closes the stages' input once the queue is drained; they drain back.
        for name in ("writer", "detection", "privacy"):
            task = self._tasks.get(name)
            if task is not None:
                await task
        for name in ("sync", "watchdog"):
            task = self._tasks.get(name)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.writer.shutdown()
        for stage in (self.detection, self.privacy):
            if stage is not None:
                await asyncio.get_running_loop().run_in_executor(None, stage.shutdown)
        delivery = self._tasks.get("delivery")
        drained = await self.delivery.stop(delivery, max(0.0, deadline - time.monotonic()))
        stats = self.log.stats()
        if stats.events_pending and self.mode == "memory":
            self._metrics.events_dropped.labels("shutdown").inc(stats.events_pending)
        self.log.close()
        if stats.records_pending:
            log.warning("events not delivered at shutdown", extra={"fields": {
                "pending": stats.events_pending, "records": stats.records_pending,
                "kept_in_log": self.mode != "memory"}})
        return drained
