"""``RdKafkaSink`` (``kafka_client: librdkafka``): what is its own. The behaviour it
shares with ``KafkaSink`` is tested with both producers in ``test_kafka_sink.py`` and
``test_kafka_tls.py``; against the real embedded broker here too."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import KEYS, EmbeddedBroker, consume_all, make_records, seq_counts

import sidecar.sinks.kafka_config as kafka_config
from sidecar.config import ConfigError, load_settings
from sidecar.events.record import Record
from sidecar.sinks.base import SinkError
from sidecar.sinks.kafka import KafkaSink
from sidecar.sinks.kafka_config import KafkaSettings, SaslCredentials, kafka_settings_from
from sidecar.sinks.rdkafka import RdKafkaSink, create_rd_producer, rd_config
from sidecar.sinks.registry import build_sink


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


def test_a_missing_topic_fails_the_batch_before_any_of_it_is_sent(
        broker: EmbeddedBroker) -> None:
    # As test_kafka_sink's test of the same name: a cluster without auto-create, where the
    # alerts topic was never made, answers its metadata request with an error.
    class NoAlertsTopic:
        def __init__(self, real: Any) -> None:
            self.real = real

        def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
            metadata = self.real.list_topics(topic, timeout=timeout)
            if topic == "inference.alerts":
                metadata.topics[topic].error = "UNKNOWN_TOPIC_OR_PART"
            return metadata

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    alert = Record(99, b"client-a", b'{"id": "inf-a/rate"}', (("ce_type", b"ai.detector.alert"),))
    settings = KafkaSettings(bootstrap=broker.bootstrap, topic="inference.events",
                             alerts_topic="inference.alerts", client="librdkafka")
    sink = RdKafkaSink(settings, lambda s, config: NoAlertsTopic(create_rd_producer(s, config)))
    try:
        for _ in range(3):
            with pytest.raises(SinkError, match=r"topic inference\.alerts"):
                sink.write([*make_records(0, 3), alert])
        sink.write(make_records(3, 1))
    finally:
        sink.close()
    got = consume_all(broker.bootstrap, "inference.events", timeout_s=10, min_records=1)
    assert seq_counts(r.value for r in got) == {3: 1}


def test_a_failed_write_discards_the_producer_and_the_next_one_delivers(
        broker: EmbeddedBroker) -> None:
    made: list[Any] = []

    def factory(settings: KafkaSettings, config: dict[str, Any]) -> Any:
        made.append(create_rd_producer(settings, config))
        return made[-1]

    sink = RdKafkaSink(KafkaSettings(bootstrap=broker.bootstrap, topic="again",
                                     client="librdkafka", delivery_timeout_s=1.5), factory)
    try:
        sink.write(make_records(0, 10))
        broker.pause()
        try:
            with pytest.raises(SinkError, match=r"10 of 10 records not acknowledged within 1.5 s"):
                sink.write(make_records(10, 10))
        finally:
            broker.resume()
        sink.write(make_records(10, 10))
        assert sink.healthy
    finally:
        sink.close()
    assert len(made) == 2
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
    assert system_ca["ssl.ca.location"] == "probe"  # the system's CA bundle


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
    assert "|rdkafka#" not in capfd.readouterr().err
