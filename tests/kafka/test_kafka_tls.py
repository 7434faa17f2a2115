"""``KafkaSink`` and ``RdKafkaSink`` over TLS, against the real embedded broker behind a
TLS-terminating front (``tests/kafka_fronts.py``: Tansu 0.6.0 serves plain TCP only). Every
connection the producer makes, bootstrap and produce, is a real TLS connection with
certificate and host-name verification (``kafka_ssl_cafile``), carrying the real Kafka
protocol to a real broker. The readiness probe's handshake is checked here too. SASL, over
TLS and without: ``test_kafka_sasl.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import make_records, readyz_degraded
from kafka_broker import EmbeddedBroker, consume_all, free_port
from kafka_fronts import TLS, KafkaFront

from sidecar.sinks.base import SinkError
from sidecar.sinks.kafka import KafkaSettings, KafkaSink
from sidecar.sinks.rdkafka import RdKafkaSink

TOPIC = "tls.events"


@pytest.fixture
def tls_broker() -> Iterator[tuple[EmbeddedBroker, KafkaFront]]:
    front_port = free_port()
    with EmbeddedBroker(advertised_port=front_port) as broker, \
            KafkaFront(front_port, broker.port, tls=True) as front:
        yield broker, front


@pytest.fixture(params=["kafka-python", "librdkafka"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    client: str = request.param
    return client


def tls_sink(front: KafkaFront, cafile: Path, client: str) -> KafkaSink:
    settings = KafkaSettings(
        bootstrap=f"127.0.0.1:{front.port}", topic=TOPIC, security_protocol="ssl",
        ssl_cafile=str(cafile), delivery_timeout_s=10.0, client=client)
    return RdKafkaSink(settings) if client == "librdkafka" else KafkaSink(settings)


def test_a_batch_over_tls_arrives_exactly_once(
    tls_broker: tuple[EmbeddedBroker, KafkaFront], kafka_client: str,
) -> None:
    _, front = tls_broker
    sink = tls_sink(front, TLS / "server.pem", kafka_client)
    try:
        sink.write(make_records(0, 40))
        sink.write(make_records(40, 60))
    finally:
        sink.close()
    assert front.handshakes >= 1  # the producer came through TLS
    records = consume_all(f"127.0.0.1:{front.port}", TOPIC, min_records=100,
                          security_protocol="SSL", ssl_cafile=str(TLS / "server.pem"))
    assert sorted(r.value for r in records) == sorted(r.value for r in make_records(0, 100))


def test_a_server_certificate_the_ca_file_does_not_vouch_for_is_refused(
    tls_broker: tuple[EmbeddedBroker, KafkaFront], kafka_client: str,
) -> None:
    _, front = tls_broker
    sink = tls_sink(front, TLS / "ca.pem", kafka_client)  # a CA file of another certificate
    try:
        with pytest.raises(SinkError) as refused:
            sink.write(make_records(0, 5))
    finally:
        sink.close()
    assert front.handshakes == 0
    # said as such, not as "Unable to bootstrap"
    assert str(refused.value) == (f"kafka: no broker reachable: 127.0.0.1:{front.port} (TLS: "
                                  f"CERTIFICATE_VERIFY_FAILED: self-signed certificate)")


def test_without_a_ca_file_the_default_trust_is_used(
    tls_broker: tuple[EmbeddedBroker, KafkaFront], kafka_client: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No kafka_ssl_cafile: the CAs Python's default context trusts (here SSL_CERT_FILE),
    # for the probe and for either producer.
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "server.pem"))
    _, front = tls_broker
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{front.port}", topic=TOPIC,
                             security_protocol="ssl", delivery_timeout_s=10.0,
                             client=kafka_client)
    sink = RdKafkaSink(settings) if kafka_client == "librdkafka" else KafkaSink(settings)
    try:
        sink.write(make_records(0, 10))
    finally:
        sink.close()
    records = consume_all(f"127.0.0.1:{front.port}", TOPIC, min_records=10,
                          security_protocol="SSL", ssl_cafile=str(TLS / "server.pem"))
    assert len(records) == 10


async def test_an_idle_sidecar_says_when_the_ca_file_does_not_vouch_for_the_broker(
    tls_broker: tuple[EmbeddedBroker, KafkaFront], make_sidecar: Any, tmp_path: Path,
) -> None:
    """The readiness probe shakes hands as the producer would, before any write; a CA
    file replaced by one that vouches for the broker (a rotated secret) is read again."""
    _, front = tls_broker
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes((TLS / "ca.pem").read_bytes())  # another certificate's
    sc = await make_sidecar(real_sink=True, kafka_bootstrap=f"127.0.0.1:{front.port}",
                            kafka_security_protocol="ssl", kafka_ssl_cafile=str(cafile))
    degraded = await readyz_degraded(sc.admin_url, want=True)
    assert degraded == [f"sink kafka: bootstrap unreachable (127.0.0.1:{front.port} (TLS: "
                        "CERTIFICATE_VERIFY_FAILED: self-signed certificate)), nothing "
                        "delivered since"], degraded
    assert front.handshakes == 0
    cafile.write_bytes((TLS / "server.pem").read_bytes())
    stat = cafile.stat()
    os.utime(cafile, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert await readyz_degraded(sc.admin_url, want=False) == []
    assert front.handshakes >= 1  # the probe's: no request was sent
    await sc.sidecar.stop()
