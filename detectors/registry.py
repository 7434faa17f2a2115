"""Detector types by name, ``build(spec)``, and ``DetectorSet``: every configured detector
over each event.

A type is registered once with what config validation needs: its kind, its parameter
dataclass (field names, types and defaults; ``__post_init__`` checks ranges), whether it
reads a numeric or a categorical feature, and whether it may run in ``enforce`` mode
(only detectors that can decide before the request is forwarded: rate, signatures,
policy — none of the drift detectors), and whether the alert's severity is the
detector's own (a signature rule's) rather than the configured one.

``DetectorSet.update`` never raises: a detector that throws is counted in ``errors`` and
skipped for that event (the pipeline must not stop for one bad detector or event).
``DetectorSet.observe`` (for ``replay``'s report) never raises either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from detectors.abuse import ErrorProbing, ErrorProbingParams, RateBurst, RateBurstParams
from detectors.base import Alert, Detector, NullDetector, Observation
from detectors.categorical import ChiSquareDrift, ChiSquareParams
from detectors.clients import SHARED, ClientTable
from detectors.drift import (
    ADWINDrift,
    ADWINParams,
    KSWINDrift,
    KSWINParams,
    PageHinkleyDrift,
    PageHinkleyParams,
)
from detectors.duplicates import Extraction, ExtractionParams, NearDuplicate, NearDuplicateParams
from detectors.injection import Signatures, SignaturesParams
from detectors.policy import Policy, PolicyParams
from detectors.rate import BernoulliCUSUM, BernoulliCUSUMParams
from detectors.tokens import TokenUsage, TokenUsageParams


@dataclass(frozen=True, slots=True)
class NullParams:
    pass


@dataclass(frozen=True, slots=True)
class DetectorType:
    name: str
    kind: str
    factory: Callable[..., Detector]
    params: type[Any]
    feature: str = "none"  # "numeric", "categorical" or "none"
    enforceable: bool = False
    # The alert's severity comes from the detector (a signature rule's), not the config.
    own_severity: bool = False


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """One configured detector, validated (``detectors.config`` builds these)."""

    name: str
    type: str
    feature: str | None = None
    transform: str = "none"
    severity: str = "warning"
    mode: str = "monitor"
    params: Mapping[str, Any] = field(default_factory=dict)
    digest: str = ""

    def normalised(self) -> dict[str, Any]:
        """What the digest covers: every setting, defaults filled in."""
        return {
            "name": self.name,
            "type": self.type,
            "feature": self.feature,
            "transform": self.transform,
            "severity": self.severity,
            "mode": self.mode,
            "params": dict(sorted(self.params.items())),
        }


TYPES: dict[str, DetectorType] = {}


def register(detector_type: DetectorType) -> DetectorType:
    if detector_type.name in TYPES:
        raise ValueError(f"detector type {detector_type.name!r} is already registered")
    TYPES[detector_type.name] = detector_type
    return detector_type


register(DetectorType("null", "drift", NullDetector, NullParams))
register(DetectorType("adwin", "drift", ADWINDrift, ADWINParams, "numeric"))
register(DetectorType("page_hinkley", "drift", PageHinkleyDrift, PageHinkleyParams, "numeric"))
register(DetectorType("kswin", "drift", KSWINDrift, KSWINParams, "numeric"))
register(DetectorType("chi_square", "drift", ChiSquareDrift, ChiSquareParams, "categorical"))
register(DetectorType("bernoulli_cusum", "drift", BernoulliCUSUM, BernoulliCUSUMParams,
                      "numeric"))
register(DetectorType("rate_burst", "abuse", RateBurst, RateBurstParams, enforceable=True))
register(DetectorType("near_duplicate", "abuse", NearDuplicate, NearDuplicateParams))
register(DetectorType("extraction", "abuse", Extraction, ExtractionParams))
register(DetectorType("token_usage", "abuse", TokenUsage, TokenUsageParams))
register(DetectorType("error_probing", "abuse", ErrorProbing, ErrorProbingParams))
register(
    DetectorType(
        "signatures", "abuse", Signatures, SignaturesParams, enforceable=True, own_severity=True
    )
)
register(DetectorType("policy", "policy", Policy, PolicyParams, enforceable=True))


def build(spec: DetectorSpec) -> Detector:
    """A fresh detector for ``spec``; raises ``KeyError`` for an unknown type and
    ``ValueError`` (``ParamError``, ``FeatureError``) for bad settings.

    >>> det = build(DetectorSpec("lat", "adwin", feature="latency_ms", params={"clock": 4}))
    >>> det.name, det.update({"latency_ms": 10})
    ('lat', [])
    """
    detector_type = TYPES[spec.type]
    if detector_type.feature == "none":
        return detector_type.factory(name=spec.name, **spec.params)
    return detector_type.factory(
        spec.feature, name=spec.name, transform=spec.transform, **spec.params
    )


class DetectorSet:
    """Every configured detector over each event; alerts stamped with the configured
    severity and mode, the config digest and the event's ids.

    >>> specs = [DetectorSpec("mix", "chi_square", feature="route",
    ...                       params={"reference_size": 40, "window_size": 20,
    ...                               "check_every": 5})]
    >>> detectors = DetectorSet(specs, digest="sha256:00")
    >>> events = [{"route": "/a", "inference_id": str(i)} for i in range(60)]
    >>> events += [{"route": "/b", "inference_id": str(i)} for i in range(60, 80)]
    >>> alerts = [a for e in events for a in detectors.update(e)]
    >>> [(a.detector, a.inference_id, a.config_digest) for a in alerts]
    [('mix', '74', 'sha256:00')]
    >>> detectors.observe(events[-1]), detectors.observe({})
    ([(None, None)], [None])
    """

    def __init__(self, specs: Sequence[DetectorSpec], digest: str = "",
                 on_error: Callable[[str], None] | None = None) -> None:
        self.specs = tuple(specs)
        self.digest = digest
        self.on_error = on_error  # told the detector's name each time one throws
        self.detectors = [build(spec) for spec in self.specs]
        self.errors: dict[str, int] = {spec.name: 0 for spec in self.specs}
        self.observe_errors: dict[str, int] = {spec.name: 0 for spec in self.specs}

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        alerts: list[Alert] = []
        for spec, detector in zip(self.specs, self.detectors, strict=True):
            try:
                raised = detector.update(event)
            except Exception:
                self.errors[spec.name] += 1
                if self.on_error is not None:
                    self.on_error(spec.name)
                continue
            for alert in raised:
                alerts.append(self._stamp(alert, spec, event))
        return alerts

    def take_evictions(self) -> dict[str, int]:
        """Client states each per-client detector evicted (``max_clients``) since the last
        call, by detector name; detectors without any are left out."""
        out: dict[str, int] = {}
        for spec, detector in zip(self.specs, self.detectors, strict=True):
            table = getattr(detector, "clients", None)
            if isinstance(table, ClientTable) and table.evictions != table.reported:
                out[spec.name] = table.evictions - table.reported
                table.reported = table.evictions
        return out

    def observe(self, event: Mapping[str, Any]) -> list[Observation | None]:
        """After ``update(event)``: each detector's ``observe(event)``, in ``specs`` order
        (see ``detectors.base``); ``(None, None)`` for one that has no ``observe`` or
        throws (counted in ``observe_errors``). Costs about as much as ``update``: only
        ``replay`` calls it."""
        out: list[Observation | None] = []
        for spec, detector in zip(self.specs, self.detectors, strict=True):
            observe = getattr(detector, "observe", None)
            if observe is None:
                out.append((None, None))
                continue
            try:
                out.append(observe(event))
            except Exception:
                self.observe_errors[spec.name] += 1
                out.append((None, None))
        return out

    def _stamp(self, alert: Alert, spec: DetectorSpec, event: Mapping[str, Any]) -> Alert:
        client_id = alert.client_id
        if client_id is None and alert.details.get("scope") != "global":
            client_id = _text(event.get("client_id"))  # global alerts blame no one
        if client_id == SHARED:  # the bucket of requests without an id is no client's id
            client_id = None
        inference_id = alert.inference_id or _text(event.get("inference_id"))
        detector_type = TYPES[spec.type]
        return dataclasses.replace(
            alert,
            detector=spec.name,
            detector_type=spec.type,
            kind=detector_type.kind,
            severity=alert.severity if detector_type.own_severity else spec.severity,
            mode=spec.mode,
            config_digest=self.digest or None,
            client_id=client_id,
            inference_id=inference_id,
            details={**alert.details, "spec_digest": spec.digest},
        )

    def reset(self) -> None:
        for detector in self.detectors:
            detector.reset()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
