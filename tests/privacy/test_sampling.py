"""Sampling: deterministic from the inference id, accurate to the rate, never drops metadata."""

from __future__ import annotations

import doctest
import uuid

import pytest

from sidecar.privacy import sampling
from sidecar.privacy.sampling import Decision, decide

IDS = [str(uuid.UUID(int=(0x0190A1B2 << 96) | i)) for i in range(20_000)]


def test_module_doctests_pass() -> None:
    result = doctest.testmod(sampling)
    assert result.attempted >= 5 and result.failed == 0


def test_same_id_same_decision() -> None:
    first = [decide(i, 0.3) for i in IDS[:2000]]
    assert first == [decide(i, 0.3) for i in IDS[:2000]]


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.25, 0.5, 0.9])
def test_rate_is_accurate_within_two_percent(rate: float) -> None:
    share = sum(decide(i, rate).captured for i in IDS) / len(IDS)
    assert abs(share - rate) <= 0.02


def test_lower_rate_samples_a_subset_of_a_higher_one() -> None:
    low = {i for i in IDS if decide(i, 0.1).captured}
    high = {i for i in IDS if decide(i, 0.4).captured}
    assert low and low < high


def test_rate_bounds() -> None:
    assert not any(decide(i, 0.0).captured for i in IDS[:1000])
    assert all(decide(i, 1.0) == Decision(True, "sampled") for i in IDS[:1000])


def test_always_capture_rules_win_over_the_rate() -> None:
    rid = IDS[0]
    assert decide(rid, 0.0, status=503) == Decision(True, "always_capture:errors")
    assert decide(rid, 0.0, flags={"alert"}) == Decision(True, "always_capture:alerts")
    assert decide(rid, 0.0, flags=["rejection"]) == Decision(True, "always_capture:rejections")
    assert decide(rid, 0.0, status=503, rules={"alerts"}) == Decision(False, "not_sampled")
    assert decide(rid, 0.0, status=404) == Decision(False, "not_sampled")
    assert decide(rid, 1.0, status=503, enabled=False) == Decision(False, "disabled")


def _reference(inference_id: str, rate: float, status: int, flags: frozenset[str],
               rules: frozenset[str]) -> Decision:
    """The rule as the README states it, written plainly."""
    fired = {{"error": "errors", "alert": "alerts", "rejection": "rejections"}[f]
             for f in flags}
    if status >= 500:
        fired.add("errors")
    for rule in ("errors", "alerts", "rejections"):
        if rule in fired and rule in rules:
            return Decision(True, f"always_capture:{rule}")
    if rate > 0.0 and sampling.fraction(inference_id) < rate:
        return Decision(True, "sampled")
    return Decision(False, "not_sampled")


@pytest.mark.parametrize("status", [200, 404, 500, 503])
@pytest.mark.parametrize("flags", [frozenset(), frozenset({"alert"}), frozenset({"rejection"})])
def test_decide_agrees_with_the_plain_rule(status: int, flags: frozenset[str]) -> None:
    for rules in (frozenset(), frozenset({"errors", "alerts", "rejections"})):
        for i in IDS[:300]:
            assert decide(i, 0.2, status, flags, rules=rules) == \
                _reference(i, 0.2, status, flags, rules)
