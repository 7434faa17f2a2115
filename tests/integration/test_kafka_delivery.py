"""End to end with a real broker: requests through the sidecar, events on the Kafka topic.

The broker is Tansu (tests/kafka_broker.py); outages are simulated by pausing it
(SIGSTOP), by starting it late, and by killing the sidecar. Every check counts what is
on the topic by consuming it (Tansu's end offsets under-report).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from factories import readyz_degraded  # type: ignore[import-not-found]
from kafka_broker import (  # type: ignore[import-not-found]
    EmbeddedBroker,
    consume_all,
    consume_all_confluent,
)
from prometheus_client.parser import text_string_to_metric_families

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "sidecar/schemas/ai.inference.completed.v1.json").read_text()
)
TOPIC = "inference.events"
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
LOOP_LAG_BOUND_S = 0.05


async def send_requests(url: str, n: int, concurrency: int = 50) -> list[str]:
    """n chat requests; the inference ids of the responses received (any status)."""
    ids: list[str] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession) -> None:
        async with semaphore, session.post(url + "/v1/chat/completions", json=CHAT) as r:
            await r.read()
            assert r.status == 200, r.status
            ids.append(r.headers["x-inference-id"])

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        await asyncio.wait_for(asyncio.gather(*(one(s) for _ in range(n))), 120)
    return ids


async def topic_ids(bootstrap: str, expected: int, timeout_s: float = 60.0) -> list[str]:
    records = await asyncio.to_thread(
        lambda: consume_all(bootstrap, TOPIC, timeout_s, min_records=expected))
    return [json.loads(r.value)["id"] for r in records]


def assert_exactly(ids_on_topic: list[str], sent: list[str]) -> int:
    """Every sent id is on the topic, nothing else is; returns the duplicate count."""
    assert set(ids_on_topic) == set(sent), (
        f"missing {len(set(sent) - set(ids_on_topic))}, "
        f"unexpected {len(set(ids_on_topic) - set(sent))}"
    )
    return len(ids_on_topic) - len(set(ids_on_topic))


async def metric(admin_url: str, name: str, labels: dict[str, str] | None = None) -> float:
    async with aiohttp.ClientSession() as s, s.get(admin_url + "/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return float(sample.value)
    raise AssertionError(f"metric {name} {labels} not found")


async def kafka_sidecar(make_sidecar: Any, broker: EmbeddedBroker, **extra: str) -> Any:
    return await make_sidecar(
        real_sink=True, kafka_bootstrap=broker.bootstrap, kafka_delivery_timeout="3s", **extra
    )


@pytest.mark.parametrize("kafka_client", ["kafka-python", "librdkafka"])
async def test_n_requests_give_exactly_n_cloudevents_on_the_topic(
    make_sidecar: Any, broker: EmbeddedBroker, kafka_client: str
) -> None:
    sc = await kafka_sidecar(make_sidecar, broker, kafka_client=kafka_client)
    sent = await send_requests(sc.url, 1000)
    records = await asyncio.to_thread(
        lambda: consume_all(broker.bootstrap, TOPIC, 60.0, min_records=1000))
    duplicates = assert_exactly([json.loads(r.value)["id"] for r in records], sent)
    assert duplicates == 0, f"{duplicates} duplicates without any outage"
    for record in records[:100]:
        envelope = json.loads(record.value)
        jsonschema.validate(envelope, SCHEMA)
        headers = dict(record.headers)
        assert headers["ce_type"] == b"ai.inference.completed"
        assert headers["model_version"] == b"1.2.3"
        assert headers["policy_version"] == b"pol-9"
        assert headers["evidence_bundle_id"] == b"eb-42"
        assert record.key == b"test-model"  # no client identity configured: the model name
    await sc.sidecar.stop()


async def test_records_are_keyed_by_the_client_pseudonym(
    make_sidecar: Any, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    key_file = tmp_path / "client-id.key"
    key_file.write_bytes(b"k" * 32)
    sc = await kafka_sidecar(make_sidecar, broker, client_id_source="header:x-client-id",
                             client_id_key_file=str(key_file))
    async with aiohttp.ClientSession() as s:
        for client in ("tenant-a", "tenant-b", "tenant-a", ""):
            headers = {"x-client-id": client} if client else {}
            async with s.post(sc.url + "/v1/chat/completions", json=CHAT,
                              headers=headers) as r:
                assert r.status == 200
    records = await asyncio.to_thread(
        lambda: consume_all(broker.bootstrap, TOPIC, 30.0, min_records=4))
    # Partitions are read one after another: restore the sending order (UUIDv7 ids).
    records.sort(key=lambda r: json.loads(r.value)["id"])
    keys = [r.key for r in records]
    ids = [json.loads(r.value)["data"]["client_id"] for r in records]
    assert keys[:3] == [i.encode() for i in ids[:3]]
    assert keys[0] == keys[2] != keys[1] and keys[3] == b"test-model"
    assert all(b"tenant" not in r.value and b"tenant" not in r.key for r in records)
    # One client's events share a key, so they share a partition: its order is kept.
    assert {r.partition for r in records if r.key == keys[0]} == {records[0].partition}
    await sc.sidecar.stop()


async def test_a_second_client_implementation_reads_the_topic(
    make_sidecar: Any, broker: EmbeddedBroker
) -> None:
    sc = await kafka_sidecar(make_sidecar, broker)
    sent = await send_requests(sc.url, 50)
    received = await asyncio.to_thread(
        lambda: consume_all_confluent(broker.bootstrap, TOPIC, 60.0, min_records=50))
    ids = [json.loads(r.value)["id"] for r in received]
    assert sorted(ids) == sorted(sent)
    for r in received:
        jsonschema.validate(json.loads(r.value), SCHEMA)
        assert dict(r.headers)["content-type"].startswith(b"application/cloudevents+json")
    await sc.sidecar.stop()


async def steady_load(
    url: str, stop: asyncio.Event, concurrency: int = 10, pause_s: float = 0.0
) -> list[str]:
    """Requests until ``stop`` is set, each worker pausing ``pause_s`` between them; the
    ids of the responses."""
    ids: list[str] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in range(1_000_000):
            if stop.is_set():
                return
            async with session.post(url + "/v1/chat/completions", json=CHAT) as r:
                await r.read()
                assert r.status == 200, r.status
                ids.append(r.headers["x-inference-id"])
            if pause_s:
                await asyncio.sleep(pause_s)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", ["kafka-python", "librdkafka"])
async def test_broker_paused_under_load_loses_nothing(
    spawn_sidecar: Any, broker: EmbeddedBroker, kafka_client: str
) -> None:
    # Paused for 10 s, longer than the 3 s delivery timeout: batches fail, the producer is
    # discarded and recreated, the log grows; the sidecar keeps answering throughout. The
    # sidecar runs as its own process so its loop-lag metric measures only its own loop,
    # and the load is paced (about 400 req/s) so that the two cores are not saturated:
    # at saturation the lag would measure the scheduler's queue, not the sidecar.
    sc = await spawn_sidecar(kafka_bootstrap=broker.bootstrap, kafka_delivery_timeout="3s",
                             kafka_client=kafka_client)
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load(sc.url, stop, pause_s=0.02))
    await asyncio.sleep(1)
    broker.pause()
    await asyncio.sleep(10)
    lag_during_outage = await metric(sc.admin_url, "inference_sidecar_event_loop_lag_max_seconds")
    pending_during_outage = await metric(sc.admin_url, "inference_sidecar_log_events")
    broker.resume()
    await asyncio.sleep(1)
    stop.set()
    sent = await asyncio.wait_for(load, 30)
    ids = await topic_ids(broker.bootstrap, len(sent))
    duplicates = assert_exactly(ids, sent)
    print(f"paused broker: {len(sent)} events, {duplicates} duplicates, "
          f"loop lag max {lag_during_outage * 1000:.1f} ms, "
          f"{pending_during_outage:.0f} waiting in the log during the outage")
    assert pending_during_outage > 1000  # requests went on being served during the outage
    # The target: under 50 ms. Measured here since the Kafka producer runs in its
    # own process (sinks/isolated.py): 2-3 ms max over the outage (it was 10-90 ms with
    # kafka-python's threads sharing the sidecar's GIL).
    assert lag_during_outage < LOOP_LAG_BOUND_S, (
        f"event loop lag {lag_during_outage:.3f}s while black-holed")
    failures = await metric(sc.admin_url, "inference_sidecar_delivery_failures_total",
                            {"sink": "kafka"})
    assert failures > 0
    sc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(sc.proc.wait(), 60) == 0


@pytest.mark.slow
async def test_broker_absent_at_start_then_everything_is_delivered(
    make_sidecar: Any, port_factory: Any
) -> None:
    port = port_factory()
    late = EmbeddedBroker(port=port)
    sc = await make_sidecar(real_sink=True, kafka_bootstrap=f"127.0.0.1:{port}",
                            kafka_delivery_timeout="2s")
    sent = await send_requests(sc.url, 300)  # served while there is no broker at all
    assert await metric(sc.admin_url, "inference_sidecar_log_events") == 300
    async with aiohttp.ClientSession() as s:
        for _ in range(100):  # the first write starts the sink's worker process, then fails
            async with s.get(sc.admin_url + "/readyz") as r:
                body = await r.json()
            if body["degraded"]:
                break
            await asyncio.sleep(0.05)
    assert r.status == 200 and body["degraded"], body
    with late:
        ids = await topic_ids(late.bootstrap, 300)
        assert_exactly(ids, sent)
        for _ in range(200):
            if await metric(sc.admin_url, "inference_sidecar_log_events") == 0:
                break
            await asyncio.sleep(0.05)
        assert await metric(sc.admin_url, "inference_sidecar_log_events") == 0
        await sc.sidecar.stop()


async def test_an_idle_sidecar_says_when_its_broker_is_unreachable(
    make_sidecar: Any, port_factory: Any
) -> None:
    # No request, so no write: before the bootstrap probe, /readyz said nothing at all of
    # a broker that is down or a bootstrap address that is wrong.
    port = port_factory()
    sc = await make_sidecar(real_sink=True, kafka_bootstrap=f"127.0.0.1:{port}")
    degraded = await readyz_degraded(sc.admin_url, want=True)
    assert any("sink kafka: bootstrap unreachable" in d for d in degraded), degraded
    with EmbeddedBroker(port=port):
        assert await readyz_degraded(sc.admin_url, want=False) == []
    await sc.sidecar.stop()


async def _drained(admin_url: str) -> None:
    for _ in range(200):
        if await metric(admin_url, "inference_sidecar_log_events") == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("events still in the log after 10 s")


async def test_a_delivering_sink_is_not_degraded_by_its_bootstrap_address(
    make_sidecar: Any,
) -> None:
    # The bootstrap address only serves discovery: behind a forwarder that goes away (a
    # DNS alias, a load balancer, the one listed broker of a cluster), the producer goes
    # on delivering to the brokers it learnt. Readiness must not call that degraded.
    with EmbeddedBroker() as broker:
        links: list[asyncio.StreamWriter] = []

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            b_reader, b_writer = await asyncio.open_connection("127.0.0.1", broker.port)
            links.extend([writer, b_writer])
            await asyncio.gather(pipe(reader, b_writer), pipe(b_reader, writer))

        front = await asyncio.start_server(forward, "127.0.0.1", 0)
        front_port = front.sockets[0].getsockname()[1]
        sc = await make_sidecar(real_sink=True, kafka_bootstrap=f"127.0.0.1:{front_port}")
        await send_requests(sc.url, 5)
        await _drained(sc.admin_url)
        front.close()
        for link in links:
            link.close()
        await front.wait_closed()
        # noticed by the probe: nothing was delivered since, so it is said
        degraded = await readyz_degraded(sc.admin_url, want=True)
        assert any("bootstrap unreachable" in d and "nothing delivered since" in d
                   for d in degraded), degraded
        await send_requests(sc.url, 5)  # delivered through the broker the producer knows
        await _drained(sc.admin_url)
        assert await readyz_degraded(sc.admin_url, want=False) == []
        await sc.sidecar.stop()


async def test_full_log_with_block_refuses_fast_and_never_hangs(
    make_sidecar: Any, port_factory: Any
) -> None:
    # No broker: nothing is delivered, so the 1 MiB log fills up; then every request
    # gets a stamped 503 at once instead of waiting.
    sc = await make_sidecar(
        real_sink=True, kafka_bootstrap=f"127.0.0.1:{port_factory()}",
        wal_max_bytes="1MiB", wal_segment_bytes="128KiB", when_full="block",
    )
    statuses: collections.Counter[int] = collections.Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(3000):
            started = time.monotonic()
            async with session.post(sc.url + "/v1/chat/completions", json=CHAT) as r:
                await r.read()
            statuses[r.status] += 1
            if r.status == 503:
                assert time.monotonic() - started < 1.0
                assert (await r.json())["error"] in ("event_log_full", "event_queue_full")
                assert r.headers["x-inference-id"]
                break
    assert statuses[503] == 1 and statuses[200] > 100, statuses
    async with aiohttp.ClientSession() as s, s.get(sc.admin_url + "/readyz") as r:
        assert r.status == 503
        assert any("event_log_full" in x for x in (await r.json())["reasons"])


@pytest.mark.slow
async def test_sigkill_with_sync_durability_keeps_every_answered_event(
    spawn_sidecar: Any, broker: EmbeddedBroker
) -> None:
    settings = {"kafka_bootstrap": broker.bootstrap, "durability": "sync"}
    first = await spawn_sidecar(**settings)
    answered: list[str] = []

    async def load() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(100_000):
                try:
                    async with session.post(first.url + "/v1/chat/completions",
                                            json=CHAT) as r:
                        await r.read()
                        if r.status == 200:
                            answered.append(r.headers["x-inference-id"])
                except aiohttp.ClientError:
                    return  # the sidecar is gone

    tasks = [asyncio.create_task(load()) for _ in range(20)]
    for _ in range(3000):
        if len(answered) >= 500:
            break
        await asyncio.sleep(0.01)
    first.proc.send_signal(signal.SIGKILL)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    await first.proc.wait()
    second = await spawn_sidecar(**settings)  # same log directory: resumes delivery from it
    ids = await topic_ids(broker.bootstrap, len(answered))
    missing = set(answered) - set(ids)
    assert len(answered) >= 500
    assert not missing, f"{len(missing)} of {len(answered)} answered events lost"
    second.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.proc.wait(), 30) == 0
