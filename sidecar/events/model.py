"""``InferenceEvent``: exactly one per inference, filled in as the request goes along.

The request handler creates it on arrival and enqueues it in a ``finally``, so errors,
timeouts and client disconnects produce one too. Serialised with orjson as is
(dataclasses with slots are native to orjson), field names are the JSON names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.events.notices import NoticeEvent
from sidecar.telemetry import EVENT_SCHEMA_VERSION, EVENT_TYPE_INFERENCE


class _Transient:
    # Not a dataclass field, so orjson never serialises it: the raw capture a privacy
    # profile allows (sidecar/privacy/context.py), dropped once the privacy stage masked it.
    __slots__ = ("capture", "observed")
    capture: Any  # a sidecar.privacy.context.Capture; unset when there is none
    # What the detection stage reads (sidecar/detection/observed.py): raw references,
    # dropped once the detectors' features were taken from them.
    observed: Any


@dataclass(slots=True)
class InferenceEvent(_Transient):
    inference_id: str
    timestamp: str  # RFC 3339, UTC, when the request arrived
    model_name: str
    model_version: str
    policy_version: str
    evidence_bundle_id: str
    method: str
    route: str  # a template from sidecar.proxy.routes: bounded cardinality
    path: str  # the path only: query strings are not recorded
    client_address: str | None  # None when the privacy profile treats addresses as personal
    trace_id: str | None = None
    request_id: str | None = None
    status: int = 0
    outcome: str = ""
    error: str | None = None  # a short code such as upstream_timeout, never a payload
    upstream_status: int | None = None
    latency_ms: float = 0.0
    upstream_latency_ms: float | None = None
    ttfb_ms: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    stream: bool = False
    chunks: int = 0
    client_id: str | None = None  # pseudonymous (keyed HMAC), never the raw identity
    privacy: dict[str, Any] | None = None  # the governing profile and what it let through
    payload: dict[str, Any] | None = None  # masked request/response/query, when sampled
    headers: dict[str, dict[str, str]] | None = None  # allow-listed, masked header values
    # What the detectors know about the prompt (detectors/text.py: a length, a SimHash,
    # matched rule ids, token counts; never text), and the alerts this inference raised.
    # None: detection off for this event or it failed; [] / {}: it ran, nothing to say.
    features: dict[str, Any] | None = None
    detections: list[dict[str, Any]] | None = None
    event_type: str = EVENT_TYPE_INFERENCE
    schema_version: str = EVENT_SCHEMA_VERSION


# What travels the pipeline: inferences, and the notices (alerts, policy changes) about them.
AnyEvent = InferenceEvent | NoticeEvent


def carried_alerts(event: AnyEvent) -> int:
    """Alerts of the enforce-mode gate an event still carries (they become notices in the
    detection stage): lost with the event if it is dropped before."""
    observed = getattr(event, "observed", None)
    return len(observed.enforced) if observed is not None else 0
