"""CloudEvents 1.0, structured JSON mode: how every event leaves the sidecar.

The envelope's ``id`` is the inference id returned to the client, so consumers
de-duplicate an at-least-once stream by it. The Kafka headers repeat the fields
consumers filter on (CloudEvents' Kafka binding, structured mode), so a dashboard can
select by model version or event type without parsing the value.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

import orjson

from sidecar.events.model import InferenceEvent
from sidecar.events.notices import NoticeEvent
from sidecar.events.record import Record
from sidecar.telemetry import CLOUDEVENTS_CONTENT_TYPE, EVENT_SOURCE_PREFIX


@functools.lru_cache(maxsize=16)
def source(model_name: str) -> str:
    """The CloudEvents ``source``: a URI-reference (RFC 3986), so a model name with
    spaces, non-ASCII letters or ``%`` is percent-encoded (strict SDKs refuse it raw).

    >>> source("llama-3.1"), source("Llama 3 70B")
    ('urn:inference-sidecar:llama-3.1', 'urn:inference-sidecar:Llama%203%2070B')
    >>> source("модель")[-6:]
    '%D1%8C'

    """
    return EVENT_SOURCE_PREFIX + quote(model_name, safe="-._~!$&'()*+,;=:@")


def envelope(event: InferenceEvent | NoticeEvent) -> dict[str, Any]:
    data: dict[str, Any] | InferenceEvent
    if isinstance(event, NoticeEvent):
        ident, subject, data = event.id, event.subject, event.data
    else:
        ident, subject, data = event.inference_id, event.route, event
    return {
        "specversion": "1.0",
        "id": ident,
        "source": source(event.model_name),
        "type": event.event_type,
        "time": event.timestamp,
        "subject": subject,
        "datacontenttype": "application/json",
        "dataschema": f"{EVENT_SOURCE_PREFIX}schema:{event.event_type}:{event.schema_version}",
        "data": data,
    }


def to_record(event: InferenceEvent | NoticeEvent, seq: int) -> Record:
    """Encode ``event`` as a log/sink record keyed by the pseudonymous client id when
    known, else the model name: a consumer group sees one client's events in order."""
    key = event.key if isinstance(event, NoticeEvent) else event.client_id or event.model_name
    return Record(
        seq=seq,
        key=key.encode(),
        value=orjson.dumps(envelope(event)),
        headers=(
            ("content-type", CLOUDEVENTS_CONTENT_TYPE),
            ("ce_type", event.event_type.encode()),
            ("model_version", event.model_version.encode()),
            ("policy_version", event.policy_version.encode()),
            ("evidence_bundle_id", event.evidence_bundle_id.encode()),
        ),
    )
