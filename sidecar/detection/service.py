"""``DetectionService``: the monitor-mode detectors, run in a worker process.

The detection stage (``sidecar/pipeline/detection.py``) sends batches of events here,
each as its JSON data plus raw references (request body, buffered response body). For
each, the service computes the prompt features (``detectors.text``: a length, a SimHash,
matched rule ids; token counts from the upstream's usage; declared request parameters),
puts them on the event as the detectors read it, and runs the ``DetectorSet``. Only the
features and the alerts go back: the text dies here. Enforce-mode detectors are not run
here: the request path's gate runs them (``sidecar/detection/gate.py``).

``("reload", config)`` swaps the set; detectors whose spec did not change keep their
state (a reload that only adds a detector does not restart every drift window).
"""

from __future__ import annotations

from typing import Any

import orjson

from detectors.config import DetectorsConfig
from detectors.registry import DetectorSet
from detectors.text import prompt_features, simhash_key
from sidecar.detection.extract import parse_request, parse_response, request_params, usage_of
from sidecar.detection.observed import Plan

# event JSON, request body, its content type, buffered response body, request headers
Item = tuple[bytes, bytes | None, str | None, bytes | None, dict[str, str]]
Result = tuple[dict[str, Any], list[dict[str, Any]]]  # features, alerts (Alert.to_dict)
# per event (None: not detected), then detector errors and client evictions since the
# last call, by detector name
Reply = tuple[list[Result], dict[str, int], dict[str, int]]


def monitor_set(config: DetectorsConfig, old: DetectorSet | None = None) -> DetectorSet:
    """The monitor-mode detectors of ``config``; unchanged ones keep ``old``'s state."""
    detectors = DetectorSet([s for s in config.specs if s.mode == "monitor"], config.digest)
    if old is not None:
        kept = {(s.name, s.digest): d for s, d in zip(old.specs, old.detectors, strict=True)}
        for i, spec in enumerate(detectors.specs):
            previous = kept.get((spec.name, spec.digest))
            if previous is not None:
                detectors.detectors[i] = previous
    return detectors


class DetectionService:
    name = "detection"

    def __init__(self, config: DetectorsConfig, hash_key: bytes = b"") -> None:
        self._key = simhash_key(hash_key)  # prompt SimHashes join only under one key
        self._use(config, None)

    def _use(self, config: DetectorsConfig, old: DetectorSet | None) -> None:
        self.config = config
        self.plan = Plan.of(config)
        self.set = monitor_set(config, old)
        self._errors = dict(self.set.errors)

    def handle(self, message: tuple[Any, ...]) -> Any:
        if message[0] == "reload":
            self._use(message[1], self.set)
            return self.config.digest
        return self.batch(message[1])

    def batch(self, items: list[Item]) -> Reply:
        """Features and alerts per event; detector errors and client evictions since the
        last call."""
        results = [self.one(*item) for item in items]
        errors = {name: n - self._errors.get(name, 0) for name, n in self.set.errors.items()}
        self._errors = dict(self.set.errors)
        return results, {name: n for name, n in errors.items() if n}, self.set.take_evictions()

    def one(self, data: bytes, body: bytes | None, ctype: str | None,
            response: bytes | None, headers: dict[str, str]) -> Result:
        event = orjson.loads(data)
        doc, text = parse_request(body, ctype)
        reply = parse_response(response)
        # No body (over the raw-body budget): no prompt features, rather than those of an
        # empty prompt, which would feed the detectors a prompt length of 0
        features = {} if body is None else prompt_features(text, key=self._key)
        features.update(usage_of(reply))
        view = dict(event)
        view["features"] = features
        if self.plan.params:  # for the policy only: values such as "user" are not recorded
            view["features"] = {**features, "params": request_params(doc, self.plan.params)}
        view["headers"] = {"request": headers}
        if self.plan.payload:  # raw, in this process only: drift on a response field
            view["payload"] = {"request": doc, "response": reply}
        return features, [alert.to_dict() for alert in self.set.update(view)]

    def close(self) -> None:
        pass
