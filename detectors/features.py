"""Features: how a detector reads one value out of an event.

A feature is either a *derived* name (below) or a *path* into the event's ``data`` dict.
The path syntax is deliberately small: dot-separated keys, each optionally followed by
``[n]`` list indices (``n`` >= 0, no slices, wildcards or filters)::

    latency_ms
    privacy.entity_counts.EMAIL_ADDRESS
    payload.response.outputs[0].data[0]
    payload.response.choices[0].finish_reason

A key holding a dot or a bracket cannot be addressed. A missing key, an index out of
range, or a value of the wrong type reads as ``None``: the detector skips the event.

Derived features:

- ``upstream_error``: 1.0 when the upstream answered 5xx, timed out or failed, else 0.0
  (the upstream status rate as a 0/1 series; requests the sidecar rejected itself are
  skipped: they never reached the upstream).
- ``status_class``: ``"2xx"``, ``"4xx"``... of the status returned to the client.

Paths under ``payload``, ``headers`` and ``features.params`` read what the client and the
model sent, before any masking (``Feature.raw_content``): a detector may use such a value,
but never quote it in an alert.

>>> Feature.parse("payload.response.outputs[0].data[1]").number(
...     {"payload": {"response": {"outputs": [{"data": [0.1, 0.9]}]}}})
0.9
>>> Feature.parse("status_class").category({"status": 503})
'5xx'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

_KEY = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")
_INDEX = re.compile(r"\[(\d+)\]")

def _identity(x: float) -> float:
    return x


def _log1p(x: float) -> float:
    return math.log1p(x) if x > -1.0 else math.nan


# Named functions, not lambdas: detectors pickle (checkpoints, the contract's size check).
TRANSFORMS: Final[dict[str, Callable[[float], float]]] = {
    "none": _identity,
    # Sizes and latencies are roughly log-normal: log1p makes their noise near-normal
    # (fewer false alarms from the tail) and their drift relative (x2 is x2 at any scale).
    "log1p": _log1p,
}


def _upstream_error(event: Mapping[str, Any]) -> Any:
    outcome = event.get("outcome")
    if outcome in ("upstream_error", "timeout"):
        return 1.0
    status = event.get("upstream_status")
    if isinstance(status, int) and not isinstance(status, bool):
        return 1.0 if status >= 500 else 0.0
    return None


def _status_class(event: Mapping[str, Any]) -> Any:
    status = event.get("status")
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return f"{status // 100}xx"
    return None


DERIVED: Final[dict[str, Callable[[Mapping[str, Any]], Any]]] = {
    "upstream_error": _upstream_error,
    "status_class": _status_class,
}


class FeatureError(ValueError):
    """A feature name that is neither derived nor a valid path."""


@dataclass(frozen=True, slots=True)
class Feature:
    """A compiled feature: ``number(event)`` / ``category(event)`` never raise."""

    name: str
    steps: tuple[str | int, ...]

    @property
    def raw_content(self) -> bool:
        """Whether the value is unmasked content (a body, a header, a request parameter).

        >>> Feature.parse("payload.response.model").raw_content, Feature.parse("route").raw_content
        (True, False)
        """
        return self.steps[:1] in (("payload",), ("headers",)) or self.steps[:2] == (
            "features", "params")

    @classmethod
    def parse(cls, name: str) -> Feature:
        if name in DERIVED:
            return cls(name, ())
        steps: list[str | int] = []
        for part in name.split("."):
            match = _KEY.fullmatch(part)
            if match is None:
                raise FeatureError(f"{name!r} is not a derived feature nor a path like a.b[0].c")
            steps.append(match.group(1))
            steps.extend(int(i) for i in _INDEX.findall(match.group(2)))
        return cls(name, tuple(steps))

    def raw(self, event: Mapping[str, Any]) -> Any:
        if not self.steps:
            return DERIVED[self.name](event)
        value: Any = event
        for step in self.steps:
            if isinstance(step, str):
                if not isinstance(value, Mapping):
                    return None
                value = value.get(step)
            else:
                if not isinstance(value, list | tuple) or step >= len(value):
                    return None
                value = value[step]
        return value

    def number(self, event: Mapping[str, Any]) -> float | None:
        """The value as a finite float (booleans count as 0/1), else ``None``."""
        try:
            value = self.raw(event)
        except Exception:  # a Mapping whose get() misbehaves: skip the event
            return None
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, int | float):
            x = float(value)
            return x if math.isfinite(x) else None
        return None

    def category(self, event: Mapping[str, Any]) -> str | None:
        """The value as a short string (str, int or bool), else ``None``."""
        try:
            value = self.raw(event)
        except Exception:
            return None
        if isinstance(value, str):
            return value[:64]
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        return None
