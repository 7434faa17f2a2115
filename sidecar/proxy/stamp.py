"""The stamp stage: the four identifiers on every response the sidecar returns.

Headers always; with ``stamp_body`` also a top-level object in JSON-object bodies.
Streams are stamped by headers only: their bytes are never altered.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import orjson

from sidecar.config import Settings
from sidecar.telemetry import (
    HEADER_EVIDENCE_BUNDLE,
    HEADER_INFERENCE_ID,
    HEADER_MODEL_VERSION,
    HEADER_POLICY_VERSION,
)


class Stamp:
    def __init__(self, settings: Settings) -> None:
        self._fixed = (
            (HEADER_MODEL_VERSION, settings.model_version),
            (HEADER_POLICY_VERSION, settings.policy_version),
            (HEADER_EVIDENCE_BUNDLE, settings.evidence_bundle_id),
        )
        self._identity = {
            "model_version": settings.model_version,
            "policy_version": settings.policy_version,
            "evidence_bundle_id": settings.evidence_bundle_id,
        }
        self.body_enabled = settings.stamp_body
        self._body_key = settings.stamp_body_key

    def headers(self, headers: MutableMapping[str, str], inference_id: str) -> None:
        """Set (never append) the stamp headers, replacing anything already there."""
        for name, value in self._fixed:
            headers[name] = value
        headers[HEADER_INFERENCE_ID] = inference_id

    def body(self, body: bytes, content_type: str | None, inference_id: str) -> bytes | None:
        """Return ``body`` with the stamp object added, or None if it is not a JSON object.

        >>> from sidecar.config import load_settings
        >>> s = load_settings(environ={"SIDECAR_MODEL_NAME": "m", "SIDECAR_MODEL_VERSION": "1",
        ...     "SIDECAR_POLICY_VERSION": "p", "SIDECAR_EVIDENCE_BUNDLE_ID": "e"})
        >>> Stamp(s).body(b'{"a": 1}', "application/json", "id-1")
        b'{"a": 1,"compliance":{"model_version":"1","policy_version":"p",...'
        >>> Stamp(s).body(b'{} ', "application/json", "id-1")[:15]
        b'{"compliance":{'
        >>> Stamp(s).body(b'[1]', "application/json", "id-1") is None
        True
        """
        if content_type is None or "json" not in content_type or body.lstrip()[:1] != b"{":
            return None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None  # malformed JSON passes through untouched
        if not isinstance(document, dict):
            return None
        stamp = {**self._identity, "inference_id": inference_id}
        if self._body_key in document:  # the upstream's own key of that name: replaced
            document[self._body_key] = stamp
            try:  # re-serialised: the only case where other bytes may change
                return orjson.dumps(document)
            except (orjson.JSONEncodeError, TypeError):
                return None  # nested deeper than orjson writes: passed through unstamped
        # Spliced into the bytes, not re-serialised: the model's output stays byte for
        # byte (orjson would turn an integer past 64 bits into a float, and refuse to
        # write a document nested deeper than it reads).
        end = body.rindex(b"}")
        member = orjson.dumps(self._body_key) + b":" + orjson.dumps(stamp)
        return body[:end] + (b"," if document else b"") + member + body[end:]
