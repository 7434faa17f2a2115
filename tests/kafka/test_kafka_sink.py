"""``KafkaSink`` against a real embedded broker (Tansu, see ``tests/kafka_broker.py``),
read back with two independent clients: kafka-python and confluent-kafka. No Kafka mocks.
The tests that take ``kafka_client`` run with both producer libraries (``KafkaSink`` on
kafka-python, ``RdKafkaSink`` on librdkafka); ``test_rdkafka_sink.py`` has the rest of
the librdkafka sink's.

TLS and SASL delivery end to end: ``test_kafka_tls.py`` and ``test_kafka_sasl.py`` (the
broker behind a front that terminates TLS and authenticates, ``tests/kafka_fronts.py``).
The end of this file unit-tests the ``KafkaProducer`` keyword arguments the sink passes
(``producer_config``, a pure function) and how credentials are read from their files
(``read_credentials``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import (
    EVENT_TYPE,
    KEYS,
    EmbeddedBroker,
    consume_all,
    consume_all_confluent,
    free_port,
    librdkafka_lines,
    make_records,
    seq_counts,
    seq_of,
)

import sidecar.sinks.kafka as kafka_sink
import sidecar.sinks.kafka_config as kafka_config
from sidecar.config import ConfigError, load_settings
from sidecar.events.record import Record
from sidecar.logs import configure_logging
from sidecar.sinks.base import SinkError
from sidecar.sinks.kafka import (
    CLIENT_ID,
    MAX_BLOCK_MS,
    MAX_REQUEST_SIZE,
    KafkaSettings,
    KafkaSink,
    SaslCredentials,
    check_files,
    kafka_settings_from,
    producer_config,
    read_credentials,
)
from sidecar.sinks.rdkafka import RdKafkaSink, create_rd_producer

TOPIC = "inference.events"
TLS = Path(__file__).resolve().parent / "tls"  # test-only certificate and key (see README)
IO_THREAD = f"{CLIENT_ID}-network-thread"  # kafka-python's producer I/O thread


CLIENTS = ("kafka-python", "librdkafka")


@pytest.fixture(params=CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    client: str = request.param
    return client


def sink_for(bootstrap: str, client: str = "kafka-python", **overrides: Any) -> KafkaSink:
    settings = KafkaSettings(bootstrap=bootstrap, topic=TOPIC, client=client, **overrides)
    return RdKafkaSink(settings) if client == "librdkafka" else KafkaSink(settings)


def threads_now() -> int:
    """Threads of this process, native ones included (librdkafka's never appear in
    ``threading.enumerate()``)."""
    return len(os.listdir("/proc/self/task"))


def threads_back_to(baseline: int, wait_s: float = 3.0) -> int:
    """The thread count, once it is back to ``baseline`` or after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while (now := threads_now()) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def producer_threads(wait_s: float = 3.0) -> list[str]:
    """kafka-python I/O threads still alive after waiting up to ``wait_s`` for them to end."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [t.name for t in threading.enumerate() if t.name == IO_THREAD]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


# --- against the embedded broker --------------------------------------------------------


def test_a_batch_reads_back_exactly_with_per_key_order(broker: EmbeddedBroker,
                                                       kafka_client: str) -> None:
    sink = sink_for(broker.bootstrap, kafka_client)
    records = make_records(0, 500)
    try:
        sink.write(records)
        assert sink.healthy
    finally:
        sink.close()
    got = consume_all(broker.bootstrap, TOPIC, min_records=len(records))

    sent = sorted((r.key, r.value, list(r.headers)) for r in records)
    assert sorted((r.key, r.value, r.headers) for r in got) == sent
    seqs_by_key: defaultdict[bytes, list[int]] = defaultdict(list)
    partitions_by_key: defaultdict[bytes, set[int]] = defaultdict(set)
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        seqs_by_key[r.key].append(seq_of(r.value))
        partitions_by_key[r.key].add(r.partition)
    assert len(seqs_by_key) == KEYS
    for key, seqs in seqs_by_key.items():
        assert seqs == sorted(seqs), f"{key!r} out of order: {seqs[:20]}"
        assert len(partitions_by_key[key]) == 1, key


def test_many_batches_deliver_every_record_once(broker: EmbeddedBroker,
                                                kafka_client: str) -> None:
    batches, size = 20, 500
    sink = sink_for(broker.bootstrap, kafka_client)
    try:
        for n in range(batches):
            sink.write(make_records(n * size, size, pad=900))  # about 1 KB a record
    finally:
        sink.close()
    got = consume_all(broker.bootstrap, TOPIC, timeout_s=60, min_records=batches * size)

    counts = seq_counts(r.value for r in got)
    missing = set(range(batches * size)) - set(counts)
    duplicates = sum(c - 1 for c in counts.values())
    assert not missing, f"{len(missing)} missing, e.g. {sorted(missing)[:10]}"
    assert duplicates == 0, f"{duplicates} duplicates with a healthy broker"
    assert len(got) == batches * size


def test_absent_broker_fails_fast_then_the_next_write_succeeds(kafka_client: str) -> None:
    port = free_port()  # nothing listens here, yet
    sink = sink_for(f"127.0.0.1:{port}", kafka_client)
    records = make_records(0, 100)
    try:
        start = time.monotonic()
        with pytest.raises(SinkError, match=f"127.0.0.1:{port}"):
            sink.write(records)
        assert time.monotonic() - start < MAX_BLOCK_MS / 1000 + 1.0
        assert not sink.healthy

        with EmbeddedBroker(port=port) as broker:
            sink.write(records)
            assert sink.healthy
            sink.close()
            got = consume_all(broker.bootstrap, TOPIC, min_records=len(records))
    finally:
        sink.close()
    assert seq_counts(r.value for r in got) == Counter(range(100))  # each exactly once


def test_paused_broker_fails_within_delivery_timeout_then_everything_arrives(
    broker: EmbeddedBroker, kafka_client: str, capfd: pytest.CaptureFixture[str],
) -> None:
    timeout_s = 2.0
    baseline = threads_now()
    sink = sink_for(broker.bootstrap, kafka_client, delivery_timeout_s=timeout_s)
    first, second, third = make_records(0, 500), make_records(500, 500), make_records(1000, 500)
    try:
        sink.write(first)  # the producer exists and knows the topic when the broker stalls
        broker.pause()
        try:
            start = time.monotonic()
            with pytest.raises(SinkError, match="not acknowledged"):
                sink.write(second)
            elapsed = time.monotonic() - start
        finally:
            broker.resume()
        assert elapsed < timeout_s + 1.5, f"write took {elapsed:.1f} s"
        assert not sink.healthy
        # The failed producer was discarded, its threads included (see discard()).
        assert producer_threads() == []
        assert threads_back_to(baseline) == baseline
        assert librdkafka_lines(capfd.readouterr().err) == []

        sink.write(second)  # the pipeline's retry: the same batch, whole
        assert sink.healthy
        sink.write(third)
    finally:
        sink.close()
    got = consume_all(broker.bootstrap, TOPIC, min_records=1500)

    counts = seq_counts(r.value for r in got)
    missing = set(range(1500)) - set(counts)
    duplicated = {seq: c - 1 for seq, c in counts.items() if c > 1}
    assert not missing, f"{len(missing)} missing, e.g. {sorted(missing)[:10]}"
    report = f"{sum(duplicated.values())} duplicates, seqs {min(duplicated, default=None)}.." \
             f"{max(duplicated, default=None)}"
    # At-least-once: only the batch sent while the broker was paused may appear twice.
    assert set(duplicated) <= set(range(500, 1000)), report
    assert max(duplicated.values(), default=1) == 1, report


def test_broker_paused_before_the_producer_exists_fails_within_request_timeout(
    broker: EmbeddedBroker, kafka_client: str,
) -> None:
    baseline = threads_now()
    sink = sink_for(broker.bootstrap, kafka_client, delivery_timeout_s=3.0,
                    request_timeout_s=1.0)
    records = make_records(0, 50)
    try:
        broker.pause()  # TCP connects (the kernel accepts), the bootstrap gets no answer
        try:
            start = time.monotonic()
            with pytest.raises(SinkError, match="cannot connect"):
                sink.write(records)
            elapsed = time.monotonic() - start
        finally:
            broker.resume()
        assert elapsed < 1.0 + 1.0, f"write took {elapsed:.1f} s"
        assert not sink.healthy
        sink.write(records)
        assert sink.healthy
    finally:
        sink.close()
    assert producer_threads() == []
    assert threads_back_to(baseline) == baseline
    got = consume_all(broker.bootstrap, TOPIC, min_records=len(records))
    assert seq_counts(r.value for r in got) == Counter(range(50))


def test_confluent_kafka_reads_and_parses_what_the_sink_wrote(broker: EmbeddedBroker,
                                                              kafka_client: str) -> None:
    records = make_records(0, 300)
    sink = sink_for(broker.bootstrap, kafka_client)
    try:
        sink.write(records)
    finally:
        sink.close()
    got = consume_all_confluent(broker.bootstrap, TOPIC, min_records=len(records))

    assert len(got) == len(records)
    sent = {r.seq: r for r in records}
    for message in got:
        assert message.value is not None
        event = json.loads(message.value)
        headers = dict(message.headers)
        assert headers["ce_id"] == event["id"].encode()
        assert headers["ce_type"] == EVENT_TYPE
        original = sent.pop(event["data"]["seq"])
        assert message.key == original.key
        assert message.value == original.value
        assert message.headers == list(original.headers)
    assert not sent


def test_close_ends_the_producer_thread(broker: EmbeddedBroker) -> None:
    sink = sink_for(broker.bootstrap)
    try:
        sink.write(make_records(0, 10))
        assert producer_threads(wait_s=0) == [IO_THREAD]
    finally:
        sink.close()
    assert producer_threads() == []


def test_an_oversized_record_is_named_by_seq_never_by_payload(broker: EmbeddedBroker,
                                                              kafka_client: str) -> None:
    huge = Record(41, b"k", b"\xab" * (MAX_REQUEST_SIZE + 1))
    sink = sink_for(broker.bootstrap, kafka_client)
    try:
        with pytest.raises(SinkError, match="seq=41") as caught:
            sink.write([*make_records(0, 3), huge])
    finally:
        sink.close()
    assert "\\xab" not in str(caught.value) and len(str(caught.value)) < 300
    assert not sink.healthy


def test_a_missing_alerts_topic_fails_the_batch_before_any_of_it_is_sent(
        broker: EmbeddedBroker, kafka_client: str) -> None:
    # A cluster without auto-create where the alerts topic was never made: kafka-python's
    # metadata wait for it times out (as partitions_for does there), librdkafka's metadata
    # answers UNKNOWN_TOPIC_OR_PART (Tansu auto-creates: both simulated over the real
    # producer). Events sent before the alert would be published again by every retry.
    class NoAlertsTopic:
        def __init__(self, real: Any) -> None:
            self.real = real

        def partitions_for(self, topic: str) -> Any:  # kafka-python
            if topic == "inference.alerts":
                raise kafka_config.kafka_errors.KafkaTimeoutError("no metadata")
            return self.real.partitions_for(topic)

        def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
            metadata = self.real.list_topics(topic, timeout=timeout)  # librdkafka
            if topic == "inference.alerts":
                metadata.topics[topic].error = "UNKNOWN_TOPIC_OR_PART"
            return metadata

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    alert = Record(99, b"client-a", b'{"id": "inf-a/rate"}', (("ce_type", b"ai.detector.alert"),))
    settings = KafkaSettings(bootstrap=broker.bootstrap, topic=TOPIC,
                             alerts_topic="inference.alerts", client=kafka_client)
    sink = (RdKafkaSink(settings, lambda s, c: NoAlertsTopic(create_rd_producer(s, c)))
            if kafka_client == "librdkafka" else
            KafkaSink(settings, lambda s, c: NoAlertsTopic(kafka_sink.create_producer(s, c))))
    try:
        for _ in range(3):
            with pytest.raises(SinkError, match=r"topic inference\.alerts"):
                sink.write([*make_records(0, 3), alert])
        sink.write(make_records(3, 1))
    finally:
        sink.close()
    got = consume_all(broker.bootstrap, TOPIC, timeout_s=10, min_records=1)
    assert seq_counts(r.value for r in got) == {3: 1}


def test_an_empty_batch_needs_no_broker(kafka_client: str) -> None:
    sink = sink_for(f"127.0.0.1:{free_port()}", kafka_client)
    sink.write([])
    assert sink.healthy
    sink.close()


def test_kafka_python_never_logs_at_debug() -> None:
    """At DEBUG kafka-python logs every record's key and value; the sidecar's --log-level
    debug must not turn that on."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("kafka").level)
    try:
        configure_logging("debug")
        assert logging.getLogger("kafka.producer.kafka").getEffectiveLevel() >= logging.WARNING
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("kafka").setLevel(saved[2])


