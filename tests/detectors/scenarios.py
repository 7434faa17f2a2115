"""Seeded, deterministic traffic for drift tests: benign with a daily cycle, and drift.

``traffic(n, seed, drift=...)`` yields ``n`` event ``data`` dicts shaped like
``ai.inference.completed`` (only what detectors read is realistic). Benign traffic:

- a daily cycle of ``events_per_day`` events (default 20,000: a quiet deployment at about
  0.23 requests/s; busier services spread the same cycle over more events, which makes
  it slower per event and easier on the detectors): latency's and sizes' medians swing
  +-15 % and +-10 %, the upstream error rate 0.5 % +-50 %, the route mix +-10 points;
- log-normal latency (median 250 ms, sigma 0.35), request (1,200 B, 0.6) and response
  sizes (2,000 B, 0.5); 0.5 % upstream errors (502/504, outcome upstream_error/timeout);
  0.3 % client-side 4xx rejected by the sidecar (no upstream status);
- 20 % of events sampled with a payload whose ``choices[0].finish_reason`` is stop
  (90 %), length (8 %) or content_filter (2 %).

A ``Drift`` changes some of these from ``start``, fully at once (``ramp=0``, abrupt) or
linearly over ``ramp`` events (gradual). ``DRIFTS`` names the ones tests assert on; their
sizes are changes an operator wants to hear about (a latency regression of x2, responses
cut by half, ten times the upstream errors, a 30-point route shift), not noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

ROUTES = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")
FINISH = ("stop", "length", "content_filter")


@dataclass(frozen=True)
class Drift:
    start: int
    ramp: int = 0
    latency: float = 1.0  # multiplier of the median
    response: float = 1.0
    request: float = 1.0
    error_rate: float | None = None  # absolute rate after the drift
    chat_share: float | None = None  # moved to/from embeddings
    length_share: float | None = None  # finish_reason "length" share

    def weight(self, i: int) -> float:
        if i < self.start:
            return 0.0
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (i - self.start + 1) / self.ramp)


DRIFTS: dict[str, Drift] = {
    "latency_x2": Drift(0, latency=2.0),
    "latency_x0.5": Drift(0, latency=0.5),
    "response_halved": Drift(0, response=0.5),
    "request_x3": Drift(0, request=3.0),
    "errors_x10": Drift(0, error_rate=0.05),
    "route_shift": Drift(0, chat_share=0.4),
}


def at(drift: Drift, start: int, ramp: int = 0) -> Drift:
    return replace(drift, start=start, ramp=ramp)


def _lerp(a: float, b: float | None, w: float) -> float:
    return a if b is None else a + (b - a) * w


def traffic(
    n: int, seed: int, drift: Drift | None = None, events_per_day: int = 20_000, offset: int = 0
) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for i in range(offset, offset + n):
        phase = 2 * math.pi * i / events_per_day
        day = math.sin(phase)
        w = drift.weight(i) if drift else 0.0
        d = drift or Drift(0)
        latency = rng.lognormvariate(
            math.log(250 * (1 + (d.latency - 1) * w)) + 0.15 * day, 0.35
        )
        request = int(
            rng.lognormvariate(math.log(1200 * (1 + (d.request - 1) * w)) + 0.1 * day, 0.6)
        )
        response = int(
            rng.lognormvariate(
                math.log(2000 * (1 + (d.response - 1) * w)) + 0.1 * math.sin(phase + 1), 0.5
            )
        )
        error_rate = _lerp(0.005 * (1 + 0.5 * math.sin(phase + 2)), d.error_rate, w)
        chat = _lerp(0.7 + 0.1 * day, d.chat_share, w)
        embed = 0.9 - chat
        r = rng.random()
        route = ROUTES[0] if r < chat else ROUTES[1] if r < chat + embed else ROUTES[2]
        u = rng.random()
        status: int
        upstream: int | None
        if u < error_rate:
            status = upstream = rng.choice((502, 504))
            outcome = "upstream_error" if status == 502 else "timeout"
        elif u < error_rate + 0.003:
            status, upstream, outcome = 413, None, "rejected"
        else:
            status = upstream = 200
            outcome = "ok"
        length = _lerp(0.08, d.length_share, w)
        payload = None
        if rng.random() < 0.2:
            f = rng.random()
            finish = FINISH[1] if f < length else FINISH[2] if f < length + 0.02 else FINISH[0]
            payload = {"response": {"choices": [{"finish_reason": finish}]}}
        yield {
            "inference_id": f"{seed:08x}-0000-7000-8000-{i:012x}",
            "timestamp": f"2025-01-01T00:00:00.{i % 1000:03d}Z",
            "model_name": "demo",
            "method": "POST",
            "route": route,
            "path": route,
            "status": status,
            "outcome": outcome,
            "upstream_status": upstream,
            "latency_ms": round(latency, 3),
            "upstream_latency_ms": round(latency * 0.95, 3),
            "request_bytes": request,
            "response_bytes": response if upstream == 200 else 120,
            "stream": route == ROUTES[0] and rng.random() < 0.5,
            "client_id": f"00000001:{rng.randrange(200):016x}",
            "privacy": {"entity_counts": {"EMAIL_ADDRESS": int(rng.random() < 0.05)}},
            "payload": payload,
        }
