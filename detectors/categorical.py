"""Categorical drift: a chi-square test of a recent window against a reference window.

The reference is the ``reference_size`` events just before the ``window_size`` most recent
ones (a lagged sliding window, not a frozen snapshot): slow seasonal change, such as a
route mix that follows the time of day, moves both windows together and is not drift;
a change faster than the reference span is. Every ``check_every`` events, once both
windows are full, the 2 x K table of counts (reference vs recent, K categories) gets a
chi-square test of homogeneity. Categories expected fewer than ``min_expected`` times in
either window are pooled into one column, so rare and brand-new values still count
without the test's small-count inflation. After an alert both windows start over (no
repeated alerts on one change; the detector is blind for ``reference_size +
window_size`` events).

Memory is bounded: the two windows, and at most ``max_categories`` distinct values
(later newcomers share one ``(other)`` bucket).

An alert gives each category's share in both windows. A feature that reads raw content
(``payload.*``, ``headers.*``: a body field may be a name or an e-mail) names its
categories by order of first sight instead (``#1``, ``#2``...): alerts are recorded
and published, and must never carry what the profile would have masked.

The statistic is the chi-square value; the threshold is its critical value at ``alpha``
for the table's degrees of freedom. ``observe`` (see ``detectors.base``) computes the
same test on the current windows after any event, not only every ``check_every``:
``(None, None)`` until the reference window is full.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from scipy import special  # type: ignore[import-untyped]

from detectors.base import Alert, Observation, ParamError
from detectors.features import Feature

OTHER = "(other)"


@dataclass(frozen=True, slots=True)
class ChiSquareParams:
    reference_size: int = 2000
    window_size: int = 200
    check_every: int = 10
    alpha: float = 1e-7
    min_expected: float = 5.0
    max_categories: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ParamError("alpha", f"must be between 0 and 1 (exclusive), got {self.alpha}")
        if self.window_size < 20:
            raise ParamError("window_size", f"must be >= 20, got {self.window_size}")
        if self.reference_size < self.window_size:
            raise ParamError("reference_size", "must be >= window_size")
        if not 0 < self.check_every <= self.window_size:
            raise ParamError("check_every", "must be > 0 and <= window_size")
        if self.min_expected <= 0:
            raise ParamError("min_expected", "must be > 0")
        if not 2 <= self.max_categories <= 1000:
            raise ParamError("max_categories", "must be between 2 and 1000")


class ChiSquareDrift:
    """Windowed chi-square drift test on one categorical feature.

    >>> import random
    >>> rng = random.Random(7)
    >>> det = ChiSquareDrift("route", reference_size=500, window_size=200)
    >>> mix = [["/v1/chat"] * 8 + ["/v1/embed"] * 2, ["/v1/chat"] * 5 + ["/v1/embed"] * 5]
    >>> events = [{"route": rng.choice(mix[i >= 1000])} for i in range(1500)]
    >>> [(i, a.feature) for i, e in enumerate(events) for a in det.update(e)]
    [(1149, 'route')]
    >>> det.observe(events[-1]), det.observe({})  # windows refilling; no route: skipped
    ((None, None), None)

    Values read from a body are not quoted:

    >>> det = ChiSquareDrift("payload.request.user", reference_size=500, window_size=200)
    >>> pick = lambda i: rng.choice(["ann@x.eu", "bob@y.eu"][: 1 + (i >= 700)])
    >>> users = [{"payload": {"request": {"user": pick(i)}}} for i in range(1000)]
    >>> [sorted(a.details["shares_reference_recent"]) for e in users for a in det.update(e)]
    [['#1', '#2']]
    """

    kind: ClassVar[str] = "drift"
    type_name: ClassVar[str] = "chi_square"

    def __init__(
        self, feature: str, *, name: str | None = None, transform: str = "none", **params: Any
    ) -> None:
        if transform != "none":
            raise ParamError("transform", "categorical features take no transform")
        self.params = ChiSquareParams(**params)
        self.feature = Feature.parse(feature)
        self.name = name or f"{self.type_name}:{feature}"
        self.reset()

    def reset(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._recent: deque[int] = deque()
        self._reference: deque[int] = deque()
        self._recent_counts: list[int] = []
        self._reference_counts: list[int] = []
        self._n = 0

    def _id(self, value: str) -> int:
        found = self._ids.get(value)
        if found is not None:
            return found
        if len(self._names) >= self.params.max_categories - 1:
            value = OTHER
            if value in self._ids:
                return self._ids[value]
        self._ids[value] = len(self._names)
        self._names.append(value)
        self._recent_counts.append(0)
        self._reference_counts.append(0)
        return self._ids[value]

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        value = self.feature.category(event)
        if value is None:
            return []
        p = self.params
        i = self._id(value)
        if len(self._recent) >= p.window_size:
            moved = self._recent.popleft()
            self._recent_counts[moved] -= 1
            if len(self._reference) >= p.reference_size:
                self._reference_counts[self._reference.popleft()] -= 1
            self._reference.append(moved)
            self._reference_counts[moved] += 1
        self._recent.append(i)
        self._recent_counts[i] += 1
        self._n += 1
        if self._n % p.check_every or len(self._reference) < p.reference_size:
            return []
        return self._test()

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: (chi-square, critical value) of the current windows."""
        if self.feature.category(event) is None:
            return None
        if len(self._reference) < self.params.reference_size:
            return None, None
        found = self._chi2()
        if found is None:
            return None, None
        return found[0], _critical(found[1], self.params.alpha)

    def _chi2(self) -> tuple[float, int] | None:
        """The chi-square value and degrees of freedom, ``None`` with fewer than 2 columns."""
        p = self.params
        ref_total, rec_total = len(self._reference), len(self._recent)
        total = ref_total + rec_total
        columns: list[tuple[int, int]] = []
        pooled_ref = pooled_rec = 0
        for ref, rec in zip(self._reference_counts, self._recent_counts, strict=True):
            both = ref + rec
            if both == 0:
                continue
            if min(both * ref_total, both * rec_total) < p.min_expected * total:
                pooled_ref, pooled_rec = pooled_ref + ref, pooled_rec + rec
            else:
                columns.append((ref, rec))
        if pooled_ref + pooled_rec:
            columns.append((pooled_ref, pooled_rec))
        if len(columns) < 2:
            return None
        chi2 = 0.0
        for ref, rec in columns:
            both = ref + rec
            e_ref, e_rec = both * ref_total / total, both * rec_total / total
            chi2 += (ref - e_ref) ** 2 / e_ref + (rec - e_rec) ** 2 / e_rec
        return chi2, len(columns) - 1

    def _test(self) -> list[Alert]:
        p = self.params
        found = self._chi2()
        if found is None:
            return []
        chi2, dof = found
        ref_total, rec_total = len(self._reference), len(self._recent)
        p_value = float(special.chdtrc(dof, chi2))
        if p_value > p.alpha:
            return []
        critical = _critical(dof, p.alpha)
        hide = self.feature.raw_content
        shares = {
            (f"#{i + 1}" if hide and name != OTHER else name): [
                round(self._reference_counts[i] / ref_total, 4),
                round(self._recent_counts[i] / rec_total, 4),
            ]
            for name, i in self._ids.items()
        }
        self.reset()
        return [
            Alert(
                self.name,
                "warning",
                f"{self.feature.name}: category mix changed (chi2={chi2:.1f}, p={p_value:.2g})",
                {"p_value": p_value, "dof": dof, "shares_reference_recent": shares},
                kind=self.kind,
                detector_type=self.type_name,
                feature=self.feature.name,
                statistic=chi2,
                threshold=critical,
                windows={"reference": ref_total, "recent": rec_total, "check_every": p.check_every},
            )
        ]


@lru_cache(maxsize=256)
def _critical(dof: int, alpha: float) -> float:
    """The chi-square value a table with ``dof`` degrees of freedom exceeds with
    probability ``alpha``."""
    return float(special.chdtri(dof, alpha))
