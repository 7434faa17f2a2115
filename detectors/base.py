"""The ``Detector`` protocol, the ``Alert`` record, and the do-nothing ``NullDetector``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Alert:
    detector: str
    severity: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


class Detector(Protocol):
    name: str

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        """Learn from one event; return the alerts it raises (usually none)."""
        ...

    def reset(self) -> None:
        """Forget everything learnt."""
        ...


class NullDetector:
    """Never alerts. The baseline every detector contract test starts from.

    >>> NullDetector().update({"latency_ms": 12.0})
    []
    """

    name = "null"

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        return []

    def reset(self) -> None:
        pass