# --- configuration and credentials: unit level (end to end: test_kafka_sasl.py) ---------


def secret(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def sasl_settings(tmp_path: Path) -> KafkaSettings:
    return KafkaSettings(
        bootstrap="kafka-1.example:9093,kafka-2.example:9093", topic=TOPIC,
        security_protocol="sasl_ssl", sasl_mechanism="scram-sha-512",
        ssl_cafile=secret(tmp_path / "ca.pem", (TLS / "ca.pem").read_text()),
        sasl_username_file=secret(tmp_path / "username", "sidecar\n"),
        sasl_password_file=secret(tmp_path / "password", "first-password\n"),
    )


def test_producer_config_plaintext_defaults() -> None:
    config = producer_config(KafkaSettings(bootstrap="a:9092, b:9093", topic=TOPIC))
    assert config["bootstrap_servers"] == ["a:9092", "b:9093"]
    assert config["acks"] == "all" and config["enable_idempotence"] is True
    assert config["security_protocol"] == "PLAINTEXT"
    assert config["max_block_ms"] == MAX_BLOCK_MS <= 1000
    assert 0 < config["linger_ms"] <= 10
    assert config["delivery_timeout_ms"] == 30_000
    assert config["request_timeout_ms"] + config["linger_ms"] <= config["delivery_timeout_ms"]
    assert config["compression_type"] == kafka_config.default_compression()
    assert not [k for k in config if k.startswith(("ssl_", "sasl_"))]
    # kafka-python raises on an unknown keyword: every key must be one it knows.
    assert set(config) <= set(kafka_sink.KafkaProducer.DEFAULT_CONFIG)


def test_producer_config_sasl_ssl(sasl_settings: KafkaSettings) -> None:
    credentials = SaslCredentials("sidecar", "first-password")
    config = producer_config(sasl_settings, credentials)
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "sidecar"
    assert config["sasl_plain_password"] == "first-password"
    assert config["ssl_cafile"] == sasl_settings.ssl_cafile
    assert config["ssl_check_hostname"] is True
    assert set(config) <= set(kafka_sink.KafkaProducer.DEFAULT_CONFIG)
    with pytest.raises(ValueError, match="credentials"):
        producer_config(sasl_settings, None)


def test_producer_config_mutual_tls(tmp_path: Path) -> None:
    settings = KafkaSettings(
        bootstrap="k:9093", topic=TOPIC, security_protocol="SSL",
        ssl_certfile=secret(tmp_path / "c.pem", "c"), ssl_keyfile=secret(tmp_path / "k.pem", "k"),
    )
    config = producer_config(settings)
    assert config["security_protocol"] == "SSL"
    assert (config["ssl_cafile"], config["ssl_certfile"], config["ssl_keyfile"]) == (
        None, settings.ssl_certfile, settings.ssl_keyfile)
    assert not [k for k in config if k.startswith("sasl_")]


def test_settings_normalise_case_and_compression() -> None:
    settings = KafkaSettings(bootstrap="k:1", topic=TOPIC, compression="GZIP",
                             delivery_timeout_s=6.0)
    assert settings.compression == "gzip"
    assert settings.request_timeout_s == pytest.approx(2.0)  # a third of delivery, at most 10
    assert KafkaSettings(bootstrap="k:1", topic=TOPIC, compression="none").compression is None
    auto = KafkaSettings(bootstrap="k:1", topic=TOPIC, compression="auto").compression
    assert auto == kafka_config.default_compression()
    assert KafkaSettings(bootstrap="k:1", topic=TOPIC).request_timeout_s == 10.0


@pytest.mark.parametrize(("overrides", "field"), [
    ({"bootstrap": "no-port"}, "bootstrap"),
    ({"bootstrap": "k:0"}, "bootstrap"),
    ({"bootstrap": "k:9092,"}, "bootstrap"),
    ({"topic": "two words"}, "topic"),
    ({"security_protocol": "TLS"}, "security_protocol"),
    ({"security_protocol": "SASL_SSL"}, "sasl_mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username_file": "/u"},
     "sasl_password_file"),
    ({"sasl_username_file": "/u"}, "sasl_username_file"),
    ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism"),
    ({"ssl_cafile": "/ca.pem"}, "ssl_cafile"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "ssl_keyfile": "/k",
      "sasl_username_file": "/u", "sasl_password_file": "/p"}, "ssl_keyfile"),
    ({"compression": "brotli"}, "compression"),
    ({"delivery_timeout_s": 0}, "delivery_timeout_s"),
    # both producers refuse a delivery timeout under linger + request timeout
    ({"delivery_timeout_s": 0.005}, "delivery_timeout_s"),
    ({"delivery_timeout_s": 5, "request_timeout_s": 5}, "request_timeout_s"),
    ({"delivery_timeout_s": 5, "request_timeout_s": 0.0005}, "request_timeout_s"),
    # librdkafka's request.timeout.ms is at most 900,000
    ({"delivery_timeout_s": 3600, "request_timeout_s": 1000}, "request_timeout_s"),
    ({"client": "franz-go"}, "client"),
])
def test_settings_reject_bad_values_naming_the_field(
    overrides: dict[str, Any], field: str
) -> None:
    values: dict[str, Any] = {"bootstrap": "k:9092", "topic": TOPIC, **overrides}
    with pytest.raises(ValueError, match=f"^{field}:"):
        KafkaSettings(**values)


