"""Admin listener: metrics in Prometheus text, liveness, readiness with reasons."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from factories import readyz_degraded
from prometheus_client.parser import text_string_to_metric_families

from sidecar.admin import health
from sidecar.admin.health import Readiness


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_requests_by_route_status_and_version(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    for _ in range(3):
        async with client.post(sidecar.url + "/v1/chat/completions",
                               json={"messages": []}) as r:
            await r.read()
    async with client.get(sidecar.url + "/error/502") as r:
        await r.read()
    async with client.get(sidecar.url + "/v2/models/anything/infer") as r:
        await r.read()
    await sidecar.events(5)
    async with client.get(sidecar.admin_url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        m = samples(await r.text())
    chat = (("model_version", "1.2.3"), ("route", "/v1/chat/completions"), ("status", "200"))
    assert m[("inference_sidecar_requests_total", chat)] == 3
    assert m[("inference_sidecar_request_duration_seconds_count", chat)] == 3
    err = (("model_version", "1.2.3"), ("route", "other"), ("status", "502"))
    assert m[("inference_sidecar_requests_total", err)] == 1
    # A raw path never becomes a label value: the route template does.
    kserve = (("model_version", "1.2.3"), ("route", "/v2/models/{model}/infer"),
              ("status", "405"))
    assert m[("inference_sidecar_requests_total", kserve)] == 1
    assert m[("inference_sidecar_events_emitted_total", ())] == 5
    assert m[("inference_sidecar_events_delivered_total", (("sink", "memory"),))] == 5
    assert m[("inference_sidecar_log_events", ())] == 0  # all acknowledged and trimmed
    assert m[("inference_sidecar_requests_in_flight", ())] == 0
    assert m[("inference_sidecar_outcomes_total", (("outcome", "ok"),))] == 3
    assert m[("inference_sidecar_build_info", (
        ("evidence_bundle_id", "eb-42"), ("model_name", "test-model"),
        ("model_version", "1.2.3"), ("policy_version", "pol-9")))] == 1


async def test_healthz_and_readyz(sidecar: Any, client: aiohttp.ClientSession) -> None:
    async with client.get(sidecar.admin_url + "/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    for _ in range(100):
        async with client.get(sidecar.admin_url + "/readyz") as r:
            if r.status == 200:
                break
        await asyncio.sleep(0.05)
    assert r.status == 200


async def test_readyz_reports_unreachable_upstream(
    make_sidecar: Any, client: aiohttp.ClientSession, unused_port: int
) -> None:
    sc = await make_sidecar(upstream_url=f"http://127.0.0.1:{unused_port}")
    await sc.sidecar.readiness.probe_once()
    async with client.get(sc.admin_url + "/readyz") as r:
        assert r.status == 503
        body = await r.json()
    assert any(reason.startswith("upstream: unreachable") for reason in body["reasons"])


async def test_readyz_uses_the_health_path_when_configured(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(upstream_health_path="/error/500")
    await sc.sidecar.readiness.probe_once()
    async with client.get(sc.admin_url + "/readyz") as r:
        assert r.status == 503
        # it answered: not "unreachable", which sends an operator to the network
        assert "upstream: health check answered 500" in (await r.json())["reasons"]
    sc2 = await make_sidecar(upstream_health_path="/health")
    await sc2.sidecar.readiness.probe_once()
    async with client.get(sc2.admin_url + "/readyz") as r:
        assert r.status == 200


async def test_failing_sink_degrades_but_stays_ready_and_loses_nothing(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    # The durable log keeps every event while the sink is down, so the model stays in
    # service: readiness reports the sink as degraded, not as a reason to stop traffic.
    await sidecar.sidecar.readiness.probe_once()
    sidecar.sink.fail_next = 3
    async with client.get(sidecar.url + "/v1/models") as r:
        await r.read()
    for _ in range(200):
        async with client.get(sidecar.admin_url + "/readyz") as r:
            body = await r.json()
        if body["degraded"] and "(" in body["degraded"][0]:  # the reason is a step behind
            break
        await asyncio.sleep(0.005)
    assert r.status == 200
    # Why, in the sink's words: the delivery's last failure.
    assert body["degraded"] == [
        "sink memory: delivery failing (memory sink told to fail), events kept in the log"]
    (_event,) = await sidecar.events(1)  # retried until the sink took it
    async with client.get(sidecar.admin_url + "/metrics") as r:
        m = samples(await r.text())
    assert m[("inference_sidecar_delivery_failures_total", (("sink", "memory"),))] == 3
    assert m[("inference_sidecar_events_retried_total", (("sink", "memory"),))] == 3
    assert m[("inference_sidecar_events_delivered_total", (("sink", "memory"),))] == 1


async def test_loss_counters_are_exported_at_zero_before_any_loss(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    # rate() and increase() need a series before the first loss, not an absent one
    async with client.get(sidecar.admin_url + "/metrics") as r:
        text = await r.text()
    for reason in ("queue_full", "log_full_oldest", "lost_on_crash", "corrupt", "shutdown"):
        assert f'inference_sidecar_events_dropped_total{{reason="{reason}"}} 0.0' in text
    assert 'inference_sidecar_events_incomplete_total{reason="log_full"} 0.0' in text
    for reason in ("log_full_oldest", "log_full_newest"):
        assert f'inference_sidecar_alerts_dropped_total{{reason="{reason}"}} 0.0' in text


async def test_emitted_counts_every_inference_also_those_a_full_queue_dropped(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    # One per inference, whichever end of the queue drop_newest/drop_oldest drops: so
    # emitted = delivered + dropped (+ pending) holds under either policy.
    sc = await make_sidecar(event_queue_size="1", when_full="drop_newest",
                            durability="memory")

    async def one() -> int:
        async with client.post(sc.url + "/v1/chat/completions", json={"messages": []}) as r:
            await r.read()
            return r.status

    statuses: list[int] = []
    for _ in range(5):  # 200 requests, 40 at a time
        statuses += await asyncio.gather(*(one() for _ in range(40)))
    assert statuses == [200] * 200
    for _ in range(200):
        async with client.get(sc.admin_url + "/metrics") as r:
            m = samples(await r.text())
        delivered = m[("inference_sidecar_events_delivered_total", (("sink", "memory"),))]
        dropped = m[("inference_sidecar_events_dropped_total", (("reason", "queue_full"),))]
        if delivered + dropped == 200:
            break
        await asyncio.sleep(0.02)
    assert dropped > 0, "the queue never filled: the test proves nothing"
    assert m[("inference_sidecar_events_emitted_total", ())] == 200 == delivered + dropped


async def test_sync_metrics_include_the_fsync_wait_and_count_a_withheld_response_as_cut(
    make_sidecar: Any, client: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    from sidecar.durability.wal import WriteAheadLog

    delay = {"s": 0.0}
    real_sync = WriteAheadLog.sync

    def slow_sync(self: WriteAheadLog) -> None:
        time.sleep(delay["s"])  # a slow disk, in the writer's thread
        real_sync(self)

    monkeypatch.setattr(WriteAheadLog, "sync", slow_sync)
    sc = await make_sidecar(durability="sync", durability_timeout="1s")
    delay["s"] = 0.4
    async with client.post(sc.url + "/text", data=b"hi") as r:
        assert r.status == 200
        await r.read()
    delay["s"] = 1.5  # past durability_timeout: the response is withheld
    with pytest.raises(aiohttp.ClientError):
        async with client.post(sc.url + "/text", data=b"hi") as r:
            await r.read()
    delay["s"] = 0.0
    async with client.get(sc.admin_url + "/metrics") as r:
        m = samples(await r.text())
    ok = (("model_version", "1.2.3"), ("route", "other"), ("status", "200"))
    cut = (("model_version", "1.2.3"), ("route", "other"), ("status", "499"))
    assert m[("inference_sidecar_request_duration_seconds_sum", ok)] >= 0.4  # fsync included
    assert m[("inference_sidecar_requests_total", ok)] == 1
    assert m[("inference_sidecar_requests_total", cut)] == 1
    assert m[("inference_sidecar_outcomes_total", (("outcome", "aborted"),))] == 1
    assert m[("inference_sidecar_requests_refused_total", (("reason", "event_not_durable"),))] == 1


async def test_sync_metrics_count_requests_that_never_committed(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    # Recorded outside Exchange.commit (a client gone before the answer): nothing waits
    # for their fsync, and their metrics must not wait for it either.
    sc = await make_sidecar(durability="sync")
    with pytest.raises(asyncio.TimeoutError):
        async with client.get(sc.url + "/hang", timeout=aiohttp.ClientTimeout(total=0.3)) as r:
            await r.read()
    for _ in range(200):
        async with client.get(sc.admin_url + "/metrics") as r:
            m = samples(await r.text())
        if m.get(("inference_sidecar_outcomes_total", (("outcome", "client_disconnected"),))):
            break
        await asyncio.sleep(0.02)
    gone = (("model_version", "1.2.3"), ("route", "other"), ("status", "499"))
    assert m[("inference_sidecar_requests_total", gone)] == 1
    assert m[("inference_sidecar_outcomes_total", (("outcome", "client_disconnected"),))] == 1
    assert m[("inference_sidecar_requests_in_flight", ())] == 0


async def test_a_probe_that_fails_unexpectedly_does_not_end_probing(
    make_sidecar: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A probe loop that died left /readyz answering from its last state for ever.
    calls: list[int] = []

    async def flaky(self: Readiness) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not expected")
        self.broker_problem = "bootstrap unreachable (test)"

    monkeypatch.setattr(Readiness, "probe_brokers", flaky)
    monkeypatch.setattr(health, "PROBE_INTERVAL_S", 0.05)
    sc = await make_sidecar(kafka_bootstrap="127.0.0.1:9")
    degraded = await readyz_degraded(sc.admin_url, want=True)
    assert degraded == ["sink memory: bootstrap unreachable (test), nothing delivered since"]
    assert len(calls) >= 2
