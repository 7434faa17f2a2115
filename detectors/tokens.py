"""Unusual token usage per client relative to the population (see ``detectors.abuse``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detectors.abuse import _Abuse
from detectors.base import Alert, Observation
from detectors.clients import ClientTable, check, client_of, zeros4
from detectors.features import Feature


@dataclass(frozen=True, slots=True)
class TokenUsageParams:
    input_feature: str = "features.input_tokens"
    output_feature: str = "features.output_tokens"
    quantile: float = 0.99  # a request is large above factor x this population quantile
    factor: float = 1.5
    keep: float = 0.8  # per-client score: score x keep + (1 if large)
    min_score: float = 4.0  # ≈ 6 large requests in a row, or most of a client's recent ones
    warmup: int = 1_000  # population events before anything is judged
    half_life: int = 20_000  # population histogram halves every this many events
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        for key in ("input_feature", "output_feature"):
            Feature.parse(getattr(self, key))
        check(0.5 <= self.quantile < 1, "quantile", "must be in [0.5, 1)")
        check(self.factor >= 1, "factor", "must be >= 1")
        check(0 < self.keep < 1, "keep", "must be in (0, 1)")
        check(0 < self.min_score < 1 / (1 - self.keep), "min_score",
              "must be > 0 and < 1 / (1 - keep), the most a score can reach")
        check(self.warmup >= 100, "warmup", "must be >= 100")
        check(self.half_life >= self.warmup, "half_life", "must be >= warmup")
        check(self.max_clients >= 1, "max_clients", "must be >= 1")


_BUCKETS = 8  # per octave: quantiles to within 9 %


class _LogHistogram:
    """Counts on a log scale (8 buckets per doubling), halved every ``half_life``."""

    def __init__(self, half_life: int) -> None:
        self.counts = [0.0] * (_BUCKETS * 40)
        self.n = 0
        self.total = 0.0
        self.half_life = half_life
        self.cached: dict[float, float] = {}

    def add(self, x: float) -> None:
        i = min(len(self.counts) - 1, int(math.log2(x + 1.0) * _BUCKETS))
        self.counts[i] += 1.0
        self.total += 1.0
        self.n += 1
        if self.n % self.half_life == 0:
            self.counts = [c / 2 for c in self.counts]
            self.total /= 2
        if self.n % 256 == 0:
            self.cached.clear()

    def quantile(self, q: float) -> float:
        cached = self.cached.get(q)
        if cached is None:
            target, seen, i = q * self.total, 0.0, 0
            for i, c in enumerate(self.counts):  # noqa: B007 - i is the bucket found
                seen += c
                if seen >= target:
                    break
            cached = self.cached[q] = 2.0 ** ((i + 1) / _BUCKETS) - 1.0  # bucket's top
        return cached


class TokenUsage(_Abuse):
    """Clients whose requests are persistently larger (input or output tokens) than the
    population's: token flooding, context stuffing, max-output farming.

    A request is *large* above ``factor`` x the population's ``quantile`` (a decaying
    log histogram, refreshed every 256 events); the statistic is the client's score
    (``score x keep + 1`` per large request, ``x keep`` otherwise), threshold
    ``min_score``. One big request is normal; a client whose requests keep being big is
    not. A flagged client's requests are left out of the population until it calms down.

    >>> det = TokenUsage(warmup=100)
    >>> normal = [{"client_id": f"c{i % 9}", "features": {"input_tokens": 100 + i % 50}}
    ...           for i in range(300)]
    >>> flood = [{"client_id": "f", "features": {"input_tokens": 8000}}] * 10
    >>> [(i, a.feature) for i, e in enumerate(normal + flood) for a in det.update(e)]
    [(307, 'features.input_tokens')]

    ``observe`` (see ``detectors.base``): the event's client's larger score (input or
    output) and ``min_score``; ``(None, min_score)`` while the population warms up.

    >>> [round(x, 2) for x in det.observe(flood[-1])], det.observe({"client_id": "f"})
    ([4.46, 4.0], None)
    """

    type_name = "token_usage"

    def __init__(self, *, name: str = "token_usage", **params: Any) -> None:
        self.params = TokenUsageParams(**params)
        self.name = name
        self.sides = (Feature.parse(self.params.input_feature),
                      Feature.parse(self.params.output_feature))
        self.reset()

    def reset(self) -> None:
        p = self.params
        self.population = (_LogHistogram(p.half_life), _LogHistogram(p.half_life))
        # [input score, output score, input alerting, output alerting]
        self.clients: ClientTable[list[float]] = ClientTable(zeros4, p.max_clients)

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        p, alerts = self.params, []
        state: list[float] | None = None
        for side, (feature, population) in enumerate(zip(self.sides, self.population,
                                                         strict=True)):
            x = feature.number(event)
            if x is None or x < 0:
                continue
            if population.n < p.warmup:
                population.add(x)
                continue
            if state is None:
                state = self.clients.get(client_of(event))
            line = p.factor * population.quantile(p.quantile)
            if not state[2 + side]:
                # A flagged client's requests stay out of the population: a sustained
                # flood would otherwise become the population's normal.
                population.add(x)
            state[side] = state[side] * p.keep + (x > line)
            if state[2 + side]:
                state[2 + side] = float(state[side] > p.min_score / 2)
            elif state[side] >= p.min_score:
                state[2 + side] = 1.0
                client = client_of(event)
                alerts.append(self._alert(
                    f"client {client} keeps sending large requests: {feature.name} {x:g}"
                    f" > {line:.4g} ({p.factor:g} x population p{p.quantile * 100:g})",
                    state[side], p.min_score, client, {"half_life": p.half_life},
                    {"value": x, "large_above": line}, feature=feature.name))
        return alerts

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: the event's client's larger score, ``min_score``."""
        if all(x is None or x < 0 for x in (side.number(event) for side in self.sides)):
            return None
        state = self.clients.states.get(client_of(event))
        min_score = float(self.params.min_score)
        return (None, min_score) if state is None else (max(state[0], state[1]), min_score)
