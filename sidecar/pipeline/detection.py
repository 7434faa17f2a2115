"""The detection stage: log writer → detectors (worker process) → ``Handoff`` → privacy.

Events carry an ``Observed`` (``sidecar/detection/observed.py``: raw references to the
request and buffered response bodies, and the few request headers the detectors read).
Batch by batch and in order, the stage sends them to the detection worker
(``sidecar/detection/service.py``), which computes the prompt features and runs the
monitor-mode detectors; the event gets ``features`` and ``detections`` back, and every
alert (these, and the enforce-mode gate's from the request path) becomes an
``ai.detector.alert`` notice that travels at the end of its batch back to the log writer:
it is logged after the final record of the inference that raised it.

It runs before the privacy stage so that the profiles' ``always_capture: [alerts]``
rule can keep the payload of an inference a detector flagged.

Fail open, and say so: detection watches the model, it does not gate the inference
(enforce mode does, on the request path). If the worker is down, hangs or refuses, the
batch goes on without ``features``/``detections`` (null: not run), and
``detection_failures_total`` counts it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import orjson

from detectors.config import DetectorsConfig
from sidecar.detection.extract import MAX_PARSE
from sidecar.detection.observed import Observed
from sidecar.detection.service import DetectionService, Item, Reply, Result
from sidecar.events.model import InferenceEvent
from sidecar.events.notices import NoticeEvent, alert_events
from sidecar.logs import get_logger
from sidecar.pipeline.handoff import Batch, BatchSource, Handoff
from sidecar.pipeline.stage import WorkerStage
from sidecar.telemetry import Metrics
from sidecar.workers.child import Child, WorkerError, WorkerRefused

log = get_logger("detection")

Counts = dict[str, int]  # by detector name

# Per call, plus PER_EVENT_S per event in it (a batch of 256 normally takes ~30 ms). Short:
# responses no longer wait for this stage (their events are written ahead), but events
# with it hold ROOM, so a hung worker must cost a second of detection, not a full queue.
CALL_TIMEOUT_S = 1.0
PER_EVENT_S = 0.004
# Large bodies: the worker parses up to MAX_PARSE bytes of each (orjson: about 14 ms a MiB
# of short strings), so a call carries at most CALL_BYTES of bodies and is given time for
# them; one call of a batch of 10 MiB bodies would be over the pipe's frame limit.
CALL_BYTES = 16 * 1024**2
PER_MIB_S = 0.03
RELOAD_TIMEOUT_S = 10.0
ORIGIN_FIELDS = ("inference_id", "timestamp", "model_name", "model_version", "policy_version",
                 "evidence_bundle_id", "route")

Work = list[tuple[InferenceEvent, Observed]]


def _cut(body: bytes | None) -> bytes | None:
    """What the worker reads of a body: past ``MAX_PARSE`` bytes it reads the first and
    the last ``MAX_PARSE // 2`` as text (``extract._text``), so only those cross the pipe,
    in a body still over ``MAX_PARSE``.

    >>> cut = _cut(b"h" * MAX_PARSE + b"m" * 10 + b"t" * MAX_PARSE)
    >>> len(cut) == MAX_PARSE + 1 and cut.startswith(b"h") and cut.endswith(b"t")
    True
    """
    if body is None or len(body) <= MAX_PARSE + 1:
        return body
    half = MAX_PARSE // 2
    return body[:half] + body[-(MAX_PARSE + 1 - half):]


def _calls(items: list[Item]) -> Iterator[tuple[list[Item], int]]:
    """``items`` in runs of at most ``CALL_BYTES`` of bodies (at least one item each)."""
    part: list[Item] = []
    size = 0
    for item in items:
        n = len(item[1] or b"") + len(item[3] or b"")
        if part and size + n > CALL_BYTES:
            yield part, size
            part, size = [], 0
        part.append(item)
        size += n
    if part:
        yield part, size


def detection_worker(config: DetectorsConfig, log_level: str, hash_key: bytes = b"") -> Child:
    """The worker; ``hash_key`` keys the prompts' SimHashes (the privacy hash key)."""
    return Child("detection", functools.partial(DetectionService, config, hash_key), log_level)


