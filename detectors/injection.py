"""Prompt-injection and jailbreak signatures: an alert per matched rule id (see
``detectors.text`` for the rule set and how events carry the matches)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detectors.abuse import _Abuse
from detectors.base import SEVERITIES, Alert, Observation, ParamError
from detectors.clients import check, features
from detectors.text import signatures


@dataclass(frozen=True, slots=True)
class SignaturesParams:
    min_severity: str = "info"  # rules below this severity are ignored
    ignore: str = ""  # comma-separated rule ids to ignore

    def __post_init__(self) -> None:
        check(self.min_severity in SEVERITIES, "min_severity", f"must be one of {SEVERITIES}")
        check(isinstance(self.ignore, str), "ignore", "must be comma-separated rule ids")
        rules = signatures()
        unknown = sorted({i.strip() for i in self.ignore.split(",") if i.strip()}
                         - set(rules.by_id()))
        if unknown:  # a typo would leave the rule meant firing
            raise ParamError("ignore", f"no rule {unknown[0]!r} in the signatures (version "
                             f"{rules.version})")


class Signatures(_Abuse):
    """One alert per matched prompt-injection/jailbreak rule (``features.signatures``,
    computed by ``detectors.text``), with the rule's severity and category. Statistic:
    1 (a match), threshold 1.

    >>> det = Signatures()
    >>> [(a.severity, a.feature, a.details["category"])
    ...  for a in det.update({"features": {"signatures": ["JB-001", "nope", 3]}})]
    [('critical', 'JB-001', 'jailbreak'), ('warning', 'nope', 'unknown')]

    ``observe`` (see ``detectors.base``): the number of matched rules it alerts on, and
    1; ``None`` for an event without ``features.signatures`` (no prompt features).

    >>> det.observe({"features": {"signatures": ["JB-001", "nope"]}}), det.observe({})
    ((2.0, 1.0), None)
    """

    type_name = "signatures"

    def __init__(self, *, name: str = "signatures", **params: Any) -> None:
        self.params = SignaturesParams(**params)
        self.name = name
        rules = signatures()
        self.version = rules.version
        self.rules = rules.by_id()
        self.ignore = frozenset(i.strip() for i in self.params.ignore.split(",") if i.strip())
        self.floor = SEVERITIES.index(self.params.min_severity)

    def reset(self) -> None:
        pass

    def update(self, event: Mapping[str, Any]) -> list[Alert]:
        matched = features(event).get("signatures")
        if not matched or not isinstance(matched, list):
            return []
        alerts = []
        for rule_id in matched[:32]:
            if not isinstance(rule_id, str) or rule_id in self.ignore:
                continue
            rule = self.rules.get(rule_id)
            severity = rule.severity if rule else "warning"  # a rule newer than this set
            if SEVERITIES.index(severity) < self.floor:
                continue
            category = rule.category if rule else "unknown"
            alerts.append(self._alert(
                f"prompt matched {rule_id} ({category})", 1.0, 1.0, None,
                details={"category": category, "rule_set_version": self.version,
                         "description": rule.description if rule else ""},
                severity=severity, feature=rule_id))
        return alerts

    def observe(self, event: Mapping[str, Any]) -> Observation | None:
        """After ``update(event)``: how many matched rules it alerts on, and 1."""
        matched = features(event).get("signatures")
        if not isinstance(matched, list):
            return None
        count = 0
        for rule_id in matched[:32]:  # the same filter as ``update``'s
            if not isinstance(rule_id, str) or rule_id in self.ignore:
                continue
            rule = self.rules.get(rule_id)
            count += SEVERITIES.index(rule.severity if rule else "warning") >= self.floor
        return float(count), 1.0
