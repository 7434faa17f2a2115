"""``to_record``: how an ``InferenceEvent`` leaves the sidecar (CloudEvents 1.0, structured
JSON), and ``Record``, the encoded form the log and every sink see."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from factories import expected_ids, make_event

from sidecar.events.cloudevents import envelope, to_record
from sidecar.events.model import InferenceEvent
from sidecar.events.record import Record
from sidecar.telemetry import CLOUDEVENTS_CONTENT_TYPE, EVENT_SOURCE_PREFIX

EVENT_FIELDS = {f.name for f in dataclasses.fields(InferenceEvent)}


def test_the_value_is_a_cloudevents_envelope_around_the_event() -> None:
    event = make_event(1, trace_id="t-1", error="upstream_timeout", stream=True)
    record = to_record(event, 7)
    doc = orjson.loads(record.value)
    assert doc == {
        "specversion": "1.0",
        "id": "inf-000001",
        "source": EVENT_SOURCE_PREFIX + "credit-scorer",
        "type": "ai.inference.completed",
        "time": "2025-01-01T00:00:00.000Z",
        "subject": "/v1/{name}/predict",
        "datacontenttype": "application/json",
        "dataschema": EVENT_SOURCE_PREFIX + "schema:ai.inference.completed:1.2",
        "data": dataclasses.asdict(event),
    }
    assert set(doc["data"]) == EVENT_FIELDS


def test_the_envelope_id_is_the_inference_id_consumers_deduplicate_by() -> None:
    records = [to_record(make_event(n), n) for n in range(1, 4)]
    assert [orjson.loads(r.value)["id"] for r in records] == expected_ids([1, 2, 3])


def test_seq_key_and_headers() -> None:
    event = make_event(3, model_version="9.9", policy_version="p-2", evidence_bundle_id="eb-x")
    record = to_record(event, 42)
    assert record.seq == 42
    assert record.key == b"credit-scorer"  # no client id: keyed by model name
    assert dict(record.headers) == {
        "content-type": CLOUDEVENTS_CONTENT_TYPE,
        "ce_type": b"ai.inference.completed",
        "model_version": b"9.9",
        "policy_version": b"p-2",
        "evidence_bundle_id": b"eb-x",
    }
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in record.headers)


def test_the_client_pseudonym_is_the_key_when_known() -> None:
    assert to_record(make_event(1, client_id="ab12cd34:0f"), 1).key == b"ab12cd34:0f"
    assert to_record(make_event(1), 1).key == make_event(1).model_name.encode()


def test_the_value_is_one_compact_utf8_line() -> None:
    event = make_event(1, path="/a\nb/caf\u00e9", error="x\r\ny")
    value = to_record(event, 1).value
    assert b"\n" not in value and b"\r" not in value  # JSON-lines sinks rely on it
    data = orjson.loads(value)["data"]
    assert data["path"] == "/a\nb/caf\u00e9"
    assert "caf\u00e9".encode() in value


def test_envelope_keeps_the_event_object_as_data() -> None:
    event = make_event(1)
    assert envelope(event)["data"] is event


def test_record_is_frozen() -> None:
    record = to_record(make_event(1), 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.seq = 2  # type: ignore[misc]


def test_record_size_counts_key_value_and_headers() -> None:
    record = Record(seq=1, key=b"abc", value=b"0123456789", headers=(("h1", b"xy"), ("h", b"")))
    assert record.size == 3 + 10 + (2 + 2) + (1 + 0)
    assert Record(seq=2, key=b"", value=b"").size == 0
    full = to_record(make_event(1), 1)
    assert full.size > len(full.value)


@pytest.mark.parametrize("name", ["Llama 3 70B", "модель-кредит", "gpt-4o|prod", "a%zz"])
def test_the_source_is_a_uri_reference_whatever_the_model_name(name: str) -> None:
    import json
    from pathlib import Path
    from urllib.parse import unquote

    import jsonschema

    event = dataclasses.replace(make_event(1), model_name=name)
    value = envelope(event)
    assert value["source"].startswith(EVENT_SOURCE_PREFIX)
    assert unquote(value["source"][len(EVENT_SOURCE_PREFIX):]) == name
    for path in (Path(__file__).resolve().parents[2] / "sidecar" / "schemas").glob("*.json"):
        schema = json.loads(path.read_text())["properties"]["source"]
        jsonschema.validate(value["source"], schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(EVENT_SOURCE_PREFIX + name, schema)
