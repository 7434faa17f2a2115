"""The masking worker's service: a batch of events under several profiles, in order."""

from __future__ import annotations

import orjson
from pii_values import HASH_KEY

from sidecar.privacy.masker import Captured
from sidecar.privacy.profile import load_profile
from sidecar.privacy.sampling import Decision
from sidecar.privacy.service import MaskingService


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
