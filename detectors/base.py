"""The ``Detector`` protocol, the ``Alert`` record, and the do-nothing ``NullDetector``.

A detector sees one inference at a time, as the plain ``data`` dict of an
``ai.inference.completed`` event, and returns the alerts that event raises (usually
none). Detectors are pure and synchronous: no I/O, no clock, no ``sidecar`` import, so
the same detector runs in the pipeline, in ``replay`` and in a consumer group (issue 5).

Optional, for ``replay``'s report: ``observe(event) -> Observation | None``, called right
after ``update(event)`` with the same event, says what the detector now makes of it: the
statistic its alerts carry and the threshold it is compared with (each detector's
docstring says which), or ``None`` when it skipped the event (nothing it reads was
there). Either part of the pair is ``None`` while there is nothing to compare yet
(warm-up, windows filling). It only reads state (a detector that observes nothing new
between two calls returns the same pair), so ``update`` stays as cheap as without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

KINDS: Final = ("drift", "abuse", "policy")
SEVERITIES: Final = ("info", "warning", "critical")
MODES: Final = ("monitor", "enforce")


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert. Detectors fill what they know (what, where, how far past the line);
    ``DetectorSet`` stamps the configured severity and mode, the config digest and the
    ids of the event that tripped it.

    >>> Alert("latency", "warning", "latency_ms drifted", kind="drift",
    ...       feature="latency_ms", statistic=0.8, threshold=0.002).to_dict()["feature"]
    'latency_ms'
    """

    detector: str
    severity: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "drift"
    detector_type: str = ""
    mode: str = "monitor"
    feature: str | None = None
    # The detector's test statistic when it fired and the value it had to cross; what
    # the replay report plots (each detector's docstring says which statistic it is).
    statistic: float | None = None
    threshold: float | None = None
    windows: Mapping[str, int] = field(default_factory=dict)
    config_digest: str | None = None
    client_id: str | None = None
    inference_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain dicts, lists, strings and numbers only."""
        return {
            "detector": self.detector,
            "detector_type": self.detector_type,
            "kind": self.kind,
            "severity": self.severity,
            "mode": self.mode,
            "message": self.message,
            "feature": self.feature,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "windows": dict(self.windows),
            "config_digest": self.config_digest,
            "client_id": self.client_id,
            "inference_id": self.inference_id,
            "details": _plain(self.details),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class ParamError(ValueError):
    """A detector parameter out of range; ``key`` names it (``config`` adds the path)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


Observation = tuple[float | None, float | None]
"""(statistic, threshold) after an event; see the module docstring."""


class Detector(Protocol):
    name: str

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        """Learn from one event; return the alerts it raises (usually none)."""
        ...

    def reset(self) -> None:
        """Forget everything learnt."""
        ...


class Observable(Protocol):
    """A detector that can say where it stands after each event (the replay report)."""

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: (statistic, threshold), or ``None`` if it skipped it."""
        ...


class NullDetector:
    """Never alerts. The baseline every detector contract test starts from.

    >>> NullDetector().update({"latency_ms": 12.0}), NullDetector().observe({})
    ([], None)
    """

    name = "null"

    def __init__(self, name: str = "null") -> None:
        self.name = name

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        return []

    def reset(self) -> None:
        pass

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        return None  # reads nothing: skips every event
