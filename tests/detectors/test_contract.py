"""Every registered detector type through the same checks (river's ``checks`` shape)."""

from __future__ import annotations

import doctest
import importlib
import math
import pickle
import pkgutil
from typing import Any

import pytest
from attacks import ATTACKS, with_attack
from scenarios import DRIFTS, at, traffic

import detectors
from detectors.base import Alert, NullDetector
from detectors.registry import TYPES, DetectorSet, DetectorSpec, build

FEATURES = {"numeric": "latency_ms", "categorical": "route", "none": None}
TRANSFORM = {"numeric": "log1p"}


# Types that say nothing without settings (an empty policy allows everything).
PARAMS: dict[str, dict[str, Any]] = {"policy": {"routes": ["/v1/chat/completions"]}}
# Types that read a particular kind of numeric feature: (feature, transform).
OWN_FEATURE: dict[str, tuple[str, str]] = {"bernoulli_cusum": ("upstream_error", "none")}


def spec_for(type_name: str) -> DetectorSpec:
    kind = TYPES[type_name].feature
    feature, transform = OWN_FEATURE.get(
        type_name, (FEATURES[kind], TRANSFORM.get(kind, "none")))
    return DetectorSpec(type_name, type_name, feature=feature, transform=transform,
                        params=PARAMS.get(type_name, {}))


