"""CloudEvents 1.0, structured JSON mode: how every event leaves the sidecar.

The envelope's ``id`` is the inference id returned to the client, so consumers
de-duplicate an at-least-once stream by it. The Kafka headers repeat the fields
consumers filter on (CloudEvents' Kafka binding, structured mode), so a dashboard can
select by model version or event type without parsing the value.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.events.model import InferenceEvent
from sidecar.events.record import Record
from sidecar.telemetry import CLOUDEVENTS_CONTENT_TYPE, EVENT_SOURCE_PREFIX


def envelope(event: InferenceEvent) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event.inference_id,
        "source": EVENT_SOURCE_PREFIX + event.model_name,
        "type": event.event_type,
        "time": event.timestamp,
        "subject": event.route,
        "datacontenttype": "application/json",
        "dataschema": f"{EVENT_SOURCE_PREFIX}schema:{event.event_type}:{event.schema_version}",
        "data": event,
    }


def to_record(event: InferenceEvent, seq: int) -> Record:
    """Encode ``event`` as a log/sink record keyed by the pseudonymous client id when
    known, else the model name: a consumer group sees one client's events in order."""
    return Record(
        seq=seq,
        key=(event.client_id or event.model_name).encode(),
        value=orjson.dumps(envelope(event)),
        headers=(
            ("content-type", CLOUDEVENTS_CONTENT_TYPE),
            ("ce_type", event.event_type.encode()),
            ("model_version", event.model_version.encode()),
            ("policy_version", event.policy_version.encode()),
            ("evidence_bundle_id", event.evidence_bundle_id.encode()),
        ),
    )
