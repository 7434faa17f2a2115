"""What ``replay`` keeps of one detector's run: counts for the table, and for the report
its statistic and threshold over the events, downsampled, and every alert.

``Series`` keeps at most ``2 x buckets`` points whatever the number of events: events are
grouped into buckets of equal width (in event indices), and each bucket keeps its lowest
and its highest statistic with their thresholds (so spikes and dips both show: a p-value
alerts by dipping); when there are more than ``buckets`` buckets, neighbours merge and
the width doubles.

>>> series = Series(buckets=4)
>>> for i in range(100):
...     series.add(i, 50.0 if i == 37 else float(i % 7), 10.0)
>>> series.width, len(series.points()) <= 8, max(p[1] for p in series.points())
(32, True, 50.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

Point = tuple[int, float | None, float | None]  # event index, statistic, threshold
BUCKETS: Final = 1_000  # per series: at most 2,000 points


class _Bucket:
    __slots__ = ("high", "idle", "k", "low")

    def __init__(self, k: int) -> None:
        self.k = k
        self.low: Point | None = None  # the lowest statistic
        self.high: Point | None = None  # the highest
        self.idle: Point | None = None  # the last point without a statistic


class Series:
    def __init__(self, buckets: int = BUCKETS) -> None:
        self.limit = buckets
        self.width = 1
        self.buckets: list[_Bucket] = []

    def add(self, index: int, statistic: float | None, threshold: float | None) -> None:
        k = index // self.width
        while not self.buckets or self.buckets[-1].k != k:
            if len(self.buckets) < self.limit:
                self.buckets.append(_Bucket(k))
                break
            self._halve()
            k = index // self.width
        bucket, point = self.buckets[-1], (index, statistic, threshold)
        if statistic is None:
            bucket.idle = point
            return
        if bucket.low is None or statistic < _stat(bucket.low):
            bucket.low = point
        if bucket.high is None or statistic > _stat(bucket.high):
            bucket.high = point

    def _halve(self) -> None:
        self.width *= 2
        merged: list[_Bucket] = []
        for bucket in self.buckets:
            k = bucket.k // 2
            if not merged or merged[-1].k != k:
                bucket.k = k
                merged.append(bucket)
                continue
            into = merged[-1]
            into.low = _pick(into.low, bucket.low, min)
            into.high = _pick(into.high, bucket.high, max)
            into.idle = bucket.idle or into.idle
        self.buckets = merged

    def points(self) -> list[Point]:
        """In index order: each bucket's lowest and highest statistic, or, for a bucket
        with none, its last threshold."""
        out: list[Point] = []
        for bucket in self.buckets:
            kept = {p for p in (bucket.low, bucket.high) if p is not None}
            if not kept and bucket.idle is not None:
                kept = {bucket.idle}
            out.extend(sorted(kept, key=lambda p: p[0]))
        return out


def _stat(point: Point) -> float:
    return point[1] if point[1] is not None else 0.0


def _pick(a: Point | None, b: Point | None, better: Callable[..., Point]) -> Point | None:
    if a is None or b is None:
        return a or b
    return better(a, b, key=_stat)


class TimeAxis:
    """Timestamps of about ``limit`` evenly spaced event indices (for axis labels).

    >>> axis = TimeAxis(limit=4)
    >>> for i in range(10):
    ...     axis.add(i, f"t{i}")
    >>> axis.near(5), axis.stride
    ('t4', 4)
    """

    def __init__(self, limit: int = 1_000) -> None:
        self.limit = limit
        self.stride = 1
        self.stamps: list[tuple[int, str]] = []

    def add(self, index: int, stamp: str | None) -> None:
        if stamp is None or index % self.stride:
            return
        if len(self.stamps) >= self.limit:
            self.stride *= 2
            self.stamps = [(i, s) for i, s in self.stamps if i % self.stride == 0]
            if index % self.stride:
                return
        self.stamps.append((index, stamp))

    def near(self, index: int) -> str | None:
        """The timestamp of the closest kept index at or before ``index``, else the first."""
        best = None
        for i, stamp in self.stamps:
            if i > index:
                break
            best = stamp
        return best or (self.stamps[0][1] if self.stamps else None)


@dataclass
class Marker:
    index: int
    statistic: float | None
    threshold: float | None
    label: str


@dataclass
class DetectorRun:
    """One detector over the replay: the table's row and the report's plot."""

    name: str
    type: str
    mode: str
    observable: bool  # has ``observe``: skipped events are known
    alerts: int = 0
    clients: set[str] = field(default_factory=set)
    first: tuple[int, str | None] | None = None  # event index, timestamp
    skipped: int = 0
    series: Series = field(default_factory=Series)
    markers: list[Marker] = field(default_factory=list)

    def alert(self, index: int, stamp: str | None, line: int, statistic: float | None,
              threshold: float | None, client: str | None, message: str) -> None:
        self.alerts += 1
        if client is not None:
            self.clients.add(client)
        if self.first is None:
            self.first = (index, stamp)
        label = f"event {index} (line {line}) {stamp or ''}: {message}"
        self.markers.append(Marker(index, statistic, threshold, label))
