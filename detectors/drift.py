"""Numeric drift: river's ADWIN, Page-Hinkley and KSWIN over one feature of each event.

Each wraps one river detector and works around its known weaknesses (issue 5):

- ``ADWINDrift``: river checks for a cut only every ``clock`` samples (32 by default),
  which adds up to ``clock`` events of delay; ADWIN's window also grows without bound on
  stationary data and, long enough, would call a daily cycle drift. We lower the clock
  and cap the window with a staggered pair (a shadow ADWIN starts when the main one is
  half full and replaces it when it is full), so memory is bounded and at least
  ``max_window / 2`` events of history are always there to compare against.
- ``PageHinkleyDrift``: its ``delta`` and ``threshold`` are in the feature's units, so
  one setting cannot fit latency in ms and a 0/1 rate. We learn a location and scale
  over ``warmup`` events (median, MAD) and feed river standardised values; ``delta`` and
  ``threshold`` are then in standard deviations. Direction is explicit (``both`` unless
  configured; older river versions watched increases only). River compares each value
  with the mean since its last reset, so a daily cycle accumulates into false alarms
  (measured: ~20 per 100,000 benign events); with ``detrend`` > 0 the location follows
  an exponential moving average of that span (in events), slow next to an abrupt change
  (caught in a few dozen events) and fast next to a daily cycle. A gradual drift still
  shows: the average lags a ramp by slope x span.
- ``KSWINDrift``: one scipy Kolmogorov-Smirnov test per update (~0.25-0.6 ms). We feed it
  every ``stride``-th value, which divides its cost by ``stride``; its window then spans
  ``window_size * stride`` events.

The statistic each alert reports: ADWIN, the absolute change of the window mean across
the cut (threshold: ``delta``, the cut's confidence); Page-Hinkley, the cumulative sum in
standard deviations (threshold: ``threshold``); KSWIN, the test's p-value (threshold:
``alpha``, alert when below).

``observe`` (the replay report's curve, see ``detectors.base``) gives the same quantity
where one exists between alerts: Page-Hinkley's cumulative sum in the configured
direction against ``threshold``; KSWIN's last p-value against ``alpha``. ADWIN's
statistic exists only at a cut, so ``observe`` runs ADWIN's test at one cut, the
boundary of the shadow window: the change of the window mean a cut there would make
(the alert's statistic) against the change that ADWIN's bound at ``delta`` allows for
that cut (river's formula). ADWIN tests every cut and alerts on the first that crosses,
usually one nearer the change, so an alert can come before this curve meets its line.
Each is ``None`` while there is nothing to compare: warm-up, window filling, no shadow.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from river import drift

from detectors.base import Alert, Observation, ParamError
from detectors.features import TRANSFORMS, Feature

MAX_MAGNITUDE = 1e100  # larger values are skipped: their squares would overflow the sums

_Found = tuple[str, float, float, dict[str, int], dict[str, Any]]


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ParamError(key, f"must be > 0, got {value}")


def _probability(key: str, value: float) -> None:
    if not 0 < value < 1:
        raise ParamError(key, f"must be between 0 and 1 (exclusive), got {value}")


class _NumericDrift:
    """Reads the feature, applies the transform, skips events without a number."""

    kind: ClassVar[str] = "drift"
    type_name: ClassVar[str] = ""

    def __init__(self, feature: str, name: str | None, transform: str) -> None:
        if transform not in TRANSFORMS:
            raise ParamError("transform", f"must be one of {sorted(TRANSFORMS)}")
        self.feature = Feature.parse(feature)
        self.transform = transform
        self._apply = TRANSFORMS[transform]
        self.name = name or f"{self.type_name}:{feature}"
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def _observe(self, x: float) -> _Found | None:
        raise NotImplementedError

    def _statistic(self) -> Observation:
        raise NotImplementedError

    def _usable(self, x: float | None) -> float | None:
        """The transformed value, or ``None`` to skip it: not finite, or beyond
        ``MAX_MAGNITUDE`` (one 1e308 makes the windows' variance infinite, and the
        detector blind until the window rotates; no real measure is that large)."""
        if x is None:
            return None
        x = self._apply(x)
        return x if math.isfinite(x) and abs(x) <= MAX_MAGNITUDE else None

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: (statistic, threshold); ``None`` if it had no number."""
        if self._usable(self.feature.number(event)) is None:
            return None
        return self._statistic()

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        x = self._usable(self.feature.number(event))
        if x is None:
            return []
        found = self._observe(x)
        if found is None:
            return []
        message, statistic, threshold, windows, details = found
        return [
            Alert(
                self.name,
                "warning",
                f"{self.feature.name}: {message}",
                details,
                kind=self.kind,
                detector_type=self.type_name,
                feature=self.feature.name,
                statistic=statistic,
                threshold=threshold,
                windows=windows,
            )
        ]


