"""``RdKafkaSink`` (``kafka_client: librdkafka``): what is its own. The behaviour it
shares with ``KafkaSink`` is tested with both producers in ``test_kafka_sink.py`` and
``test_kafka_tls.py``; against the real embedded broker here too."""

from __future__ import annotations

import logging
import ssl
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import confluent_kafka
import pytest
from kafka_broker import (
    KEYS,
    EmbeddedBroker,
    consume_all,
    free_port,
    librdkafka_lines,
    make_records,
    seq_counts,
)

import sidecar.sinks.kafka_config as kafka_config
from sidecar.config import ConfigError, load_settings
from sidecar.sinks.base import SinkError
from sidecar.sinks.kafka import KafkaSink
from sidecar.sinks.kafka_config import KafkaSettings, SaslCredentials, kafka_settings_from
from sidecar.sinks.rdkafka import RdKafkaSink, create_rd_producer, rd_config
from sidecar.sinks.registry import build_sink

TLS = Path(__file__).resolve().parent / "tls"


def test_a_key_lands_on_the_partition_kafka_python_chooses(broker: EmbeddedBroker) -> None:
    # Switching producer libraries must not move a client's events to another partition
    # (their order is kept per partition only): librdkafka's default partitioner would.
    records = make_records(0, 210)
    partitions: dict[str, dict[bytes, set[int]]] = {}
    for client in ("kafka-python", "librdkafka"):
        topic = f"partitioned.{client}"
        settings = KafkaSettings(bootstrap=broker.bootstrap, topic=topic, client=client)
        sink = RdKafkaSink(settings) if client == "librdkafka" else KafkaSink(settings)
        try:
            sink.write(records)
        finally:
            sink.close()
        by_key: defaultdict[bytes, set[int]] = defaultdict(set)
        for got in consume_all(broker.bootstrap, topic, min_records=len(records)):
            assert got.key is not None
            by_key[got.key].add(got.partition)
        partitions[client] = dict(by_key)
    assert len(partitions["librdkafka"]) == KEYS
    assert partitions["librdkafka"] == partitions["kafka-python"]
    used = set().union(*partitions["kafka-python"].values())
    assert len(used) > 1, f"the topic needs partitions for this test to mean anything: {used}"


def test_a_topic_still_being_created_gets_its_metadata_wait(broker: EmbeddedBroker) -> None:
    # Auto-creation answers LEADER_NOT_AVAILABLE at first: asked again within
    # MAX_BLOCK_MS, as kafka-python's metadata wait does, instead of failing the batch.
    class Creating:
        def __init__(self, real: Any) -> None:
            self.real, self.asked = real, 0

        def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
            metadata = self.real.list_topics(topic, timeout=timeout)
            self.asked += 1
            if topic is not None and self.asked <= 3:
                metadata.topics[topic].error = "LEADER_NOT_AVAILABLE"
            return metadata

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    made: list[Creating] = []
    sink = RdKafkaSink(
        KafkaSettings(bootstrap=broker.bootstrap, topic="creating", client="librdkafka"),
        lambda s, config: made.append(Creating(create_rd_producer(s, config))) or made[-1])
    try:
        sink.write(make_records(0, 5))
    finally:
        sink.close()
    assert made[0].asked == 4
    got = consume_all(broker.bootstrap, "creating", min_records=5)
    assert set(seq_counts(r.value for r in got)) == set(range(5))


def test_a_failed_write_discards_the_producer_and_the_next_one_delivers(
        broker: EmbeddedBroker) -> None:
    made: list[Any] = []

    def factory(settings: KafkaSettings, config: dict[str, Any]) -> Any:
        made.append(create_rd_producer(settings, config))
        return made[-1]

    sink = RdKafkaSink(KafkaSettings(bootstrap=broker.bootstrap, topic="again",
                                     client="librdkafka", delivery_timeout_s=3.0), factory)
    try:
        sink.write(make_records(0, 10))
        broker.pause()
        try:
            with pytest.raises(SinkError, match=r"10 of 10 records not acknowledged within 3 s"):
                sink.write(make_records(10, 10))
        finally:
            broker.resume()
        for attempt in range(3):  # as the pipeline retries: a broker just woken may be slow
            try:
                sink.write(make_records(10, 10))
                break
            except SinkError:
                if attempt == 2:
                    raise
        assert sink.healthy
    finally:
        sink.close()
    assert len(made) >= 2 and made[0] is not made[-1]
    got = consume_all(broker.bootstrap, "again", min_records=20)
    assert set(seq_counts(r.value for r in got)) == set(range(20))


# --- configuration, without a broker ----------------------------------------------------


def test_rd_config_plaintext() -> None:
    config = rd_config(KafkaSettings(bootstrap="a:9092, b:9093", topic="t",
                                     client="librdkafka", delivery_timeout_s=12))
    assert config["bootstrap.servers"] == "a:9092,b:9093"
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["compression.type"] == "lz4"  # auto: built into librdkafka
    assert config["message.timeout.ms"] == 12000 and config["request.timeout.ms"] == 4000
    assert config["partitioner"] == "murmur2_random"
    assert config["security.protocol"] == "plaintext"
    assert not any(name.startswith(("ssl.", "sasl.")) for name in config)
    assert config["queue.buffering.max.kbytes"] * 1024 >= kafka_config.MAX_REQUEST_SIZE


