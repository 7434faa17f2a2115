"""The detection stage: EventQueue → detectors (worker process) → ``Handoff`` → privacy.

Events carry an ``Observed`` (``sidecar/detection/observed.py``: raw references to the
request and buffered response bodies, and the few request headers the detectors read).
Batch by batch and in order, the stage sends them to the detection worker
(``sidecar/detection/service.py``), which computes the prompt features and runs the
monitor-mode detectors; the event gets ``features`` and ``detections`` back, and every
alert (these, and the enforce-mode gate's from the request path) becomes an
``ai.detector.alert`` notice, put on the EventQueue after its batch: it reaches the log
after the inference that raised it, with its own sequence number.

It runs before the privacy stage so that the profiles' ``always_capture: [alerts]``
rule can keep the payload of an inference a detector flagged.

Fail open, and say so: detection watches the model, it does not gate the inference
(enforce mode does, on the request path). If the worker is down, hangs or refuses, the
batch goes on without ``features``/``detections`` (null: not run), and
``detection_failures_total`` counts it.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from detectors.config import DetectorsConfig
from sidecar.detection.observed import Observed
from sidecar.detection.service import DetectionService, Item, Result
from sidecar.events.model import InferenceEvent
from sidecar.events.notices import NoticeEvent, alert_events
from sidecar.events.queue import EventQueue
from sidecar.logs import get_logger
from sidecar.pipeline.handoff import Batch, Handoff
from sidecar.telemetry import Metrics
from sidecar.workers.child import Child, WorkerError

log = get_logger("detection")

BATCH_MAX = 256
# Per call, plus PER_EVENT_S per event in it (a batch of 256 normally takes ~30 ms). Short:
# with durability: sync, responses wait for their batch to pass this stage, so a hung
# worker must cost a second of detection, not every response its durability_timeout.
CALL_TIMEOUT_S = 1.0
PER_EVENT_S = 0.004
RELOAD_TIMEOUT_S = 10.0
ORIGIN_FIELDS = ("inference_id", "timestamp", "model_name", "model_version", "policy_version",
                 "evidence_bundle_id", "route")

Work = list[tuple[InferenceEvent, Observed]]


def detection_worker(config: DetectorsConfig, log_level: str) -> Child:
    return Child("detection", functools.partial(DetectionService, config), log_level)


class DetectionStage:
    def __init__(self, source: EventQueue, out: Handoff, child: Child, metrics: Metrics,
                 config: DetectorsConfig) -> None:
        self.source = source
        self.out = out
        self._child = child
        self._metrics = metrics
        self.config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-detect")
        self.problem: str | None = "detection worker starting"  # None when it works

    def _warm(self) -> None:
        try:
            self._child.start()
            self.problem = None
        except WorkerError as exc:
            self.problem = f"detection worker failing ({exc}); events go without detection"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.run_in_executor(self._executor, self._warm)
        try:
            while True:
                batch = await self.source.get_batch(BATCH_MAX)
                if not batch:
                    return
                notices: list[NoticeEvent] = []
                work: Work = []
                try:
                    work = self._prepare(batch, notices)
                    if work:
                        results = await loop.run_in_executor(self._executor, self._detect, work)
                        if results is not None:
                            self._apply(work, results, notices)
                except Exception:  # never hold the batch back for detection
                    log.error("detection stage failed; batch goes without detection",
                              exc_info=True)
                    self._metrics.detection_failures.labels("stage_error").inc(len(work))
                await self.out.put_batch(batch)
                for notice in notices:
                    self.source.put(notice)
        finally:
            self.out.close()

    def _prepare(self, batch: Batch, notices: list[NoticeEvent]) -> Work:
        """Take the raw references off every inference; the gate's alerts become notices."""
        work: Work = []
        for _, event in batch:
            observed: Observed | None = getattr(event, "observed", None)
            if observed is None or not isinstance(event, InferenceEvent):
                continue
            del event.observed
            if observed.enforced:
                notices.extend(self._notices([a.to_dict() for a in observed.enforced],
                                             _origin(event)))
            work.append((event, observed))
        return work

    def _detect(self, work: Work) -> tuple[list[Result], dict[str, int]] | None:
        """Stage thread: one call to the worker for the batch."""
        items: list[Item] = [
            (orjson.dumps(event), o.request_body, o.request_type, o.response_body, o.headers)
            for event, o in work]
        try:
            reply: tuple[list[Result], dict[str, int]] = self._child.call(
                ("batch", items), CALL_TIMEOUT_S + PER_EVENT_S * len(items))
        except WorkerError as exc:
            self.problem = f"detection worker failing ({exc}); events go without detection"
            log.error("detection failed; events go on without it", extra={"fields": {
                "reason": str(exc), "events": len(items)}})
            self._metrics.detection_failures.labels("worker_unavailable").inc(len(items))
            return None
        self.problem = None
        return reply

    def _apply(self, work: Work, reply: tuple[list[Result], dict[str, int]],
               notices: list[NoticeEvent]) -> None:
        results, errors = reply
        for name, count in errors.items():
            self._metrics.detector_errors.labels(name).inc(count)
        for (event, _), (features, alerts) in zip(work, results, strict=True):
            event.features = features
            detections = list(event.detections or ())
            if alerts:
                raised = self._notices(alerts, _origin(event))
                notices.extend(raised)
                detections.extend({**_summary_fields(alert), "alert_id": notice.id}
                                  for alert, notice in zip(alerts, raised, strict=True))
            event.detections = detections

    def _notices(self, alerts: list[dict[str, Any]], origin: dict[str, Any]) -> list[NoticeEvent]:
        for alert in alerts:
            self._metrics.alerts.labels(alert["detector"], alert["severity"]).inc()
            if alert.get("kind") == "drift":
                self._metrics.drift.alerted(alert["detector"])
        return alert_events(alerts, origin)

    async def reload(self, config: DetectorsConfig) -> None:
        """Swap the worker's detectors (unchanged ones keep their state); raises
        ``WorkerError`` if the worker could not take it (it then restarts with it)."""
        self._child.replace_factory(functools.partial(DetectionService, config))
        self.config = config
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._child.call, ("reload", config), RELOAD_TIMEOUT_S)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        self._child.close()


def _origin(event: InferenceEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in ORIGIN_FIELDS} | {"client_id": event.client_id}


def _summary_fields(alert: dict[str, Any]) -> dict[str, Any]:
    keys = ("detector", "detector_type", "kind", "severity", "mode")
    return {key: alert.get(key) for key in keys}