@dataclass(frozen=True, slots=True)
class ADWINParams:
    # Defaults measured in tests/detectors/test_drift.py (benign traffic with a daily cycle).
    delta: float = 1e-5
    clock: int = 4
    max_window: int = 2_000
    grace_period: int = 10
    min_window_length: int = 5

    def __post_init__(self) -> None:
        _probability("delta", self.delta)
        for key in ("clock", "grace_period", "min_window_length"):
            _positive(key, getattr(self, key))
        if self.max_window < 4 * self.grace_period or self.max_window < 100:
            raise ParamError("max_window", "must be >= 100 and >= 4 * grace_period")


class ADWINDrift(_NumericDrift):
    """ADWIN (adaptive windowing) on one numeric feature, window capped.

    >>> import random
    >>> rng = random.Random(7)
    >>> det = ADWINDrift("latency_ms", delta=0.002, clock=8)
    >>> events = [{"latency_ms": rng.gauss(100 if i < 500 else 130, 10)} for i in range(1000)]
    >>> [(i, a.feature) for i, e in enumerate(events) for a in det.update(e)]
    [(511, 'latency_ms')]
    >>> det, seen = ADWINDrift("latency_ms", max_window=400), []
    >>> for e in events[:500]:
    ...     _ = det.update(e); seen.append(det.observe(e))
    >>> seen[100], all(s < t for s, t in seen[200:] if s is not None)  # no shadow yet; no drift
    ((None, None), True)
    """

    type_name = "adwin"

    def __init__(
        self, feature: str, *, name: str | None = None, transform: str = "none", **params: Any
    ) -> None:
        self.params = ADWINParams(**params)
        super().__init__(feature, name, transform)

    def _new(self) -> drift.ADWIN:
        p = self.params
        return drift.ADWIN(  # type: ignore[no-untyped-call]
            delta=p.delta,
            clock=p.clock,
            grace_period=p.grace_period,
            min_window_length=p.min_window_length,
        )

    def reset(self) -> None:
        self._main = self._new()
        self._main_n = 0
        self._shadow: drift.ADWIN | None = None

    def _observe(self, x: float) -> _Found | None:
        before, width = self._main.estimation, self._main.width
        self._main.update(x)  # type: ignore[no-untyped-call]
        self._main_n += 1
        if self._main.drift_detected:
            after, kept = self._main.estimation, self._main.width
            self.reset()
            change = abs(after - before)
            windows = {"width": int(width), "kept": int(kept), "max_window": self.params.max_window}
            details = {"mean_before": before, "mean_after": after, "transform": self.transform}
            message = f"mean changed {before:.4g} -> {after:.4g}"
            return message, change, self.params.delta, windows, details
        if self._shadow is not None:
            self._shadow.update(x)  # type: ignore[no-untyped-call]
        elif self._main_n >= self.params.max_window // 2:
            self._shadow = self._new()
        if self._main_n >= self.params.max_window and self._shadow is not None:
            self._main, self._shadow = self._shadow, self._new()
            self._main_n -= self.params.max_window // 2
        return None

    def _statistic(self) -> Observation:
        main, shadow, least = self._main, self._shadow, self.params.min_window_length
        if shadow is None:
            return None, None
        width, recent = main.width, shadow.width  # the shadow holds main's latest events
        older = width - recent
        if recent < least or older < least:
            return None, None
        change = abs(shadow.total / recent - main.total / width)
        # ADWIN's cut bound (Bifet & Gavalda's, as river computes it): variance-aware
        # Hoeffding at delta / log(width), sub-windows counted from min_window_length. It
        # bounds the difference of the two parts' means; a cut changes the window mean by
        # that difference x older / width.
        log_term = math.log(2.0 * math.log(width) / self.params.delta)
        m = 1.0 / (older - least + 1) + 1.0 / (recent - least + 1)
        variance = main.variance / width  # river's ``variance`` is the sum of squares
        epsilon = math.sqrt(2.0 * m * variance * log_term) + 2.0 / 3.0 * log_term * m
        return float(change), float(epsilon * older / width)


@dataclass(frozen=True, slots=True)
class PageHinkleyParams:
    warmup: int = 500
    delta: float = 0.5
    threshold: float = 15.0
    alpha: float = 1.0
    min_instances: int = 30
    direction: str = "both"
    detrend: int = 500
    clip: float = 3.0

    def __post_init__(self) -> None:
        if self.warmup < 10:
            raise ParamError("warmup", f"must be >= 10, got {self.warmup}")
        _positive("delta", self.delta)
        _positive("threshold", self.threshold)
        _positive("min_instances", self.min_instances)
        if not 0 < self.alpha <= 1:
            raise ParamError("alpha", f"must be in (0, 1], got {self.alpha}")
        _positive("clip", self.clip)
        if self.detrend < 0:
            raise ParamError("detrend", f"must be >= 0 (0: off), got {self.detrend}")
        if self.direction not in ("up", "down", "both"):
            raise ParamError("direction", "must be up, down or both")