def test_credentials_come_from_files_and_are_read_again(
    sasl_settings: KafkaSettings,
) -> None:
    credentials = read_credentials(sasl_settings)
    assert credentials == SaslCredentials("sidecar", "first-password")  # newline stripped
    assert "first-password" not in repr(credentials) + repr(sasl_settings)
    assert sasl_settings.sasl_password_file is not None
    Path(sasl_settings.sasl_password_file).write_text("rotated-password")
    assert read_credentials(sasl_settings) == SaslCredentials("sidecar", "rotated-password")
    assert read_credentials(KafkaSettings(bootstrap="k:1", topic=TOPIC)) is None


class RecordingFactory:
    """Stands in for the producer factory: records the config, then fails like a broker
    that refuses the connection. Only the credential plumbing is under test here."""

    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []

    def __call__(self, settings: KafkaSettings, config: dict[str, Any]) -> Any:
        self.configs.append(config)
        raise SinkError("kafka: cannot connect (test)")


def test_each_new_producer_reads_the_rotated_credentials(sasl_settings: KafkaSettings) -> None:
    factory = RecordingFactory()
    sink = KafkaSink(sasl_settings, producer_factory=factory)
    records = make_records(0, 1)
    with pytest.raises(SinkError):
        sink.write(records)
    assert sasl_settings.sasl_password_file is not None
    Path(sasl_settings.sasl_password_file).write_text("second-password\n")
    with pytest.raises(SinkError):
        sink.write(records)
    assert [c["sasl_plain_password"] for c in factory.configs] == [
        "first-password", "second-password"]
    assert {c["sasl_plain_username"] for c in factory.configs} == {"sidecar"}