def replay(detector: Any, events: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    out = []
    for i, event in enumerate(events):
        alerts = detector.update(event)
        assert isinstance(alerts, list)
        assert all(isinstance(a, Alert) for a in alerts)
        out += [(i, a.message, a.statistic) for a in alerts]
    return out


# Drift in every feature the specs read, so every detector has something to say.
EVENTS = list(traffic(6_000, 3, at(DRIFTS["latency_x2"], 3_000)))
for e in EVENTS[3_000:]:
    e["route"] = "/v1/embeddings"
EVENTS += list(traffic(4_000, 4, at(DRIFTS["errors_x10"], 3_000)))  # the 0/1 error rate
# ...and every attack of attacks.py, so every abuse detector has something to say too.
for _name in sorted(ATTACKS):
    EVENTS += with_attack(_name, 1_500, 1, 300, attack_events=250)

TYPE_NAMES = sorted(TYPES)


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_update_returns_alerts_and_is_deterministic(type_name: str) -> None:
    first = replay(build(spec_for(type_name)), EVENTS)
    assert first == replay(build(spec_for(type_name)), EVENTS)
    if type_name != "null":
        assert first, "the drifted replay should raise something"


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_reset_restores_initial_behaviour(type_name: str) -> None:
    detector = build(spec_for(type_name))
    first = replay(detector, EVENTS)
    detector.reset()
    assert replay(detector, EVENTS) == first


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_alerts_are_json_ready(type_name: str) -> None:
    import json

    detector = build(spec_for(type_name))  # one detector over the whole replay
    alerts = [alert for event in EVENTS for alert in detector.update(event)]
    if type_name != "null":
        assert alerts, "the drifted replay should raise something"
    for alert in alerts:
        json.dumps(alert.to_dict(), allow_nan=False)


BAD_EVENTS: list[Any] = [
    {},
    {"latency_ms": None, "route": None},
    {"latency_ms": "12", "route": 3.5},
    {"latency_ms": float("nan"), "route": ["x"]},
    {"latency_ms": float("inf"), "route": {"a": 1}},
    {"latency_ms": -5.0, "route": ""},
    {"latency_ms": True, "route": True},
    {"payload": "not a dict", "status": "200", "upstream_status": "x"},
    {"payload": {"response": {"choices": "x"}}},
]


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_never_raises_on_missing_or_wrongly_typed_features(type_name: str) -> None:
    detector = build(spec_for(type_name))
    for _ in range(300):
        for event in BAD_EVENTS:
            assert isinstance(detector.update(event), list)


def check_observation(observation: Any) -> None:
    """``observe`` returns ``None`` (skipped) or a pair, each part ``None`` or a finite float."""
    if observation is None:
        return
    assert isinstance(observation, tuple) and len(observation) == 2, observation
    for part in observation:
        assert part is None or (isinstance(part, float) and math.isfinite(part)), observation


# Detectors that keep their state after an alert: what they observe at an alerting event
# is the alert's own statistic. (Drift detectors start over after an alert.)
SAME_STATISTIC = ("rate_burst", "error_probing", "token_usage", "near_duplicate",
                  "extraction", "policy")


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_observe_is_a_finite_pair_or_none_and_changes_nothing(type_name: str) -> None:
    plain = replay(build(spec_for(type_name)), EVENTS)
    detector, alerted = build(spec_for(type_name)), []
    observed: list[Any] = []
    for i, event in enumerate(EVENTS):
        alerts = detector.update(event)
        alerted += [(i, a.message, a.statistic) for a in alerts]
        observation = detector.observe(event)
        check_observation(observation)
        assert detector.observe(event) == observation  # it only reads
        observed.append(observation)
        if not alerts:
            continue
        assert observation is not None, "an event that raised an alert was not skipped"
        if type_name in SAME_STATISTIC:
            mine = [a.statistic for a in alerts if a.details.get("scope") != "global"]
            assert not mine or any(observation[0] == pytest.approx(x, abs=1e-5) for x in mine)
        elif type_name == "signatures":
            assert observation == (float(len(alerts)), 1.0)
        else:
            assert observation[0] is None, "drift detectors start over after an alert"
    assert alerted == plain, "observing changed what the detector does"
    if type_name != "null":
        statistics = [o[0] for o in observed if o is not None and o[0] is not None]
        assert len(statistics) >= len(EVENTS) // 10, "hardly ever a statistic"
        assert len(set(statistics)) > 1 or type_name in ("policy", "signatures")


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_observe_never_raises_on_missing_or_wrongly_typed_features(type_name: str) -> None:
    detector = build(spec_for(type_name))
    for event in EVENTS[:2_000] + BAD_EVENTS * 50:
        detector.update(event)
        check_observation(detector.observe(event))
    if type_name != "policy":  # an empty event reads as "no violation"
        detector.update({})
        assert detector.observe({}) is None, "an empty event should be skipped"


class Broken(NullDetector):
    def observe(self, event: Any) -> Any:
        raise RuntimeError("boom")


def test_detector_set_observes_every_detector_and_never_raises() -> None:
    detectors = DetectorSet([spec_for("rate_burst"), spec_for("null"), spec_for("adwin")])
    detectors.detectors[1] = Broken()
    for event in EVENTS[:100]:
        detectors.update(event)
        observed = detectors.observe(event)
        assert len(observed) == 3 and observed[1] == (None, None)
        check_observation(observed[0])
    assert detectors.observe_errors == {"rate_burst": 0, "null": 100, "adwin": 0}


def state_size(detector: Any) -> int:
    return len(pickle.dumps(detector))


@pytest.mark.parametrize("type_name", TYPE_NAMES)
def test_memory_is_bounded(type_name: str) -> None:
    detector = build(spec_for(type_name))
    events = traffic(100_000, 9)
    for _ in range(10_000):
        detector.update(next(events))
    small = state_size(detector)
    for event in events:
        detector.update(event)
    # Same order of size (ADWIN's buckets and the windows fluctuate), not 10x.
    assert state_size(detector) <= small * 1.5 + 2_000


def test_every_detector_module_has_a_running_doctest() -> None:
    for info in pkgutil.iter_modules(detectors.__path__):
        module = importlib.import_module(f"detectors.{info.name}")
        result = doctest.testmod(module)
        assert result.failed == 0, info.name
        if info.name != "config":  # config's doctest reads the default file: it has one too
            assert result.attempted > 0, f"detectors.{info.name} has no doctest"
