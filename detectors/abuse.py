"""Abuse detectors per pseudonymous client and globally: request-rate bursts, error
probing; the shared ``_Abuse`` base. The others: ``detectors.tokens`` (unusual token
usage), ``detectors.injection`` (prompt-injection/jailbreak signatures),
``detectors.duplicates`` (near-duplicate prompts, model extraction).

They read only metadata and ``features`` (``detectors.text`` documents that contract:
no detector sees prompt text). Per-client state lives in a bounded LRU
(``detectors.clients``), so memory is bounded for any number of clients. Each alert's
``statistic`` and ``threshold`` are what was compared (each class says which); alerts
come once per episode: a client that crossed the line alerts again only after its
statistic fell back below half of it (hysteresis), so a burst is one alert, not 200.
``observe`` (see ``detectors.base``) gives the same per-client statistic and threshold
for the event's client after any event, alert or not: it only looks the client up.

Enforceable (issue 5, item 5): ``rate_burst`` and ``signatures`` decide from what is
known before the request is forwarded (client id, arrival time, the prompt's matched
rules) in O(1); the request path will call the same ``update`` on the request's partial
event. The others need the response (status, tokens) and only monitor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from detectors.base import Alert, Observation
from detectors.clients import ClientTable, check, client_of, event_time, zeros4


class _Abuse:
    type_name: ClassVar[str] = ""
    kind: ClassVar[str] = "abuse"

    name: str

    def _alert(
        self,
        message: str,
        statistic: float,
        threshold: float,
        client: str | None,
        windows: Mapping[str, int] | None = None,
        details: Mapping[str, Any] | None = None,
        severity: str = "warning",
        feature: str | None = None,
    ) -> Alert:
        return Alert(
            self.name,
            severity,
            message,
            dict(details or {}),
            kind=self.kind,
            detector_type=self.type_name,
            feature=feature,
            statistic=round(statistic, 6),
            threshold=round(threshold, 6),
            windows=dict(windows or {}),
            client_id=client,
        )


@dataclass(frozen=True, slots=True)
class RateBurstParams:
    short_s: float = 10.0  # time constant of the "now" rate, per client
    long_s: float = 3_600.0  # of the client's own baseline
    factor: float = 5.0  # burst: short-window count > factor x baseline over short_s ...
    min_count: float = 20.0  # ... and > min_count (≈ 2 req/s sustained at short_s = 10)
    global_short_s: float = 60.0
    global_factor: float = 4.0
    global_min_count: float = 30.0
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        for key in ("short_s", "long_s", "factor", "min_count", "global_short_s",
                    "global_factor", "global_min_count"):
            check(getattr(self, key) > 0, key, "must be > 0")
        check(self.long_s >= 10 * self.short_s, "long_s", "must be >= 10 x short_s")
        check(self.long_s >= 10 * self.global_short_s, "long_s", "must be >= 10 x global_short_s")
        check(self.max_clients >= 1, "max_clients", "must be >= 1")


class _Rate:
    """Two exponentially decayed counts of events (time constants short and long)."""

    __slots__ = ("alerting", "long", "short", "t")

    def __init__(self) -> None:
        self.t: float | None = None
        self.short = 0.0
        self.long = 0.0
        self.alerting = False

    def add(self, t: float, short_s: float, long_s: float) -> None:
        if self.t is None or t >= self.t:
            if self.t is not None:
                dt = t - self.t
                self.short *= math.exp(-dt / short_s)
                self.long *= math.exp(-dt / long_s)
            self.t = t
            self.short += 1.0
            self.long += 1.0
            return
        # Late (a replica's backlog, interleaved recordings): what it would weigh now had
        # it been counted in time; counted as new, a slow client's backlog looked a burst.
        age = self.t - t
        self.short += math.exp(-age / short_s)
        self.long += math.exp(-age / long_s)

    def burst(self, short_s: float, long_s: float, factor: float, floor: float) -> float | None:
        """The threshold when the short count crossed it (once per episode), else None."""
        threshold = max(floor, factor * self.long * short_s / long_s)
        if self.alerting:
            self.alerting = self.short > threshold / 2
            return None
        if self.short > threshold:
            self.alerting = True
            return threshold
        return None


class RateBurst(_Abuse):
    """Request-rate bursts per client and globally, against their own baselines.

    Statistic: the decayed event count over ``short_s`` seconds (≈ rate x short_s);
    threshold: ``max(min_count, factor x baseline rate x short_s)``, the baseline being
    the count decayed over ``long_s`` (the client's own, or everyone's for the global
    check). A new client has no baseline: ``min_count`` alone applies.

    >>> det = RateBurst(min_count=5, short_s=2, long_s=100, global_short_s=10,
    ...                 global_min_count=1000)
    >>> events = [{"client_id": "c", "timestamp": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}Z"}
    ...           for i in range(0, 60, 10)]
    >>> events += [{"client_id": "c", "timestamp": f"2025-01-01T00:01:{i // 10:02d}.{i % 10}Z"}
    ...            for i in range(20)]
    >>> [(i, a.message) for i, e in enumerate(events) for a in det.update(e)]
    [(11, 'request burst from client c: 5.3 > 5 (decayed count over 2 s)')]
    >>> [round(x, 2) for x in det.observe(events[-1])]  # the client's count and line, now
    [12.96, 5.0]
    """

    type_name = "rate_burst"

    def __init__(self, *, name: str = "rate_burst", **params: Any) -> None:
        self.params = RateBurstParams(**params)
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.clients: ClientTable[_Rate] = ClientTable(_Rate, self.params.max_clients)
        self.all = _Rate()

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        t = event_time(event)
        if t is None:
            return []
        p, client = self.params, client_of(event)
        state = self.clients.get(client)
        state.add(t, p.short_s, p.long_s)
        self.all.add(t, p.global_short_s, p.long_s)
        alerts = []
        line = state.burst(p.short_s, p.long_s, p.factor, p.min_count)
        if line is not None:
            windows = {"short_s": int(p.short_s), "long_s": int(p.long_s)}
            alerts.append(self._alert(
                f"request burst from client {client}: {state.short:.1f} > {line:.3g}"
                f" (decayed count over {p.short_s:g} s)", state.short, line, client, windows,
                {"scope": "client", "baseline_count": state.long}, feature="request_rate"))
        line = self.all.burst(p.global_short_s, p.long_s, p.global_factor, p.global_min_count)
        if line is not None:
            windows = {"short_s": int(p.global_short_s), "long_s": int(p.long_s)}
            alerts.append(self._alert(
                f"global request burst: {self.all.short:.1f} > {line:.3g}"
                f" (decayed count over {p.global_short_s:g} s)", self.all.short, line, None,
                windows, {"scope": "global", "baseline_count": self.all.long},
                feature="request_rate"))
        return alerts

    def adopt(self, previous: Any) -> bool:
        """Take over ``previous``'s counts when they mean the same here (same time
        constants and client bound): a reload that changes only a threshold or the
        severity must not release a client mid-burst. Returns whether it did."""
        if not isinstance(previous, RateBurst):
            return False
        p, q = self.params, previous.params
        if (p.short_s, p.long_s, p.global_short_s, p.max_clients) != (
                q.short_s, q.long_s, q.global_short_s, q.max_clients):
            return False
        self.clients, self.all = previous.clients, previous.all
        return True

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """The event's client's count and line (global alerts have their own, not shown)."""
        if event_time(event) is None:
            return None
        state, p = self.clients.states.get(client_of(event)), self.params
        if state is None:
            return None, None
        return state.short, float(max(p.min_count, p.factor * state.long * p.short_s / p.long_s))


@dataclass(frozen=True, slots=True)
class ErrorProbingParams:
    half_life: int = 20  # client events: the error score halves over this many
    min_errors: float = 6.0  # decayed error count that makes a cluster
    factor: float = 5.0  # and the client's error rate > factor x everyone's
    min_rate: float = 0.2  # and > min_rate
    global_span: int = 500  # events: everyone's error rate is an EWMA over about this many
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        check(self.half_life >= 2, "half_life", "must be >= 2")
        check(self.min_errors > 0, "min_errors", "must be > 0")
        # The decayed error count tops out at 1 / (1 - 0.5^(1/half_life)) (every event
        # an error, for ever): a min_errors at or over it loads but never fires.
        reachable = 1.0 / (1.0 - 0.5 ** (1.0 / max(self.half_life, 2)))
        check(self.min_errors < reachable, "min_errors",
              f"must be below {reachable:.4g}, the most a half_life of {self.half_life} "
              "events can count")
        check(self.factor >= 1, "factor", "must be >= 1")
        check(0 < self.min_rate < 1, "min_rate", "must be in (0, 1)")
        check(self.global_span >= 10, "global_span", "must be >= 10")
        check(self.max_clients >= 1, "max_clients", "must be >= 1")


def _is_error(event: Mapping[str, Any]) -> bool | None:
    status = event.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        return None
    # 429 is the rate limiter's answer, not a probe: the rate detector owns it.
    return status >= 400 and status != 429


class ErrorProbing(_Abuse):
    """Clusters of 4xx/5xx answers to one client (error probing), beyond everyone's rate.

    Statistic: the client's decayed error count (halving every ``half_life`` of its
    events); threshold ``min_errors``; also required: the client's decayed error rate
    above ``max(min_rate, factor x the global error rate)``, so an upstream outage
    (everyone's requests fail) is drift's business, not N probing alerts.

    >>> det = ErrorProbing(min_errors=3)
    >>> ok = [{"client_id": "a", "status": 200}] * 50
    >>> bad = [{"client_id": "b", "status": s} for s in (404, 200, 401, 403, 422)]
    >>> [(i, a.client_id) for i, e in enumerate(ok + bad) for a in det.update(e)]
    [(54, 'b')]
    >>> [round(x, 2) for x in det.observe(bad[-1])], det.observe({"client_id": "b"})
    ([3.77, 3.0], None)
    """

    type_name = "error_probing"

    def __init__(self, *, name: str = "error_probing", **params: Any) -> None:
        self.params = ErrorProbingParams(**params)
        self.name = name
        self._keep = 0.5 ** (1 / self.params.half_life)
        self.reset()

    def reset(self) -> None:
        # [decayed errors, decayed events, alerting, unused]
        self.clients: ClientTable[list[float]] = ClientTable(zeros4, self.params.max_clients)
        self.rate = 0.0

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        error = _is_error(event)
        if error is None:
            return []
        p, client = self.params, client_of(event)
        self.rate += (float(error) - self.rate) / p.global_span
        s = self.clients.get(client)
        s[0] = s[0] * self._keep + error
        s[1] = s[1] * self._keep + 1.0
        if s[2]:
            s[2] = float(s[0] > p.min_errors / 2)
            return []
        client_rate, line = s[0] / s[1], max(p.min_rate, p.factor * self.rate)
        if s[0] < p.min_errors or client_rate <= line:
            return []
        s[2] = 1.0
        return [self._alert(
            f"error cluster for client {client}: {s[0]:.1f} recent errors, rate"
            f" {client_rate:.0%} (everyone: {self.rate:.1%})", s[0], p.min_errors, client,
            {"half_life": p.half_life, "global_span": p.global_span},
            {"client_error_rate": client_rate, "global_error_rate": self.rate},
            feature="status")]

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """The event's client's error count and ``min_errors`` (the rate condition, also
        required for an alert, is not shown)."""
        if _is_error(event) is None:
            return None
        state = self.clients.states.get(client_of(event))
        return (None, None) if state is None else (state[0], float(self.params.min_errors))