@pytest.mark.parametrize("name", ["sasl_username_file", "sasl_password_file"])
def test_a_missing_credential_file_is_a_sink_error_naming_it(
    sasl_settings: KafkaSettings, name: str
) -> None:
    path = getattr(sasl_settings, name)
    Path(path).unlink()
    factory = RecordingFactory()
    sink = KafkaSink(sasl_settings, producer_factory=factory)
    with pytest.raises(SinkError, match=re.escape(f"kafka_{name} {path}: cannot read it")) \
            as caught:
        sink.write(make_records(0, 1))
    assert "first-password" not in str(caught.value)
    assert factory.configs == []  # never got as far as a producer
    assert not sink.healthy
    with pytest.raises(SinkError, match=re.escape(f"kafka_{name} {path}")):
        check_files(sasl_settings)


def test_an_empty_credential_file_is_refused(sasl_settings: KafkaSettings) -> None:
    assert sasl_settings.sasl_password_file is not None
    Path(sasl_settings.sasl_password_file).write_text("\n")
    with pytest.raises(SinkError, match=r"^kafka_sasl_password_file .*: empty"):
        read_credentials(sasl_settings)


def test_check_files_names_an_unreadable_tls_file(sasl_settings: KafkaSettings) -> None:
    check_files(sasl_settings)  # all present
    assert sasl_settings.ssl_cafile is not None
    Path(sasl_settings.ssl_cafile).unlink()
    with pytest.raises(SinkError, match=re.escape(f"kafka_ssl_cafile {sasl_settings.ssl_cafile}")):
        KafkaSink(sasl_settings).check_files()


