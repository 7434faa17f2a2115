"""The enforce-mode gate: a request filter that runs the detectors configured with
``mode: enforce`` before the request is forwarded, and rejects what they flag.

Only types that can decide from the request alone are enforceable (``rate_burst``,
``signatures``, ``policy``; the config loader refuses the others). Each check is O(1) per
request apart from the signature scan, which is linear in the prompt and bounded by
``detectors.text.MAX_SCAN``. Verdicts:

- ``rate_burst`` → 429 ``rate_limited``. The detector alerts once per episode; the gate
  keeps refusing the client while its rate stays over the line (the detector's
  ``observe(event)``), and those later events list the detector with ``alert_id: null``.
  Global bursts, and bursts of requests without a client id (``client_id_source`` unset
  or the request lacks it: they share one bucket), alert but refuse no one.
- ``signatures`` → 403 ``prompt_blocked``; ``policy`` → 403 ``outside_intended_use``.
- ``signatures``, and a body that claims to be JSON but cannot be read whole
  (``sidecar/detection/extract.py``: over 4 MiB, too many containers, strings or values,
  or JSON orjson refuses and a model server may still take: NaN, UTF-16) →
  413 ``prompt_unscannable``: fail closed. Scanning it as raw text would let JSON's
  backslash-u escapes or a large leading field carry an injection past the gate.

A rejected request still produces its event (outcome ``rejected``), with the alerts in
``detections``; the detection stage sends them to the alerts topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from detectors.config import DetectorsConfig
from detectors.registry import DetectorSet, DetectorSpec
from detectors.text import scan_window, signatures
from sidecar.detection.extract import read_request, request_params
from sidecar.detection.observed import Observed, Plan
from sidecar.errors import RequestRejected
from sidecar.events.model import InferenceEvent
from sidecar.events.notices import numbered, summary

_VERDICTS: Final = {
    "rate_burst": (429, "rate_limited", "too many requests from this client"),
    "signatures": (403, "prompt_blocked", "the prompt matched a blocked signature"),
    "policy": (403, "outside_intended_use", "the request is outside the intended use"),
}


_WALL0, _STEADY0 = time.time(), time.monotonic()


def steady_time() -> float:
    """Seconds since the epoch that never step: the wall clock when the process started,
    advanced by the monotonic clock. Rates need elapsed time; a wall clock stepped back
    (NTP, a VM resumed) made every client's requests count without decaying, and held
    benign clients at 429 until it caught up."""
    return _WALL0 + (time.monotonic() - _STEADY0)


class Gate:
    def __init__(self, config: DetectorsConfig, previous: Gate | None = None,
                 clock: Callable[[], float] = steady_time,
                 on_error: Callable[[str], None] | None = None,
                 on_evict: Callable[[str, int], None] | None = None) -> None:
        specs = [s for s in config.specs if s.mode == "enforce"]
        # A detector that throws lets the request through (fail open for that one
        # check); on_error makes that visible (..._detector_errors_total).
        self.set = DetectorSet(specs, config.digest, on_error)
        self.on_evict = on_evict  # (detector, client states evicted since the last call)
        self.clock: Callable[[], float] = clock if previous is None else previous.clock
        if previous is not None:  # a reload must not release a client mid-burst
            kept = {s.name: (s, d)
                    for s, d in zip(previous.set.specs, previous.set.detectors, strict=True)}
            for i, spec in enumerate(self.set.specs):
                old = kept.get(spec.name)
                if old is None or old[0].type != spec.type:
                    continue
                if old[0].digest == spec.digest:
                    self.set.detectors[i] = old[1]
                    continue
                # Changed parameters: the new detector takes the counts over where they
                # mean the same (a rate_burst whose threshold or severity changed).
                adopt = getattr(self.set.detectors[i], "adopt", None)
                if callable(adopt):
                    adopt(old[1])
        self.plan = Plan.of(config)
        types = {s.type for s in specs}
        self._scan = "signatures" in types
        self._params = self.plan.params if "policy" in types else ()
        self._rates = [(s, d) for s, d in zip(self.set.specs, self.set.detectors, strict=True)
                       if s.type == "rate_burst"]

    @property
    def active(self) -> bool:
        return bool(self.set.specs)

    def check(self, event: InferenceEvent, observed: Observed) -> None:
        """Run the enforce-mode detectors; raise ``RequestRejected`` to refuse the request."""
        view: dict[str, Any] = {
            "inference_id": event.inference_id, "timestamp": self.clock(),
            "client_id": event.client_id, "route": event.route, "method": event.method,
            "headers": {"request": observed.headers},
        }
        if self._scan or self._params:
            doc, text, read = read_request(observed.request_body, observed.request_type)
            if self._scan and not read:
                raise RequestRejected(
                    "the prompt signatures cannot read this JSON whole (too large, too many "
                    "values, or not parseable here)", status=413, code="prompt_unscannable")
            features: dict[str, Any] = {}
            if self._scan:
                features["signatures"] = signatures().scan(scan_window(text))
            if self._params:
                features["params"] = request_params(doc, self._params)
            view["features"] = features
        alerts = self.set.update(view)
        if self.on_evict is not None and self._rates:  # the enforce types that keep clients
            for name, count in self.set.take_evictions().items():
                self.on_evict(name, count)
        # A rate is one client's doing: global bursts, and requests without a client id
        # (they share one bucket), alert but refuse no one.
        identified = event.client_id is not None
        blocking = [a for a in alerts if a.details.get("scope") != "global"
                    and (identified or a.detector_type != "rate_burst")]
        flagged = {a.detector for a in blocking}
        held = [spec for spec, det in self._rates
                if identified and spec.name not in flagged and _over(det, view)]
        detections = [summary(a, i) for a, i in zip(alerts, numbered(alerts), strict=True)]
        detections += [_held(spec) for spec in held]
        if detections:
            observed.enforced = alerts
            event.detections = detections
        if not blocking and not held:
            return
        first = blocking[0].detector_type if blocking else "rate_burst"
        status, code, message = _VERDICTS.get(first, (403, "blocked", "blocked by a detector"))
        raise RequestRejected(message, status=status, code=code)


def _over(detector: Any, view: dict[str, Any]) -> bool:
    """The client is still over the detector's line (its statistic for this event)."""
    observed = detector.observe(view)
    if observed is None:
        return False
    statistic, threshold = observed
    return statistic is not None and threshold is not None and statistic > threshold


def _held(spec: DetectorSpec) -> dict[str, Any]:
    """A refusal within an episode already alerted: no new alert, the detector named."""
    return {"alert_id": None, "detector": spec.name, "detector_type": spec.type,
            "kind": "abuse", "severity": spec.severity, "mode": "enforce"}