def test_rd_config_sasl_ssl_and_mutual_tls(tmp_path: Path) -> None:
    settings = KafkaSettings(
        bootstrap="k:9093", topic="t", client="librdkafka", security_protocol="sasl_ssl",
        ssl_cafile="/ca.pem", ssl_certfile="/c.pem", ssl_keyfile="/c.key",
        sasl_mechanism="scram-sha-512", sasl_username_file="/u", sasl_password_file="/p")
    config = rd_config(settings, SaslCredentials("svc", "s3cret"))
    assert config["security.protocol"] == "sasl_ssl"
    assert config["ssl.ca.location"] == "/ca.pem"
    assert config["ssl.certificate.location"] == "/c.pem"
    assert config["ssl.key.location"] == "/c.key"
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert (config["sasl.mechanisms"], config["sasl.username"], config["sasl.password"]) == \
        ("SCRAM-SHA-512", "svc", "s3cret")
    with pytest.raises(ValueError, match="credentials are required"):
        rd_config(settings)
    system_ca = rd_config(KafkaSettings(bootstrap="k:1", topic="t", client="librdkafka",
                                        security_protocol="ssl"))
    trusted = ssl.get_default_verify_paths()  # what Python's default context trusts
    assert system_ca["ssl.ca.location"] == (trusted.cafile or trusted.capath)


def test_the_client_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="client: expected one of"):
        KafkaSettings(bootstrap="k:1", topic="t", client="franz-go")
    assert KafkaSettings(bootstrap="k:1", topic="t", client="LibRdKafka").client == "librdkafka"
    monkeypatch.setattr(kafka_config, "has_librdkafka", lambda: False)
    with pytest.raises(ValueError, match=r"inference-sidecar\[librdkafka\]"):
        KafkaSettings(bootstrap="k:1", topic="t", client="librdkafka")


def test_kafka_client_selects_the_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"model_name": "m", "model_version": "1", "policy_version": "p",
            "evidence_bundle_id": "e", "kafka_bootstrap": "127.0.0.1:9",
            "wal_dir": str(tmp_path / "wal")}
    for client, expected in (("kafka-python", KafkaSink), ("librdkafka", RdKafkaSink)):
        settings = load_settings(flags={**base, "kafka_client": client}, environ={})
        assert kafka_settings_from(settings).client == client
        sink = build_sink(settings)
        try:
            assert sink._factory.func is expected  # type: ignore[attr-defined]
        finally:
            sink.close()
    monkeypatch.setattr(kafka_config, "has_librdkafka", lambda: False)
    with pytest.raises(ConfigError, match=r"^kafka_client: librdkafka needs the confluent"):
        kafka_settings_from(load_settings(flags={**base, "kafka_client": "librdkafka"}, environ={}))


def test_librdkafka_logs_go_to_the_sidecar_logger(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    # librdkafka prints to stderr from its own threads unless given a logger: lines that
    # would break the sidecar's one-JSON-object-per-line logs.
    caplog.set_level(logging.WARNING, logger="sidecar.kafka")
    with EmbeddedBroker() as broker:
        sink = RdKafkaSink(KafkaSettings(bootstrap=broker.bootstrap, topic="logged",
                                         client="librdkafka"))
        try:
            sink.write(make_records(0, 5))
            broker.stop()  # the producer's connections are refused from now on
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not caplog.records:
                sink._producer.poll(0.1)  # type: ignore[union-attr]  # serves log lines
        finally:
            sink.close()
    assert [r for r in caplog.records if r.name == "sidecar.kafka"], "nothing logged"
    assert librdkafka_lines(capfd.readouterr().err) == []


@pytest.mark.parametrize(("delivery", "request_"), [(0.1, None), (3600, None), (3600, 900.0),
                                                    (5, 0.001)])
def test_every_accepted_timeout_is_a_configuration_librdkafka_takes(
        delivery: float, request_: float | None) -> None:
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", topic="t",
                             client="librdkafka", delivery_timeout_s=delivery,
                             request_timeout_s=request_)
    producer = confluent_kafka.Producer({**rd_config(settings),
                                         "logger": logging.getLogger("test.rdkafka")})
    producer.close()


def test_without_a_ca_file_the_ca_python_trusts_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the probe and kafka-python trust (SSL_CERT_FILE included), not librdkafka's own
    # search of fixed paths.
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "server.pem"))
    config = rd_config(KafkaSettings(bootstrap="k:1", topic="t", client="librdkafka",
                                     security_protocol="ssl"))
    assert config["ssl.ca.location"] == str(TLS / "server.pem")


class _Err:
    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text


class _Unacknowledged:
    """A producer whose records are never acknowledged (a unit test's stand-in)."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: 0})})

    def produce(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self, timeout: float = -1) -> int:
        return 1

    def purge(self, **kwargs: Any) -> None:
        pass

    def poll(self, timeout: float = 0) -> int:
        return 0

    def close(self) -> None:
        pass


def test_a_failure_is_not_blamed_on_an_earlier_error() -> None:
    sink = RdKafkaSink(KafkaSettings(bootstrap="k:1", topic="t", client="librdkafka",
                                     delivery_timeout_s=0.1),
                       lambda settings, config: _Unacknowledged())
    sink._reports.error(_Err("ssl://k:9093/1: SSL handshake failed (yesterday)"))
    with pytest.raises(SinkError) as failed:
        sink.write(make_records(0, 1))
    assert str(failed.value).endswith("1 of 1 records not acknowledged within 0.1 s: "
                                      "no acknowledgement in time")
