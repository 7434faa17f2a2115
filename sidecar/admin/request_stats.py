"""Per-request metrics as plain numbers, turned into Prometheus samples at scrape time.

prometheus-client takes a lock and builds a label key for every ``inc``/``observe``;
five of those per request measured about 10 µs of the sidecar's CPU per request. Here
the request path adds to lists owned by the event loop (no lock: the scrape runs on the
same loop), and ``collect`` builds the families when ``/metrics`` is read. Names and
the buckets come from ``sidecar.telemetry``, which builds this collector.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, value: float, buckets: Sequence[float]) -> None:
        self.counts[bisect.bisect_left(buckets, value)] += 1
        self.total += value

    def cumulative(self, buckets: Sequence[float]) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, count in zip((*buckets, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class RequestStats(Collector):
    """Requests, durations, outcomes, upstream time, time to first byte, in flight.

    ``names``: for each of ``requests``, ``duration``, ``outcomes``, ``upstream``, ``ttfb``
    and ``in_flight``, the metric's name and help (given by ``sidecar.telemetry``).
    """

    def __init__(self, names: Mapping[str, tuple[str, str]], model_version: str,
                 buckets: Sequence[float]) -> None:
        self.names = dict(names)
        self.model_version = model_version
        self.buckets = tuple(buckets)
        self.in_flight = 0
        self._requests: dict[tuple[str, int], list[int]] = {}
        self._durations: dict[tuple[str, int], _Histogram] = {}
        self._outcomes: dict[str, list[int]] = {}
        self._upstream: dict[str, _Histogram] = {}
        self._ttfb: dict[str, _Histogram] = {}

    def _histogram(self, table: dict[str, _Histogram], key: str) -> _Histogram:
        histogram = table.get(key)
        if histogram is None:
            histogram = table[key] = _Histogram(len(self.buckets) + 1)
        return histogram

    def observe(
        self, route: str, status: int, outcome: str, seconds: float,
        upstream_s: float | None = None, ttfb_s: float | None = None,
    ) -> None:
        key = (route, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = [0]
            self._durations[key] = _Histogram(len(self.buckets) + 1)
        counter[0] += 1
        self._durations[key].observe(seconds, self.buckets)
        outcomes = self._outcomes.get(outcome)
        if outcomes is None:
            outcomes = self._outcomes[outcome] = [0]
        outcomes[0] += 1
        if upstream_s is not None:
            self._histogram(self._upstream, route).observe(upstream_s, self.buckets)
        if ttfb_s is not None:
            self._histogram(self._ttfb, route).observe(ttfb_s, self.buckets)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        names, labels = self.names, ["route", "status", "model_version"]
        requests = CounterMetricFamily(*names["requests"], labels=labels)
        durations = HistogramMetricFamily(*names["duration"], labels=labels)
        for (route, status), count in list(self._requests.items()):
            values = [route, str(status), self.model_version]
            requests.add_metric(values, count[0])
            histogram = self._durations[(route, status)]
            durations.add_metric(values, histogram.cumulative(self.buckets), histogram.total)
        outcomes = CounterMetricFamily(*names["outcomes"], labels=["outcome"])
        for outcome, count in list(self._outcomes.items()):
            outcomes.add_metric([outcome], count[0])
        yield from (requests, durations, outcomes)
        for key, table in (("upstream", self._upstream), ("ttfb", self._ttfb)):
            family = HistogramMetricFamily(*names[key], labels=["route"])
            for route, histogram in list(table.items()):
                family.add_metric([route], histogram.cumulative(self.buckets), histogram.total)
            yield family
        yield GaugeMetricFamily(*names["in_flight"], value=self.in_flight)
