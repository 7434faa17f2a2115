"""Detection delay and false alarms of the default abuse detectors, on attacks.py.

Aims (issue 5): every attack detected within 200 of its events; fewer than 1 false alarm
per 100,000 benign events. The bounds and why:

- Delay: each attack, merged into benign traffic from benign event 3,000 (the population
  histograms are warm), must raise its own detector's alert, naming the attacker where
  the detector is per client, within 200 attack events, on each of 3 seeds (5 in the slow
  run). The attackers are modest on purpose: one request every 2 s (extraction), 10 s
  (token flood, 7,000-token prompts vs a median of 300), 5 s (error probe, 70 % errors),
  a campaign from 50 fresh ids every 40 s (~10 % of traffic, half of its copies altered),
  and a 5 request/s burst.
- False alarms: the abuse set sees 100,000 benign events (~5 days of the quiet service,
  2,000 Zipf clients) here and must raise none; the slow test adds 5 x 200,000. Zero in
  1,100,000 bounds the rate below 0.28 per 100,000 at 95 % confidence (rule of three);
  zero in 100,000 alone only below 3, which is why the slow test exists.
  Margin (measured on the same 100,000 events): at half their thresholds the duplicate,
  token and error detectors still raise nothing (near_duplicate also at max_distance 5,
  token_usage also at factor 1); rate_burst (13) and extraction (2, the top Zipf client,
  17 % of traffic, at its daily peak) do raise alerts, so theirs is a margin of ~2x: set
  extraction's min_requests above the heaviest legitimate client's 10-minute volume.
- Measured delays (attack events until the alert, seeds 0-2): prompt injection 1,
  token flood 8, error probe 8-14, rate burst 24-27, campaign 31-35, extraction 100
  (= min_requests: it needs that much volume by definition).
- Memory: 1,000,000 distinct client ids keep at most max_clients states per detector.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from attacks import ATTACKS, benign, with_attack

from detectors.config import load_config
from detectors.registry import DetectorSet, DetectorSpec

START = 3_000
EXPECT = {  # attack -> the default detector that must catch it
    "extraction": "model-extraction",
    "prompt_injection": "prompt-signatures",
    "token_flood": "token-usage",
    "error_probe": "error-probing",
    "campaign": "repeated-prompts",
    "rate_burst": "request-rate-burst",
}


def abuse_set() -> DetectorSet:
    config = load_config()
    specs = [s for s in config.specs if s.type not in ("adwin", "page_hinkley", "kswin",
                                                       "chi_square")]
    return DetectorSet(specs, config.digest)


def delay(name: str, seed: int) -> tuple[int | None, list[str]]:
    detectors, attacker = abuse_set(), ATTACKS[name][2]
    sent, early = 0, []
    for event in with_attack(name, START + 6_000, seed, START):
        alerts = detectors.update(event)
        sent += bool(event.get("_attack"))
        for a in alerts:
            mine = a.detector == EXPECT[name] and (
                attacker is None or a.client_id == attacker or a.client_id is None)
            if sent and mine:
                return sent, early
            if not sent:
                early.append(a.detector)
    return None, early


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_detected_within_200_of_its_events(name: str) -> None:
    for seed in range(3):
        found, early = delay(name, seed)
        assert not early, f"false alarms before the attack: {early}"
        assert found is not None and found <= 200, (seed, found)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_detected_on_more_seeds(name: str) -> None:
    for seed in range(3, 8):
        found, _ = delay(name, seed)
        assert found is not None and found <= 200, (seed, found)


def false_alarms(n: int, seed: int) -> list[tuple[int, str, str | None]]:
    detectors = abuse_set()
    return [(i, a.detector, a.message) for i, e in enumerate(benign(n, seed))
            for a in detectors.update(e)]


def test_no_false_alarm_in_100k_benign_events() -> None:
    assert false_alarms(100_000, seed=21) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(200, 205))
def test_no_false_alarm_in_a_million_benign_events(seed: int) -> None:
    assert false_alarms(200_000, seed) == []


PER_CLIENT = ("rate_burst", "extraction", "token_usage", "error_probing")


def test_memory_is_bounded_with_a_million_client_ids() -> None:
    specs = [DetectorSpec(t, t, params={"max_clients": 1_000} if t != "token_usage" else
                          {"max_clients": 1_000, "warmup": 100, "half_life": 1_000})
             for t in PER_CLIENT]
    detectors = DetectorSet(specs)
    event: dict[str, Any] = {"status": 404, "features": {"prompt_simhash": 1, "prompt_chars": 9,
                                                         "input_tokens": 5, "output_tokens": 5}}
    sizes = []
    for i in range(1_000_000):
        event["client_id"] = f"00000001:{i:016x}"
        event["timestamp"] = f"2025-01-01T{i // 3_600_000 % 24:02d}:00:00Z"
        event["features"]["prompt_simhash"] = i
        detectors.update(event)
        if i in (10_000, 999_999):
            sizes.append(len(pickle.dumps(detectors.detectors)))
    for detector in detectors.detectors:
        table = detector.clients  # type: ignore[attr-defined]
        assert len(table) == 1_000 and table.evictions >= 998_000
    assert sizes[1] <= sizes[0] * 1.2
    assert all(n == 0 for n in detectors.errors.values())
    # what the sidecar exports: each table's evictions, handed on once
    taken = detectors.take_evictions()
    assert taken == {spec.name: detector.clients.evictions  # type: ignore[attr-defined]
                     for spec, detector in zip(specs, detectors.detectors, strict=True)}
    assert detectors.take_evictions() == {}


def test_extraction_counts_a_late_event_once_not_more() -> None:
    # a long stream's event is stamped at its arrival and enqueued at its end; replicas'
    # clocks differ: an event older than the client's window must not inflate its count
    from datetime import UTC, datetime, timedelta

    from detectors.duplicates import Extraction

    det = Extraction()  # window_s 600, min_requests 100
    t0 = datetime(2025, 1, 1, tzinfo=UTC)

    def event(i: int, t: float) -> dict[str, Any]:
        return {"client_id": "k1:aa", "timestamp": (t0 + timedelta(seconds=t)).isoformat(),
                "features": {"prompt_simhash": (i * 0x9E3779B97F4A7C15) % (1 << 64),
                             "prompt_chars": 80}}

    alerts = [a for i in range(70) for a in det.update(event(i, i * 8))]
    alerts += [a for i in range(70, 80) for a in det.update(event(i, 600 + (i - 70) * 5))]
    alerts += det.update(event(80, 100))
    assert alerts == []
    count, line = det.observe(event(80, 100))  # type: ignore[misc]
    assert count is not None and count <= 81 and line == 100


def _rate_events(times: list[float], client: str = "k1:slow") -> list[dict[str, Any]]:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    return [{"client_id": client, "timestamp": (t0 + timedelta(seconds=t)).isoformat()}
            for t in times]


def test_a_slow_client_s_late_backlog_is_no_burst() -> None:
    """Two replicas' recordings concatenated (replay), or a backlog delivered after the
    other replica's newer events (detect): one client at 0.5 req/s must not look like a
    burst. A late event counted as new added 1 without decay each time."""
    from detectors.abuse import RateBurst

    det = RateBurst(min_count=12, short_s=10, long_s=1000, global_short_s=10,
                    global_min_count=1_000_000)
    replica_a = [4.0 * i for i in range(150)]  # every other request of the client
    replica_b = [4.0 * i + 2.0 for i in range(150)]
    alerts = [a for e in _rate_events(replica_a + replica_b) for a in det.update(e)]
    assert alerts == []
    # the same events in time order give the same counts, to rounding
    ordered = RateBurst(min_count=12, short_s=10, long_s=1000, global_short_s=10,
                        global_min_count=1_000_000)
    for e in _rate_events(sorted(replica_a + replica_b)):
        ordered.update(e)
    assert det.observe(_rate_events([600.0])[0]) == pytest.approx(
        ordered.observe(_rate_events([600.0])[0]), rel=1e-9)


def test_a_clock_stepped_back_does_not_pile_up_counts() -> None:
    from detectors.abuse import RateBurst

    det = RateBurst(min_count=12, short_s=10, long_s=1000, global_short_s=10,
                    global_min_count=1_000_000)
    times = [float(t) for t in range(600)] + [300.0 + t for t in range(300)]  # back 300 s
    assert [a for e in _rate_events(times) for a in det.update(e)] == []


def test_an_alert_on_requests_without_a_client_id_names_no_client() -> None:
    # They share one bucket; its name is no pseudonym, and as a Kafka key it would put
    # every such alert on one made-up key.
    detectors = DetectorSet([DetectorSpec("probe", "error_probing", params={"min_errors": 5})])
    alerts = [alert for i in range(200)
              for alert in detectors.update({"status": 404, "inference_id": str(i),
                                             "timestamp": f"2025-01-01T00:00:{i % 60:02d}Z"})]
    assert alerts and all(alert.client_id is None for alert in alerts)
