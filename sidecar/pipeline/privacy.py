"""The privacy stage: detection (or the log writer) → mask (worker process) → ``Handoff``
→ the log writer, which appends the completed events as final records.

Events whose privacy profile records anything carry a ``Capture`` (raw references, see
``sidecar/privacy/context.py``). Here, batch by batch and in order, they are turned into
``Captured`` inputs (bodies only for events the sampling decision keeps), sent to the
masking worker (``sidecar/privacy/service.py``, in a child process: presidio costs far
too much CPU for the sidecar's GIL), and the masked ``privacy``/``payload``/``headers``
replace the raw capture. Nothing unmasked ever reaches the write-ahead log: the raw
capture is not a serialised field, and it is dropped here whatever happens.

Most events are not sampled and record only allow-listed headers, which repeat: their
masked result is remembered (``sidecar/privacy/memo.py``) and reused without a call.

Fail closed: if the worker is down, hangs or refuses, the batch's events go on without
payload or header values, with ``privacy.failure`` saying why, and
``privacy_failures_total`` counts them. The event itself is never held back or lost.

Its output is a ``Handoff`` (``sidecar/pipeline/handoff.py``) back to the log writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.errors import OUTCOME_REJECTED
from sidecar.events.model import InferenceEvent
from sidecar.logs import get_logger
from sidecar.pipeline.handoff import Batch, BatchSource, Handoff
from sidecar.pipeline.stage import WorkerStage
from sidecar.privacy.context import Capture, decision
from sidecar.privacy.masker import Captured
from sidecar.privacy.memo import HeaderMemo
from sidecar.privacy.sampling import Decision
from sidecar.privacy.sections import recorded_headers
from sidecar.privacy.service import Item
from sidecar.workers.child import Child, WorkerError

log = get_logger("privacy")

CALL_TIMEOUT_S = 10.0  # per call, plus PER_EVENT_S per event in it
PER_EVENT_S = 0.05

# events, the worker's items, memo keys, and the items' shares of the raw-body budget
# (held until the worker call is over: the items still reference the bodies)
Work = tuple[list[InferenceEvent], list[Item], list[bytes | None], list[Any]]


def _flags(event: InferenceEvent) -> frozenset[str]:
    """The always-capture rules this event triggers besides errors: a rejection by the
    sidecar, an alert of a detector (the detection stage ran before this one)."""
    flags = {"rejection"} if event.outcome == OUTCOME_REJECTED else set()
    if event.detections:
        flags.add("alert")
    return frozenset(flags)


def _decide(event: InferenceEvent, capture: Capture) -> Decision:
    return decision(capture.profile, event.inference_id, event.status, _flags(event))


def _captured(event: InferenceEvent, capture: Capture, chosen: Decision) -> Item:
    capture.finish_stream()
    keep = chosen.captured  # bodies and query only when the event keeps its payload
    return capture.profile.digest, Captured(
        inference_id=event.inference_id, status=event.status,
        flags=_flags(event),
        request_body=capture.request_body if keep else None,
        request_content_type=capture.request_type,
        response_body=capture.response_body if keep else None,
        response_content_type=capture.response_type,
        response_omitted=capture.response_omitted if keep else None,
        response_cut=capture.response_cut and keep,
        query=capture.query if keep else None,
        request_headers=capture.request_headers,
        response_headers=capture.response_headers,
    ), chosen


class PrivacyStage(WorkerStage):
    what = "masking"
    without = "without payload"

    def __init__(self, source: BatchSource, sink: Handoff, child: Child,
                 on_failure: Callable[[str, int], None]) -> None:
        super().__init__(source, sink, child)
        self._on_failure = on_failure
        self._memo = HeaderMemo()

    def settle(self, event: Any) -> None:
        """Before the log append (on the loop, as ``_prepare``): answer a header-only event
        the memo knows at once, so it is written once, whole, and skips the stage. Not
        while detection is pending (``observed``): an alert may yet make it captured."""
        capture = getattr(event, "capture", None)
        if capture is None or getattr(event, "observed", None) is not None or \
                not isinstance(event, InferenceEvent):
            return
        try:
            chosen = _decide(event, capture)
            if chosen.captured:
                return
            record = self._memo.get(self._key(capture, chosen))
        except Exception:  # the stage meets it again, and says so
            return
        if record is not None:
            del event.capture
            self._apply(event, record)

    def _key(self, capture: Capture, chosen: Decision) -> bytes:
        profile = capture.profile
        return self._memo.key(profile.digest, chosen.reason,
                              recorded_headers(profile, capture.request_headers),
                              recorded_headers(profile, capture.response_headers))

    async def process(self, batch: Batch) -> None:
        work = self._prepare(batch)  # on the loop: cheap, and no thread hop
        if work[0]:
            await self.in_thread(self._mask, work)

    def recover(self, batch: Batch) -> None:
        self._strip(batch)  # unmasked parts out

    def _prepare(self, batch: Batch) -> Work:
        """Take the raw capture off every event; answer header-only events the memo knows
        (most of them); return the rest, with the worker's inputs, for ``_mask``."""
        events: list[InferenceEvent] = []
        items: list[Item] = []
        keys: list[bytes | None] = []
        held: list[Any] = []
        memo = self._memo
        for _, event in batch:
            capture = getattr(event, "capture", None)
            if capture is None or not isinstance(event, InferenceEvent):
                continue
            del event.capture
            try:
                chosen = _decide(event, capture)
                if chosen.captured and capture.over_budget:  # its bodies were not kept
                    self._fail([event], "raw_budget", [chosen])
                    continue
                key = None
                if not chosen.captured:  # headers only: maybe answered before
                    key = self._key(capture, chosen)
                    record = memo.get(key)
                    if record is not None:
                        self._apply(event, record)
                        continue
                items.append(_captured(event, capture, chosen))
                held.append(capture.held)
                keys.append(key)
                events.append(event)
            except Exception:  # a bug of ours: this event goes without payload, not the rest
                log.error("capture unusable; event goes without payload", exc_info=True)
                self._fail([event], "capture_error")
        return events, items, keys, held

    def _mask(self, work: Work) -> None:
        """Stage thread: one call to the worker for ``work``, then apply the results."""
        events, items, keys, _ = work
        try:
            records, failures = self._child.call(
                items, CALL_TIMEOUT_S + PER_EVENT_S * len(items))
        except WorkerError as exc:
            self.failing(exc)
            log.error("masking failed; events go on without payload", extra={"fields": {
                "reason": str(exc), "events": len(events)}})
            self._fail(events, "worker_unavailable", [chosen for _, _, chosen in items])
            return
        self.problem = None
        for stage, count in failures.items():
            self._on_failure(stage, count)
        for event, record, key in zip(events, records, keys, strict=True):
            self._apply(event, record)
            if key is not None and record["privacy"]["failure"] is None:
                self._memo.put(key, record)

    def _strip(self, batch: Batch) -> None:
        """After an unexpected error: every event of the batch not masked yet goes without
        payload (its capture is gone already, or removed here)."""
        events = []
        for _, event in batch:
            if not isinstance(event, InferenceEvent):
                continue
            if getattr(event, "capture", None) is not None:
                del event.capture
                events.append(event)
            elif event.privacy and event.privacy.get("failure") == "not_masked":
                events.append(event)
        self._fail(events, "stage_error")

    def _fail(self, events: list[InferenceEvent], failure: str,
              decisions: list[Decision] | None = None) -> None:
        """Fail closed: no payload or header values, the failure on the event, counted."""
        self._on_failure(failure, len(events))
        for i, event in enumerate(events):
            privacy = dict(event.privacy or {})
            privacy["failure"] = failure
            if decisions is not None:
                privacy["capture_reason"] = decisions[i].reason
            event.privacy, event.payload, event.headers = privacy, None, None

    @staticmethod
    def _apply(event: InferenceEvent, record: dict[str, Any]) -> None:
        event.privacy = record["privacy"]
        event.payload = record["payload"]
        event.headers = record["headers"]
