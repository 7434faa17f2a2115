"""``MaskingService``: the privacy stage's worker, run in a child process.

Masking a sampled payload costs about 0.5-1.6 ms of CPU in presidio, a header-only event
about 50 µs (its analyser results cached): far too much for the sidecar's own GIL, so
the pipeline's privacy stage (``sidecar/pipeline/privacy.py``) sends batches here through
``sidecar/workers``. The analyzer is built once, for every profile in use; one ``Masker``
per profile. ``Masker.mask`` never raises: a failure drops that event's payload and says
so in the event (fail closed).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import orjson

from sidecar.privacy.analyzer import build_analyzer
from sidecar.privacy.masker import Captured, Masker
from sidecar.privacy.profile import PrivacyProfile
from sidecar.privacy.sampling import Decision

Item = tuple[str, Captured, Decision]  # profile digest, what was captured, the decision

# What an event may carry of masked payload and headers, encoded. A Kafka record is at
# most 1 MiB (the broker's default message.max.bytes, and our producer's max_request_size);
# a profile may capture 4 MiB, and masking and JSON escaping can make it larger still. A
# record the broker refuses would be retried for ever and hold up every event behind it.
MAX_RECORDED_BYTES: Final = 768 * 1024


class MaskingService:
    name = "privacy"

    def __init__(self, profiles: tuple[PrivacyProfile, ...], hash_key: bytes) -> None:
        analyzer = build_analyzer(profiles)
        self.failures: Counter[str] = Counter()
        self.maskers = {p.digest: Masker(p, analyzer, hash_key, on_failure=self._failed)
                        for p in profiles}

    def _failed(self, stage: str) -> None:
        self.failures[stage] += 1

    def handle(self, batch: list[Item]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The privacy part of each event (``MaskResult.record()``), and the failures
        counted since the last call, by stage."""
        positions: dict[str, list[int]] = {}
        for index, (digest, _, _) in enumerate(batch):
            positions.setdefault(digest, []).append(index)
        records: list[dict[str, Any]] = [{} for _ in batch]
        for digest, indexes in positions.items():  # one profile's events share calls
            results = self.maskers[digest].mask_many([batch[i][1:] for i in indexes])
            for index, result in zip(indexes, results, strict=True):
                records[index] = _bounded(result.record(), self._failed)
        failures, self.failures = dict(self.failures), Counter()
        return records, failures

    def close(self) -> None:
        pass


def _bounded(record: dict[str, Any], failed: Any) -> dict[str, Any]:
    """``record`` without payload and header values when they would make the event too
    large to publish (``privacy.failure: too_large``, counted)."""
    if record["payload"] is None and record["headers"] is None:
        return record
    size = len(orjson.dumps([record["payload"], record["headers"]]))
    if size <= MAX_RECORDED_BYTES:
        return record
    failed("too_large")
    return {**record, "payload": None, "headers": None,
            "privacy": {**record["privacy"], "failure": "too_large"}}