@pytest.mark.parametrize(("name", "garbage"), [
    ("ssl_cafile", "not a certificate"),
    ("ssl_certfile", "not a certificate"),
    ("ssl_keyfile", "not a key"),
])
def test_check_files_loads_the_tls_files(tmp_path: Path, name: str, garbage: str) -> None:
    # a garbage CA file used to pass the start-up check and fail every connection later
    # as "Unable to bootstrap", naming no file
    files = {"ssl_cafile": TLS / "ca.pem", "ssl_certfile": TLS / "client.pem",
             "ssl_keyfile": TLS / "client.key"}
    settings = KafkaSettings(bootstrap="k:9093", topic=TOPIC, security_protocol="SSL",
                             **{key: str(path) for key, path in files.items()})
    check_files(settings)
    bad = secret(tmp_path / "bad.pem", garbage)
    reported = "ssl_certfile" if name == "ssl_keyfile" else name  # a pair, loaded together
    with pytest.raises(SinkError, match=f"^kafka_{reported} .*: no usable"):
        check_files(dataclasses.replace(settings, **{name: bad}))


IDENTITY_ENV = {
    "SIDECAR_MODEL_NAME": "m", "SIDECAR_MODEL_VERSION": "1", "SIDECAR_POLICY_VERSION": "p",
    "SIDECAR_EVIDENCE_BUNDLE_ID": "e",
}


