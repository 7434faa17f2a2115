"""Shared pieces of the abuse detectors: per-client state in a bounded LRU, event time.

Memory bound: a ``ClientTable`` keeps exact state for at most ``capacity`` clients, the
least recently seen evicted first (an ``OrderedDict``: O(1) get, insert, move-to-end and
evict). Why an LRU of exact states and not a count-min sketch or space-saving top-k: each
abuse detector needs a small *state machine* per client (decayed rates, a window's
distinct-prompt bitmap, an error score), not one counter, and a sketch per field would
cost more and answer less (no per-client windows, collisions blame the innocent). The
clients that matter are the active ones, and an attacker sending a request every few
seconds stays at the hot end; a client evicted after ``capacity`` other clients came and
went starts again from nothing, which only delays a very slow attacker (``evictions``
counts them, and a sidecar exports them: a steady count says ``max_clients`` is too small for
the traffic). Rotating client ids to stay under the per-client thresholds is what the
global detectors (global rate, campaign-wide duplicates) are for.

Events without a ``client_id`` share one bucket, ``SHARED``.

Time is the event's own ``timestamp`` (RFC 3339), never the clock: replay and the
consumer group see the same time as the pipeline. An event older than one already seen
(replicas' events interleaved, a backlog delivered late) counts as of its own time, not
as a new one (``_Rate`` weighs it by its age); the enforce-mode gate gives its events a
clock that never steps back.

>>> table = ClientTable(dict, capacity=2)
>>> table.get("a")["n"] = 1; _ = table.get("b"); _ = table.get("c")
>>> list(table.states), table.evictions
(['b', 'c'], 1)
>>> event_time({"timestamp": "2025-01-01T00:00:01.5Z"})
1735689601.5
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from detectors.base import ParamError

SHARED: Final = "(no client id)"
S = TypeVar("S")


class ClientTable(Generic[S]):
    """At most ``capacity`` client states, least recently used evicted first."""

    def __init__(self, factory: Callable[[], S], capacity: int) -> None:
        self.factory = factory
        self.capacity = capacity
        self.states: OrderedDict[str, S] = OrderedDict()
        self.evictions = 0
        self.reported = 0  # evictions already handed on by ``DetectorSet.take_evictions``

    def get(self, client: str) -> S:
        state = self.states.get(client)
        if state is None:
            state = self.states[client] = self.factory()
            if len(self.states) > self.capacity:
                self.states.popitem(last=False)
                self.evictions += 1
        else:
            self.states.move_to_end(client)
        return state

    def __len__(self) -> int:
        return len(self.states)


def zeros4() -> list[float]:
    """A fresh per-client state of four floats (a named function: detectors pickle)."""
    return [0.0, 0.0, 0.0, 0.0]


def client_of(event: Mapping[str, Any]) -> str:
    client = event.get("client_id")
    return client if isinstance(client, str) and client else SHARED


_last: list[Any] = [None, None]  # the last timestamp string parsed, and its value


def event_time(event: Mapping[str, Any]) -> float | None:
    """Seconds since the epoch from ``timestamp`` (RFC 3339, or a number of seconds),
    else ``None`` (the event is skipped).

    Several detectors read the same event one after another: the last parse is reused
    when it is the very same string object (an identity check, so never stale).
    """
    stamp = event.get("timestamp")
    if stamp is _last[0]:
        value: float | None = _last[1]
        return value
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        return float(stamp) if math.isfinite(stamp) else None  # seconds (the gate's clock)
    if not isinstance(stamp, str):
        return None
    try:
        value = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        value = None
    _last[0], _last[1] = stamp, value
    return value


def features(event: Mapping[str, Any]) -> Mapping[str, Any]:
    value = event.get("features")
    return value if isinstance(value, Mapping) else {}


def number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return float(value) if abs(value) != float("inf") else None
    return None


def check(condition: bool, key: str, reason: str) -> None:
    if not condition:
        raise ParamError(key, reason)
