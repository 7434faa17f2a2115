"""The masking worker's service: a batch of events under several profiles, in order."""

from __future__ import annotations

from pathlib import Path

import orjson
from pii_values import HASH_KEY

from sidecar.privacy.masker import Captured
from sidecar.privacy.profile import load_profile
from sidecar.privacy.sampling import Decision
from sidecar.privacy.service import MAX_RECORDED_BYTES, MaskingService


def test_a_mixed_batch_is_masked_per_profile_and_answered_in_order() -> None:
    strict, standard = load_profile("strict"), load_profile("standard")
    service = MaskingService((strict, standard), HASH_KEY)
    body = orjson.dumps({"model": "m", "messages": [
        {"role": "user", "content": "reach me at jane.doe@example.com"}]})
    batch = [(profile.digest, Captured(f"id-{i}", request_body=body,
                                       request_content_type="application/json"),
              Decision(True, "sampled"))
             for i, profile in enumerate([strict, standard, standard, strict, standard])]
    records, failures = service.handle(batch)
    assert failures == {}
    assert [r["privacy"]["profile"] for r in records] == \
        ["strict", "standard", "standard", "strict", "standard"]
    for record in records:
        content = record["payload"]["request"]["messages"][0]["content"]
        assert "jane.doe@example.com" not in content
        assert record["privacy"]["entity_counts"] == {"EMAIL_ADDRESS": 1}
    assert records[0]["payload"] == records[3]["payload"]
    assert records[1]["payload"] == records[2]["payload"] == records[4]["payload"]
    assert records[0]["payload"] != records[1]["payload"]  # redacted vs hashed


def test_a_payload_too_large_to_publish_is_dropped_and_counted(tmp_path: Path) -> None:
    # a profile may capture 4 MiB; a Kafka record is at most 1 MiB, and one the broker
    # refuses would be retried for ever, holding up every event behind it
    text = Path(__file__).resolve().parents[2].joinpath(
        "privacy_profiles", "standard.yaml").read_text()
    path = tmp_path / "big.yaml"
    path.write_text(text.replace("name: standard", "name: big")
                    .replace("max_captured_bytes: 64KiB", "max_captured_bytes: 4MiB"))
    profile = load_profile(path)
    service = MaskingService((profile,), HASH_KEY)
    words = "lorem ipsum dolor sit amet " * (MAX_RECORDED_BYTES // 26 + 10)

    def captured(content: str) -> Captured:
        body = orjson.dumps({"messages": [{"role": "user", "content": content}]})
        return Captured("id-1", request_body=body, request_content_type="application/json")

    records, failures = service.handle([(profile.digest, captured(words), Decision(True, "x")),
                                        (profile.digest, captured("hi"), Decision(True, "x"))])
    big, small = records
    assert big["payload"] is None and big["headers"] is None
    assert big["privacy"]["failure"] == "too_large"
    assert small["payload"]["request"]["messages"][0]["content"] == "hi"
    assert small["privacy"]["failure"] is None
    assert failures == {"too_large": 1}
