"""Prompt-similarity abuse: near-duplicate campaigns and model extraction. Both read
``features.prompt_simhash`` (``detectors.text``), never text.

``NearDuplicate`` (global, so a campaign spread over many client ids is one campaign):
the last ``window`` prompts' SimHashes in an LSH index. With ``max_distance`` = k, the
64 bits are cut into k + 1 bands; two hashes at most k bits apart agree exactly on at
least one band (pigeonhole), so a lookup is k + 1 dict probes plus a Hamming check
(``int.bit_count``) of the few candidates, O(1) per event. Memory: ``window`` hashes.

``Extraction`` (per client, bounded LRU): sustained volume with high input diversity,
the shape of someone harvesting a model's answers. Per client, a sliding-window count
(this window's count plus the previous one's, weighted by how much of it still
overlaps: nginx's and Cloudflare's sliding counter) and the number of distinct
SimHashes over the two windows by linear counting on a 1,024-bit bitmap (accurate to a
few % up to ~1,500 distinct; a Python int, ~140 bytes). Systematic enumeration
(a template with a counter) counts as diverse: distinct hashes. A client repeating one
prompt is ``NearDuplicate``'s, not this one's.

``observe`` (see ``detectors.base``) gives each one's statistic for the event (its
prompt's near-duplicate count; its client's request count) and threshold, alert or not.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detectors.abuse import _Abuse
from detectors.base import Alert, Observation
from detectors.clients import ClientTable, check, client_of, event_time, features


def _overlap(elapsed: float, window_s: float) -> float:
    """The previous window's weight in the sliding count: an event stamped before the
    current window began (a long stream, enqueued at its end; another replica's clock)
    counts as at its start, never as more than the whole previous window."""
    return min(1.0, max(0.0, 1.0 - elapsed / window_s))


def _simhash(event: Mapping[str, Any], min_chars: int) -> int | None:
    f = features(event)
    h, chars = f.get("prompt_simhash"), f.get("prompt_chars")
    if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < 1 << 64:
        return None
    if not isinstance(chars, int) or chars < min_chars:
        return None
    return h


@dataclass(frozen=True, slots=True)
class NearDuplicateParams:
    window: int = 2_000  # recent prompts (all clients) a repeat is counted in
    max_distance: int = 3  # Hamming bits: near-duplicate (0: exact repeats only)
    min_count: int = 25  # prompts in the window within max_distance of this one
    min_chars: int = 20  # shorter prompts ("hi", "thanks") repeat innocently

    def __post_init__(self) -> None:
        check(100 <= self.window <= 1_000_000, "window", "must be in [100, 1000000]")
        check(0 <= self.max_distance <= 7, "max_distance", "must be in [0, 7]")
        check(2 <= self.min_count <= self.window, "min_count", "must be in [2, window]")
        check(self.min_chars >= 0, "min_chars", "must be >= 0")


class NearDuplicate(_Abuse):
    """Repeated and near-duplicate prompts within a window: a campaign, even hidden in
    benign traffic. Statistic: how many of the last ``window`` prompts are within
    ``max_distance`` bits of this one (this one included); threshold ``min_count``.
    One alert per campaign per ``window`` events.

    >>> det = NearDuplicate(window=100, min_count=5, min_chars=0)
    >>> events = [{"client_id": f"c{i}", "features": {"prompt_simhash": (i * 0x9E3779B97F4A7C15)
    ...            % (1 << 64), "prompt_chars": 50}} for i in range(1, 60)]
    >>> for i in range(60, 70):  # the same prompt, the last bit flipped on every other
    ...     events.insert(i * 2 - 60, {"features": {"prompt_simhash": 0xABCDEF ^ (i % 2),
    ...                                              "prompt_chars": 50}})
    >>> [(i, a.statistic) for i, e in enumerate(events) for a in det.update(e)]
    [(63, 5.0)]
    >>> det.observe(events[-1]), det.observe(events[0]), det.observe({})
    ((10.0, 5.0), (1.0, 5.0), None)
    """

    type_name = "near_duplicate"

    def __init__(self, *, name: str = "near_duplicate", **params: Any) -> None:
        self.params = NearDuplicateParams(**params)
        self.name = name
        bands = self.params.max_distance + 1
        self.width = 64 // bands
        self.bands = bands
        self.reset()

    def reset(self) -> None:
        self.recent: deque[tuple[int, str, tuple[int, ...]]] = deque()
        self.index: dict[int, dict[int, int]] = {}
        self.alerted: dict[int, int] = {}  # hash -> event number of its alert
        self.n = 0

    def _keys(self, h: int) -> tuple[int, ...]:
        mask, w = (1 << self.width) - 1, self.width
        return tuple((b << 64) | ((h >> (b * w)) & mask) for b in range(self.bands))

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        p = self.params
        h = _simhash(event, p.min_chars)
        if h is None:
            return []
        self.n += 1
        keys, index, limit = self._keys(h), self.index, p.max_distance
        for key in keys:
            bucket = index.get(key)
            if bucket is None:
                index[key] = {h: 1}
            else:
                bucket[h] = bucket.get(h, 0) + 1
        self.recent.append((h, client_of(event), keys))
        if len(self.recent) > p.window:
            old, _, old_keys = self.recent.popleft()
            self._forget(old, old_keys)
        total, seen = 0, set()
        for key in keys:
            for other, count in index[key].items():
                if other not in seen:
                    seen.add(other)
                    if (other ^ h).bit_count() <= limit:
                        total += count
        if total < p.min_count:
            return []
        near = {o for o in seen if (o ^ h).bit_count() <= limit}
        if self._recently_alerted(h):
            return []
        self.alerted[h] = self.n
        clients = {c for other, c, _ in self.recent if (other ^ h).bit_count() <= limit}
        return [self._alert(
            f"{total} near-identical prompts in the last {len(self.recent)}"
            f" from {len(clients)} client(s)", float(total), float(p.min_count), None,
            {"window": p.window, "max_distance": p.max_distance},
            {"scope": "global", "clients": len(clients), "variants": len(near)},
            feature="prompt_simhash")]

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: how many of the window are near this prompt (it
        included, if it is still in the window), and ``min_count``."""
        h = _simhash(event, self.params.min_chars)
        if h is None:
            return None
        total, seen, limit = 0, set(), self.params.max_distance
        for key in self._keys(h):  # the same count as ``update``'s
            for other, count in self.index.get(key, {}).items():
                if other not in seen:
                    seen.add(other)
                    if (other ^ h).bit_count() <= limit:
                        total += count
        return float(total), float(self.params.min_count)

    def _forget(self, h: int, keys: tuple[int, ...]) -> None:
        for key in keys:
            bucket = self.index[key]
            if bucket[h] == 1:
                del bucket[h]
                if not bucket:
                    del self.index[key]
            else:
                bucket[h] -= 1

    def _recently_alerted(self, h: int) -> bool:
        window, limit = self.params.window, self.params.max_distance
        self.alerted = {a: n for a, n in self.alerted.items() if self.n - n < window}
        return any((a ^ h).bit_count() <= limit for a in self.alerted)


@dataclass(frozen=True, slots=True)
class ExtractionParams:
    window_s: float = 600.0
    min_requests: int = 100  # sliding-window requests from one client ...
    min_distinct: float = 0.8  # ... of which at least this share are distinct prompts
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        check(self.window_s > 0, "window_s", "must be > 0")
        check(10 <= self.min_requests <= 1_000, "min_requests", "must be in [10, 1000]")
        check(0 < self.min_distinct <= 1, "min_distinct", "must be in (0, 1]")
        check(self.max_clients >= 1, "max_clients", "must be >= 1")


_BITS = 1_024


class _Window:
    __slots__ = ("alerting", "bits", "n", "prev_bits", "prev_n", "start")

    def __init__(self) -> None:
        self.start: float | None = None
        self.n = self.prev_n = 0
        self.bits = self.prev_bits = 0
        self.alerting = False


class Extraction(_Abuse):
    """Model-extraction pattern: one client, sustained volume, diverse prompts.

    Statistic: the client's sliding-window request count over ``window_s`` (threshold
    ``min_requests``), when the share of distinct prompts over the last two windows is
    at least ``min_distinct``. One alert per episode (until the count halves).

    >>> det = Extraction(min_requests=20, window_s=60)
    >>> events = [{"client_id": "x", "timestamp": f"2025-01-01T00:00:{i:02d}Z",
    ...            "features": {"prompt_simhash": i * 7919, "prompt_chars": 80}}
    ...           for i in range(30)]
    >>> [(i, a.statistic) for i, e in enumerate(events) for a in det.update(e)]
    [(19, 20.0)]
    >>> det.observe(events[-1])  # the count goes on (the share of distinct is not shown)
    (30.0, 20.0)
    """

    type_name = "extraction"

    def __init__(self, *, name: str = "extraction", **params: Any) -> None:
        self.params = ExtractionParams(**params)
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.clients: ClientTable[_Window] = ClientTable(_Window, self.params.max_clients)

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        t = event_time(event)
        h = _simhash(event, 0)
        if t is None or h is None:
            return []
        p, client = self.params, client_of(event)
        s = self.clients.get(client)
        if s.start is None or t - s.start >= 2 * p.window_s:
            s.start, s.n, s.bits, s.prev_n, s.prev_bits = t, 0, 0, 0, 0
        elif t - s.start >= p.window_s:
            s.start, s.prev_n, s.prev_bits, s.n, s.bits = s.start + p.window_s, s.n, s.bits, 0, 0
        s.n += 1
        s.bits |= 1 << (((h * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) >> 54)
        overlap = _overlap(t - s.start, p.window_s)
        count = s.n + s.prev_n * overlap
        if s.alerting:
            s.alerting = count > p.min_requests / 2
            return []
        if count < p.min_requests:
            return []
        zeros = _BITS - (s.bits | s.prev_bits).bit_count()
        distinct = _BITS * math.log(_BITS / max(zeros, 1))
        share = min(1.0, distinct / (s.n + s.prev_n))
        if share < p.min_distinct:
            return []
        s.alerting = True
        return [self._alert(
            f"possible model extraction by client {client}: {count:.0f} requests in"
            f" {p.window_s:g} s, {share:.0%} distinct prompts", count,
            float(p.min_requests), client, {"window_s": int(p.window_s)},
            {"distinct_share": share, "min_distinct": p.min_distinct},
            feature="prompt_simhash")]

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: the client's sliding-window count, ``min_requests``."""
        t, p = event_time(event), self.params
        if t is None or _simhash(event, 0) is None:
            return None
        s = self.clients.states.get(client_of(event))
        if s is None or s.start is None:
            return None, float(p.min_requests)
        overlap = _overlap(t - s.start, p.window_s)
        return s.n + s.prev_n * overlap, float(p.min_requests)
