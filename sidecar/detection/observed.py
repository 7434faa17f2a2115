"""``Observed``: what the detectors may read of one request, as raw references, riding on
the event (a transient slot orjson never serialises) until the detection stage took the
features from it. ``Plan``: which headers and request parameters the configured
detectors read, so the request path keeps only those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detectors.base import Alert
from detectors.config import DetectorsConfig


class Observed:
    __slots__ = ("enforced", "headers", "held", "request_body", "request_type", "response_body")

    def __init__(self, body: bytes | None, content_type: str | None,
                 headers: dict[str, str]) -> None:
        self.request_body = body  # None: over the raw-body budget (sidecar/proxy/held.py)
        self.held: Any = None  # the event's share of that budget, while it holds bodies
        self.request_type = content_type
        self.headers = headers  # only the names the plan asks for, lower-cased
        self.response_body: bytes | None = None  # buffered responses only (token usage)
        self.enforced: list[Alert] = []  # alerts of the enforce-mode gate (request path)


@dataclass(frozen=True, slots=True)
class Plan:
    headers: tuple[str, ...]  # request headers the detectors read (policy)
    params: tuple[str, ...]  # request parameters the detectors read (policy)
    payload: bool  # a detector reads payload.* (the worker parses the bodies for it)

    @classmethod
    def of(cls, config: DetectorsConfig) -> Plan:
        headers, params, payload = {"content-type"}, set[str](), False
        for spec in config.specs:
            p = spec.params
            if spec.type == "policy":
                header = p.get("purpose_header")
                if isinstance(header, str) and header:
                    headers.add(header.lower())
                rules = p.get("params")
                if isinstance(rules, Mapping):
                    params.update(str(name) for name in rules)
            if (spec.feature or "").startswith("payload."):
                payload = True
        return cls(tuple(sorted(headers)), tuple(sorted(params)), payload)

    def observe(self, body: bytes | None, headers: Mapping[str, str]) -> Observed:
        kept = {name: value for name in self.headers if (value := headers.get(name)) is not None}
        return Observed(body, headers.get("content-type"), kept)


def view_headers(observed: Observed) -> dict[str, Any]:
    """The ``headers`` part of the event as the detectors see it."""
    return {"request": dict(observed.headers)}