def test_kafka_settings_from_the_sidecar_settings(tmp_path: Path) -> None:
    environ = {
        **IDENTITY_ENV,
        "SIDECAR_KAFKA_BOOTSTRAP": "k1:9093,k2:9093",
        "SIDECAR_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "SIDECAR_KAFKA_SASL_MECHANISM": "scram-sha-256",
        "SIDECAR_KAFKA_SASL_USERNAME_FILE": secret(tmp_path / "u", "user"),
        "SIDECAR_KAFKA_SASL_PASSWORD_FILE": secret(tmp_path / "p", "pass"),
        "SIDECAR_KAFKA_COMPRESSION": "none",
        "SIDECAR_KAFKA_DELIVERY_TIMEOUT": "12s",
    }
    settings = kafka_settings_from(load_settings(environ=environ))
    assert (settings.bootstrap, settings.topic) == ("k1:9093,k2:9093", "inference.events")
    assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    assert (settings.compression, settings.delivery_timeout_s) == (None, 12.0)
    assert kafka_settings_from(load_settings(environ=environ), topic="alerts").topic == "alerts"


def test_kafka_settings_from_names_the_sidecar_setting(tmp_path: Path) -> None:
    environ = {**IDENTITY_ENV, "SIDECAR_KAFKA_BOOTSTRAP": "k1:9093",
               "SIDECAR_KAFKA_SSL_CAFILE": secret(tmp_path / "ca.pem", "ca")}  # without TLS
    with pytest.raises(ConfigError, match=r"^kafka_ssl_cafile: set, but"):
        kafka_settings_from(load_settings(environ=environ))


@pytest.mark.parametrize("host", ["a..b", ".", "x" * 64 + ".example"])
def test_a_bootstrap_host_no_resolver_takes_is_refused_at_start_up(host: str) -> None:
    # Before, it passed validation and failed every connection attempt with a UnicodeError
    # from the IDNA codec, which also ended the readiness probe's loop.
    environ = {**IDENTITY_ENV, "SIDECAR_KAFKA_BOOTSTRAP": f"{host}:9093"}
    with pytest.raises(ConfigError, match=r"^kafka_bootstrap: .* is not a host name"):
        kafka_settings_from(load_settings(environ=environ))
    for good in ("kafka-0.kafka.svc.cluster.local.:9093", "[::1]:9092", "10.0.0.7:9092"):
        kafka_settings_from(load_settings(environ={**IDENTITY_ENV,
                                                   "SIDECAR_KAFKA_BOOTSTRAP": good}))
