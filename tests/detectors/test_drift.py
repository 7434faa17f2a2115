"""Detection delay and false alarms of the default detectors file, on scenarios.py.

Aims (issue 5): a drift is detected within 200 of its events; fewer than 1 false alarm
per 100,000 benign events. What the bounds below rest on:

- False alarms: the default set sees 200,000 benign events (10 daily cycles of the
  quiet-service day) here and must raise none; the slow test runs 1,000,000 across 5
  seeds and must raise none either. Zero in 1,000,000 bounds the rate below 0.3 per
  100,000 at 95 % confidence (rule of three); zero in 200,000 only below 1.5, which is
  why the slow test exists.
- Abrupt drift: every DRIFTS scenario but errors_x10 within 200 events on each of 5
  seeds. errors_x10 (0.5 % -> 5 % upstream errors) gets 400: even the optimal test for
  exactly that change, the Bernoulli CUSUM the default set now runs (detectors/rate.py:
  log-likelihood ratio per error 2.3, per success -0.046, threshold 15: at 13 it raised
  one alarm in the 2,000,000 benign events of this file and test_abuse.py), needs
  15 / 0.071 ~ 210 events on average, and its delay is a sum of rare events (measured
  144-339 on the 5 seeds), so 200 would be a coin toss per seed. (The chi-square
  status mix alone, at alpha 1e-9, took up to ~640.)
- Gradual drift (a linear ramp over 1,000 events): detected before the ramp ends plus
  200 events. A slower ramp is by design indistinguishable from seasonality for the
  lagged reference and the detrended Page-Hinkley; ADWIN's capped window still sees it.
"""

from __future__ import annotations

import pytest
from scenarios import DRIFTS, at, traffic

from detectors.config import load_config
from detectors.registry import TYPES, DetectorSet

START = 5_000
SEEDS = range(5)


def default_set() -> DetectorSet:
    # The drift detectors of the default file: scenarios.py's timestamps and client ids
    # are placeholders (abuse detectors are tested on attacks.py, test_abuse.py).
    config = load_config()
    specs = [s for s in config.specs if TYPES[s.type].kind == "drift"]
    return DetectorSet(specs, config.digest)


def first_alert(drift_name: str, seed: int, ramp: int = 0) -> tuple[int | None, list[str]]:
    detectors = default_set()
    drift = at(DRIFTS[drift_name], START, ramp)
    early: list[str] = []
    for i, event in enumerate(traffic(START + 2_000 + ramp, seed, drift)):
        alerts = detectors.update(event)
        if alerts and i < START:
            early += [a.detector for a in alerts]
        elif alerts:
            return i - START, early
    return None, early


@pytest.mark.parametrize("drift_name", sorted(DRIFTS))
def test_abrupt_drift_is_detected_in_time(drift_name: str) -> None:
    bound = 400 if drift_name == "errors_x10" else 200
    for seed in SEEDS:
        delay, early = first_alert(drift_name, seed)
        assert not early, f"false alarms before the drift: {early}"
        assert delay is not None and delay <= bound, (seed, delay)


@pytest.mark.parametrize("drift_name", ["latency_x2", "response_halved", "route_shift"])
def test_gradual_drift_is_detected_before_the_ramp_ends(drift_name: str) -> None:
    for seed in SEEDS[:3]:
        delay, early = first_alert(drift_name, seed, ramp=1_000)
        assert not early
        assert delay is not None and delay <= 1_200, (seed, delay)


def false_alarms(n: int, seed: int) -> list[tuple[int, str]]:
    detectors = default_set()
    return [
        (i, a.detector)
        for i, event in enumerate(traffic(n, seed))
        for a in detectors.update(event)
    ]


def test_no_false_alarm_in_200k_benign_events() -> None:
    assert false_alarms(200_000, seed=11) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 105))
def test_no_false_alarm_in_a_million_benign_events(seed: int) -> None:
    assert false_alarms(200_000, seed) == []


@pytest.mark.parametrize("feature", ["payload.request.user", "headers.request.x-user",
                                     "features.params.user"])
def test_categorical_drift_on_raw_content_never_quotes_a_value(feature: str) -> None:
    from detectors.categorical import ChiSquareDrift
    from detectors.features import Feature

    det = ChiSquareDrift(feature, reference_size=200, window_size=100)
    steps = Feature.parse(feature).steps

    def event(value: str) -> dict[str, object]:
        node: dict[str, object] = {str(steps[-1]): value}
        for step in reversed(steps[:-1]):
            node = {str(step): node}
        return node

    users = ["ann@example.eu", "bob@example.eu", "carla@example.eu"]
    alerts = [a.to_dict() for i in range(2000)
              for a in det.update(event(users[0] if i < 300 else users[i % 3]))]
    assert alerts, "the mix changed: the test needs an alert to inspect"
    assert not any(u in repr(alerts) for u in users)
    # a metadata feature keeps its names: dashboards show which route moved
    det = ChiSquareDrift("route", reference_size=200, window_size=100)
    alerts = [a.to_dict() for i in range(2000)
              for a in det.update({"route": users[0] if i < 300 else users[i % 3]})]
    assert users[1] in repr(alerts)


def test_bernoulli_cusum_survives_a_warm_up_where_every_request_failed() -> None:
    from detectors.rate import BernoulliCUSUM

    det = BernoulliCUSUM("upstream_error", warmup=200, span=500, threshold=8.0)
    for _ in range(200):  # the model was still loading: the learnt rate is 1.0
        assert det.update({"upstream_status": 503}) == []
    for _ in range(5000):  # healthy: the rate is learnt again, no error, no alert
        assert det.update({"upstream_status": 200}) == []
    alerts = [a for i in range(2000)
              for a in det.update({"upstream_status": 502 if i % 3 == 0 else 200})]
    assert alerts, "a third of requests failing is a rise the detector must see again"


@pytest.mark.parametrize("type_name", ["adwin", "kswin", "page_hinkley"])
def test_one_absurd_value_does_not_blind_a_numeric_detector(type_name: str) -> None:
    import random

    def first_alert(spike: float | None) -> int | None:
        rng = random.Random(1)
        det = TYPES[type_name].factory("v")
        for i in range(6000):
            x = rng.gauss(100, 10) if i < 2000 else rng.gauss(200, 10)
            if i == 1000 and spike is not None:
                x = spike
            if det.update({"v": x}) and i >= 2000:
                return i
        return None

    for spike in (None, 1e308):
        found = first_alert(spike)
        assert found is not None and found < 2400, (spike, found)