class PageHinkleyDrift(_NumericDrift):
    """Page-Hinkley (CUSUM) on one standardised numeric feature, both directions.

    >>> import random
    >>> rng = random.Random(7)
    >>> det = PageHinkleyDrift("response_bytes", transform="log1p")
    >>> sizes = [rng.lognormvariate(7 if i < 600 else 6.3, 0.5) for i in range(1000)]
    >>> [(i, a.details["direction"]) for i, s in enumerate(sizes)
    ...  for a in det.update({"response_bytes": s})]
    [(616, 'down')]
    >>> det.observe({"response_bytes": 100.0}), det.observe({})  # re-learning; no number
    ((None, 15.0), None)
    """

    type_name = "page_hinkley"

    def __init__(
        self, feature: str, *, name: str | None = None, transform: str = "none", **params: Any
    ) -> None:
        self.params = PageHinkleyParams(**params)
        super().__init__(feature, name, transform)

    def reset(self) -> None:
        self._warm: list[float] = []
        self._center = 0.0
        self._scale = 1.0
        self._ph: drift.PageHinkley | None = None

    def _start(self) -> None:
        p, values = self.params, self._warm
        self._center = statistics.median(values)
        mad = statistics.median(abs(v - self._center) for v in values) * 1.4826
        # A 0/1 or mostly-constant feature has MAD 0: fall back to the standard deviation.
        self._scale = mad or statistics.pstdev(values) or 1.0
        self._warm = []
        self._ph = drift.PageHinkley(
            min_instances=p.min_instances,
            delta=p.delta,
            threshold=p.threshold,
            alpha=p.alpha,
            mode=p.direction,
        )

    def _observe(self, x: float) -> _Found | None:
        ph = self._ph
        if ph is None:
            self._warm.append(x)
            if len(self._warm) >= self.params.warmup:
                self._start()
            return None
        # Winsorised: one outlier (an error's tiny body) moves the sums by at most ``clip``.
        z = (x - self._center) / self._scale
        ph.update(max(-self.params.clip, min(self.params.clip, z)))  # type: ignore[no-untyped-call]
        if self.params.detrend:
            self._center += (x - self._center) / self.params.detrend
        if not ph.drift_detected:
            return None
        up = float(ph._sum_increase - ph._min_increase)
        down = float(ph._max_decrease - ph._sum_decrease)
        direction = "up" if up >= down and self.params.direction != "down" else "down"
        details = {
            "direction": direction,
            "center": self._center,
            "scale": self._scale,
            "transform": self.transform,
        }
        windows = {"warmup": self.params.warmup, "min_instances": self.params.min_instances}
        self.reset()  # re-learn location and scale after the change
        return f"mean shifted {direction}", max(up, down), self.params.threshold, windows, details

    def _statistic(self) -> Observation:
        ph, threshold = self._ph, self.params.threshold
        if ph is None or not ph._x_mean.n:
            return None, threshold  # learning location and scale
        up = float(ph._sum_increase - ph._min_increase)
        down = float(ph._max_decrease - ph._sum_decrease)
        direction = self.params.direction
        return (up if direction == "up" else down if direction == "down" else max(up, down),
                threshold)


@dataclass(frozen=True, slots=True)
class KSWINParams:
    alpha: float = 1e-5
    window_size: int = 100
    stat_size: int = 30
    stride: int = 16
    seed: int = 42

    def __post_init__(self) -> None:
        _probability("alpha", self.alpha)
        _positive("stride", self.stride)
        if not 0 < self.stat_size < self.window_size:
            raise ParamError("stat_size", "must be > 0 and < window_size")


class KSWINDrift(_NumericDrift):
    """KSWIN (Kolmogorov-Smirnov windowing) on every ``stride``-th value of a feature.

    >>> import random
    >>> rng = random.Random(7)
    >>> det = KSWINDrift("latency_ms", stride=2)
    >>> events = [{"latency_ms": rng.gauss(100 if i < 400 else 160, 10 if i < 400 else 40)}
    ...           for i in range(800)]
    >>> [(i, a.statistic < a.threshold) for i, e in enumerate(events) for a in det.update(e)]
    [(437, True)]
    >>> statistic, threshold = det.observe(events[-1]); statistic > threshold  # no change since
    True
    """

    type_name = "kswin"

    def __init__(
        self, feature: str, *, name: str | None = None, transform: str = "none", **params: Any
    ) -> None:
        self.params = KSWINParams(**params)
        super().__init__(feature, name, transform)

    def reset(self) -> None:
        p = self.params
        self._n = 0
        self._ks = drift.KSWIN(
            alpha=p.alpha, window_size=p.window_size, stat_size=p.stat_size, seed=p.seed
        )

    def _observe(self, x: float) -> _Found | None:
        self._n += 1
        if self._n % self.params.stride:
            return None
        self._ks.update(x)  # type: ignore[no-untyped-call]
        if not self._ks.drift_detected:
            return None
        p_value = float(self._ks.p_value)
        windows = {k: v for k, v in asdict(self.params).items() if k != "alpha" and k != "seed"}
        self.reset()
        details = {"transform": self.transform}
        message = f"distribution changed (KS p={p_value:.2g})"
        return message, p_value, self.params.alpha, windows, details

    def _statistic(self) -> Observation:
        if len(self._ks.window) < self.params.window_size:
            return None, self.params.alpha
        return float(self._ks.p_value), self.params.alpha  # the last test's