class DetectionStage(WorkerStage):
    what = "detection"
    without = "without detection"

    def __init__(self, source: BatchSource, out: Handoff, child: Child, metrics: Metrics,
                 config: DetectorsConfig, hash_key: bytes = b"") -> None:
        super().__init__(source, out, child)
        self._hash_key = hash_key  # the child's: a worker restarted by a reload keeps it
        self._metrics = metrics
        self.config = config
        self._pending: list[NoticeEvent] = []  # this batch's notices
        self._work: Work = []

    async def process(self, batch: Batch) -> None:
        self._pending, self._work = [], []
        self._work = work = self._prepare(batch, self._pending)
        if work:
            results = await self.in_thread(self._detect, work)
            if results is not None:
                self._apply(work, results, self._pending)
        self._attach(batch)
        self._work = []  # the bodies go now (and their share of the raw-body budget)

    def recover(self, batch: Batch) -> None:
        self._metrics.detection_failures.labels("stage_error").inc(len(self._work))
        self._attach(batch)
        self._work = []  # the bodies go now, as after a batch that went well

    def _attach(self, batch: Batch) -> None:
        """The batch's notices travel at its end (seq 0: the writer numbers them), so each
        is logged right after the final record of the inference that raised it."""
        batch.extend((0, notice) for notice in self._pending)
        self._pending = []

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

    def _detect(self, work: Work) -> tuple[list[Result | None], Counts, Counts] | None:
        """Stage thread: the batch in one call to the worker, or a few when its bodies
        are large; ``None`` for the events of a call that failed (and of the calls after
        it: the worker's state is gone)."""
        items: list[Item] = [
            (orjson.dumps(event), _cut(o.request_body), o.request_type,
             _cut(o.response_body), o.headers)
            for event, o in work]
        results: list[Result | None] = []
        errors: Counts = {}
        evictions: Counts = {}
        for part, size in _calls(items):
            try:
                reply: Reply = self._child.call(
                    ("batch", part),
                    CALL_TIMEOUT_S + PER_EVENT_S * len(part) + PER_MIB_S * size / 1024**2)
            except WorkerRefused as exc:  # this call only: the worker and its state are fine
                log.error("detection failed for a call; its events go on without it",
                          extra={"fields": {"reason": str(exc), "events": len(part)}})
                self._metrics.detection_failures.labels("worker_refused").inc(len(part))
                results += [None] * len(part)
                continue
            except WorkerError as exc:
                self.failing(exc)
                missed = len(items) - len(results)
                log.error("detection failed; events go on without it", extra={"fields": {
                    "reason": str(exc), "events": missed}})
                self._metrics.detection_failures.labels("worker_unavailable").inc(missed)
                results += [None] * missed
                break
            results += reply[0]
            for counts, more in ((errors, reply[1]), (evictions, reply[2])):
                for name, count in more.items():
                    counts[name] = counts.get(name, 0) + count
        else:
            self.problem = None
        return results, errors, evictions

    def _apply(self, work: Work, reply: tuple[list[Result | None], Counts, Counts],
               notices: list[NoticeEvent]) -> None:
        results, errors, evictions = reply
        for name, count in errors.items():
            self._metrics.detector_errors.labels(name).inc(count)
        for name, count in evictions.items():
            self._metrics.detector_evictions.labels(name).inc(count)
        for (event, observed), result in zip(work, results, strict=True):
            if result is None:
                continue
            features, alerts = result
            # without its body (over the raw-body budget) an event has no prompt features
            event.features = features if observed.request_body is not None else None
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
        self._child.replace_factory(
            functools.partial(DetectionService, config, self._hash_key))
        self.config = config
        try:
            await self.in_thread(self._child.call, ("reload", config), RELOAD_TIMEOUT_S)
        except WorkerRefused:  # it kept the old set: the next call starts one with the new
            await self.in_thread(self._child.close)
            raise


def _origin(event: InferenceEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in ORIGIN_FIELDS} | {"client_id": event.client_id}


def _summary_fields(alert: dict[str, Any]) -> dict[str, Any]:
    keys = ("detector", "detector_type", "kind", "severity", "mode")
    return {key: alert.get(key) for key in keys}
