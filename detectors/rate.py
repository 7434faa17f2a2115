"""A rise in the rate of a rare 0/1 event (upstream errors): a Bernoulli CUSUM.

ADWIN and Page-Hinkley watch means of continuous features; for a rare binary event they
are slow (the mean moves by 0.045 when errors go from 0.5 % to 5 %, lost in the 0/1
noise) and the chi-square status mix needs a very small alpha to stay quiet over a
million events. The sequential test made for exactly this change is the Bernoulli CUSUM
(Page 1954; Reynolds & Stoumbos 1999): with ``p0`` the current rate and ``p1 = factor x
p0`` the rate to detect, each event adds its log-likelihood ratio, ``ln(p1/p0)`` for an
error and ``ln((1-p1)/(1-p0))`` (negative) for a success, to a sum kept at or above 0; the
sum crossing ``threshold`` is the alert. It detects a rise to ``p1`` in about
``threshold / (p1 ln(p1/p0) + (1-p1) ln((1-p1)/(1-p0)))`` events (~210 for 0.5 % -> 5 %
with the defaults), the fewest any test can with the same false-alarm rate.

``p0`` is learnt: the mean of the first ``warmup`` events, then an exponentially weighted
mean over ``span`` events, held at or above ``floor`` (with a rate near 0 a single error
would be a huge ratio). The slow mean follows the daily cycle of benign traffic, not a
jump: 200 events into a tenfold rise it has moved by about 2 %. After an alert the sum
restarts at 0 and ``p0`` is re-learnt from the new level.

Statistic: the CUSUM sum; threshold: ``threshold``.

>>> det = BernoulliCUSUM("upstream_error", warmup=200, threshold=8.0)
>>> events = [{"upstream_status": 502 if i % 100 == 0 else 200} for i in range(1_000)]
>>> events += [{"upstream_status": 502 if i % 10 == 0 else 200} for i in range(1_000)]
>>> [(i, round(a.statistic, 1)) for i, e in enumerate(events) for a in det.update(e)]
[(1050, 9.4)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from detectors.base import Alert, Observation, ParamError
from detectors.features import Feature


@dataclass(frozen=True, slots=True)
class BernoulliCUSUMParams:
    # Measured in tests/detectors/test_drift.py: no alarm in 1,000,000 benign events
    # (0.5 % errors +-50 % over a day, two generators), 0.5 % -> 5 % in 144-339 events.
    factor: float = 10.0  # the rise to detect: p1 = factor x p0
    threshold: float = 15.0
    warmup: int = 2_000
    span: int = 10_000
    floor: float = 0.001

    def __post_init__(self) -> None:
        if not 1.0 < self.factor <= 1_000.0:
            raise ParamError("factor", f"must be in (1, 1000], got {self.factor}")
        if not self.threshold > 0:
            raise ParamError("threshold", f"must be > 0, got {self.threshold}")
        if self.warmup < 100:
            raise ParamError("warmup", f"must be >= 100, got {self.warmup}")
        if self.span < self.warmup:
            raise ParamError("span", f"must be >= warmup ({self.warmup}), got {self.span}")
        if not 0.0 < self.floor < 0.1:
            raise ParamError("floor", f"must be in (0, 0.1), got {self.floor}")


class BernoulliCUSUM:
    """Bernoulli CUSUM on a 0/1 feature (see the module docstring)."""

    kind: ClassVar[str] = "drift"
    type_name: ClassVar[str] = "bernoulli_cusum"

    def __init__(self, feature: str = "upstream_error", *, name: str | None = None,
                 transform: str = "none", **params: Any) -> None:
        if transform != "none":
            raise ParamError("transform", "must be none (the feature is 0/1)")
        self.params = BernoulliCUSUMParams(**params)
        self.feature = Feature.parse(feature)
        self.name = name or f"{self.type_name}:{feature}"
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.hits = 0
        self.p0 = 0.0
        self.sum = 0.0

    def _x(self, event: Mapping[str, Any]) -> float | None:
        x = self.feature.number(event)
        return None if x is None or x not in (0.0, 1.0) else x

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        x = self._x(event)
        if x is None:
            return []
        p = self.params
        self.n += 1
        if self.n <= p.warmup:
            self.hits += int(x)
            if self.n == p.warmup:
                self.p0 = self.hits / p.warmup
            return []
        # A baseline near 1 (every request failed during warm-up: a model still loading)
        # leaves no higher rate to detect; p0 keeps learning and the test resumes.
        p0 = min(max(self.p0, p.floor), 1.0 - p.floor)
        p1 = min(p.factor * p0, 1.0 - p.floor / 2)
        llr = math.log(p1 / p0) if x else math.log((1.0 - p1) / (1.0 - p0))
        self.sum = max(0.0, self.sum + llr) if p1 > p0 else 0.0
        self.p0 += (x - self.p0) / p.span
        if self.sum <= p.threshold:
            return []
        statistic = self.sum
        windows = {"warmup": p.warmup, "span": p.span}
        details = {"p0": round(p0, 6), "p1": round(p1, 6), "factor": p.factor}
        self.reset()  # re-learn the rate from the new level
        return [Alert(self.name, "warning",
                      f"{self.feature.name}: rate rose above {p0:.4g} (CUSUM for x{p.factor:g})",
                      details, kind=self.kind, detector_type=self.type_name,
                      feature=self.feature.name, statistic=statistic, threshold=p.threshold,
                      windows=windows)]

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: (the sum, threshold); None while learning ``p0``."""
        if self._x(event) is None:
            return None
        return (self.sum if self.n > self.params.warmup else None), self.params.threshold
