"""``NoticeEvent``: the events that are not inferences: detector alerts and the
announcement that the detectors' configuration changed.

They travel the same pipeline as inference events (queue → log → sink, same sequence
numbers, same durability) and leave as CloudEvents whose ``type`` starts with
``ai.detector.``, which the Kafka sink sends to the alerts topic.

An alert's CloudEvents ``id`` is ``<inference id>/<detector>``, with ``.<n>`` added for a
detector's second, third... alert on the same inference (a prompt matching two rules):
the same detector firing on the same inference gets the same ids wherever it runs (the
sidecar's pipeline, its request path in enforce mode, ``inference-sidecar detect`` over
the topic), so consumers de-duplicate alerts like inference events. Its ``time`` is the
inference's: replaying recorded traffic gives the same alerts with the same ids and times.

>>> from detectors.base import Alert
>>> origin = {"inference_id": "0190-a", "timestamp": "2026-01-01T00:00:00+00:00",
...           "model_name": "m", "model_version": "1", "policy_version": "p",
...           "evidence_bundle_id": "e", "route": "/v1/chat/completions", "client_id": "k1:ab"}
>>> notice = alert_event(Alert("rate", "warning", "burst", kind="abuse",
...                            inference_id="0190-a", client_id="k1:ab"), origin)
>>> notice.id, notice.key, notice.data["alert_id"], notice.subject
('0190-a/rate', 'k1:ab', '0190-a/rate', 'rate')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detectors.base import Alert
from sidecar.ids import new_inference_id
from sidecar.telemetry import (
    EVENT_TYPE_ALERT,
    EVENT_TYPE_POLICY_CHANGED,
    NOTICE_SCHEMA_VERSION,
)

IDENTITY_FIELDS = ("model_name", "model_version", "policy_version", "evidence_bundle_id")


@dataclass(slots=True)
class NoticeEvent:
    id: str
    event_type: str
    timestamp: str  # RFC 3339: the inference's time for alerts, the change's for reloads
    subject: str
    key: str  # Kafka key: the client's pseudonym when the notice is about one, else the model
    model_name: str
    model_version: str
    policy_version: str
    evidence_bundle_id: str
    data: dict[str, Any]
    schema_version: str = NOTICE_SCHEMA_VERSION


def alert_id(inference_id: str | None, detector: str, index: int = 0) -> str:
    base = f"{inference_id or new_inference_id()}/{detector}"
    return base if index == 0 else f"{base}.{index}"


def numbered(alerts: Sequence[Alert | Mapping[str, Any]]) -> list[int]:
    """Each alert's index among the alerts of its detector in ``alerts`` (one event's)."""
    seen: dict[str, int] = {}
    out = []
    for alert in alerts:
        name = alert.detector if isinstance(alert, Alert) else str(alert.get("detector", ""))
        out.append(seen.get(name, 0))
        seen[name] = out[-1] + 1
    return out


def summary(alert: Alert, index: int = 0) -> dict[str, Any]:
    """What the inference event lists in ``detections`` for one of its alerts."""
    return {
        "alert_id": alert_id(alert.inference_id, alert.detector, index),
        "detector": alert.detector,
        "detector_type": alert.detector_type,
        "kind": alert.kind,
        "severity": alert.severity,
        "mode": alert.mode,
    }


def alert_event(alert: Alert | Mapping[str, Any], origin: Mapping[str, Any],
                index: int = 0) -> NoticeEvent:
    """The ``ai.detector.alert`` event for ``alert`` (an ``Alert`` or its ``to_dict()``),
    raised by the inference ``origin`` (its event data: ids, identity, route, time);
    ``index``: see ``numbered``."""
    fields = alert.to_dict() if isinstance(alert, Alert) else dict(alert)
    inference_id = fields.get("inference_id") or _text(origin.get("inference_id"))
    fields["inference_id"] = inference_id
    ident = alert_id(inference_id, str(fields.get("detector", "")), index)
    identity = {name: str(origin.get(name, "")) for name in IDENTITY_FIELDS}
    timestamp = str(origin.get("timestamp", ""))
    data = {"alert_id": ident, "timestamp": timestamp, **identity,
            "route": _text(origin.get("route")), **fields}
    client = fields.get("client_id")
    return NoticeEvent(
        id=ident, event_type=EVENT_TYPE_ALERT, timestamp=timestamp,
        subject=str(fields.get("detector", "")),
        key=client if isinstance(client, str) and client else identity["model_name"],
        data=data, **identity,
    )


def alert_events(alerts: Sequence[Alert | Mapping[str, Any]],
                 origin: Mapping[str, Any]) -> list[NoticeEvent]:
    """The alert events of one inference's ``alerts``, numbered per detector."""
    return [alert_event(a, origin, i) for a, i in zip(alerts, numbered(alerts), strict=True)]


def policy_changed_event(
    identity: Mapping[str, str], timestamp: str, *, source: str, digest: str,
    previous_digest: str | None, detectors: Sequence[Mapping[str, Any]],
) -> NoticeEvent:
    """The ``ai.detector.policy_changed`` event: which detectors run from now on."""
    ident = new_inference_id()
    fields = {name: identity[name] for name in IDENTITY_FIELDS}
    data = {
        "change_id": ident, "timestamp": timestamp, **fields, "source": source,
        "digest": digest, "previous_digest": previous_digest,
        "detectors": [dict(d) for d in detectors],
    }
    return NoticeEvent(
        id=ident, event_type=EVENT_TYPE_POLICY_CHANGED, timestamp=timestamp,
        subject="detectors", key=fields["model_name"], data=data, **fields,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
