"""SASL end to end: ``KafkaSink`` and ``RdKafkaSink``, and a whole sidecar, authenticate
with credentials read from files, against the real embedded broker behind a front that
authenticates as a Kafka broker does (``tests/kafka_fronts.py`` says why a front: Tansu 0.6.0 cannot
be given a user here). PLAIN and SCRAM-SHA-256/512, over plain TCP and over TLS.

What a wrong password does: the write fails naming the refusal (not "Unable to
bootstrap"), nothing is lost, and the next producer reads the rotated password file.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from factories import make_records, readyz_degraded
from kafka_broker import EmbeddedBroker, consume_all, free_port
from kafka_fronts import TLS, KafkaFront

from sidecar.sinks.base import SinkError
from sidecar.sinks.kafka import KafkaSettings, KafkaSink
from sidecar.sinks.rdkafka import RdKafkaSink

TOPIC = "sasl.events"
USER, PASSWORD = "sidecar", "correct horse battery staple"
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
WRONG = "wrong-horse-7d1c"
REFUSED = ("Authentication failed during authentication due to invalid credentials with "
           "SASL mechanism {}")


@pytest.fixture(params=[False, True], ids=["sasl_plaintext", "sasl_ssl"])
def sasl_broker(request: pytest.FixtureRequest) -> Iterator[tuple[EmbeddedBroker, KafkaFront]]:
    front_port = free_port()
    with EmbeddedBroker(advertised_port=front_port) as broker, \
            KafkaFront(front_port, broker.port, tls=request.param,
                       users={USER: PASSWORD}) as front:
        yield broker, front


@pytest.fixture(params=["kafka-python", "librdkafka"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    client: str = request.param
    return client


def secrets(tmp_path: Path, password: str) -> tuple[Path, Path]:
    username_file, password_file = tmp_path / "username", tmp_path / "password"
    username_file.write_text(USER + "\n")  # as a mounted Secret often ends
    password_file.write_text(password + "\n")
    return username_file, password_file


def protocol(front: KafkaFront) -> str:
    return "sasl_ssl" if front.tls else "sasl_plaintext"


def sasl_settings(front: KafkaFront, mechanism: str, files: tuple[Path, Path],
                  client: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=f"127.0.0.1:{front.port}", topic=TOPIC, security_protocol=protocol(front),
        ssl_cafile=str(TLS / "server.pem") if front.tls else None,
        sasl_mechanism=mechanism, sasl_username_file=str(files[0]),
        sasl_password_file=str(files[1]), delivery_timeout_s=10.0, client=client)


def sink_for(settings: KafkaSettings) -> KafkaSink:
    return RdKafkaSink(settings) if settings.client == "librdkafka" else KafkaSink(settings)


def read_back(front: KafkaFront, min_records: int) -> list[Any]:
    """The topic, read by a consumer that authenticates too (the broker advertises the
    front, so there is no way around it)."""
    config: dict[str, Any] = {
        "security_protocol": protocol(front).upper(), "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": USER, "sasl_plain_password": PASSWORD}
    if front.tls:
        config["ssl_cafile"] = str(TLS / "server.pem")
    return consume_all(f"127.0.0.1:{front.port}", TOPIC, min_records=min_records, **config)


@pytest.mark.parametrize("mechanism", ["plain", "scram-sha-256", "scram-sha-512"])
def test_a_batch_arrives_exactly_once_after_logging_in(
    sasl_broker: tuple[EmbeddedBroker, KafkaFront], kafka_client: str, mechanism: str,
    tmp_path: Path,
) -> None:
    _, front = sasl_broker
    sink = sink_for(sasl_settings(front, mechanism, secrets(tmp_path, PASSWORD), kafka_client))
    try:
        sink.write(make_records(0, 40))
        sink.write(make_records(40, 60))
    finally:
        sink.close()
    assert (mechanism.upper(), USER) in front.authenticated  # the producer logged in
    assert front.refused == []
    records = read_back(front, 100)
    assert sorted(r.value for r in records) == sorted(r.value for r in make_records(0, 100))


def test_a_wrong_password_is_named_and_a_rotated_one_is_read_again(
    sasl_broker: tuple[EmbeddedBroker, KafkaFront], kafka_client: str, tmp_path: Path,
) -> None:
    _, front = sasl_broker
    files = secrets(tmp_path, "last month's password")
    settings = sasl_settings(front, "scram-sha-512", files, kafka_client)
    with warnings.catch_warnings():
        # kafka-python 3.0.12 leaves the socket of a connection attempt its bootstrap
        # deadline cut short to the garbage collector (a ResourceWarning): collected here,
        # not in whichever test runs next.
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        sink = sink_for(settings)
        try:
            with pytest.raises(SinkError) as refused:
                sink.write(make_records(0, 20))
            assert not sink.healthy
            # The broker's reason, from either client (kafka-python's own error would be
            # "Unable to bootstrap"); never the password.
            assert str(refused.value).startswith(
                f"kafka: cannot connect to {settings.bootstrap}: ")
            assert REFUSED.format("SCRAM-SHA-512") in str(refused.value)
            assert "password" not in str(refused.value)
            assert front.authenticated == [] and front.refused[0] == ("SCRAM-SHA-512", USER)

            files[1].write_text(PASSWORD + "\n")  # the Secret is rotated
            sink.write(make_records(0, 20))  # the pipeline's retry: the same batch, whole
            assert sink.healthy
        finally:
            sink.close()
        gc.collect()
    assert ("SCRAM-SHA-512", USER) in front.authenticated
    records = read_back(front, 20)
    assert sorted(r.value for r in records) == sorted(r.value for r in make_records(0, 20))


async def test_a_sidecar_with_a_wrong_password_keeps_its_events_until_the_secret_is_rotated(
    sasl_broker: tuple[EmbeddedBroker, KafkaFront], make_sidecar: Any, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    """The settings path: SIDECAR_KAFKA_SASL_* and the files, the sink in its child
    process, readiness, and the events written ahead while the broker refused the login."""
    _, front = sasl_broker
    username_file, password_file = secrets(tmp_path, WRONG)
    extra = {"kafka_ssl_cafile": str(TLS / "server.pem")} if front.tls else {}
    sc = await make_sidecar(
        real_sink=True, kafka_bootstrap=f"127.0.0.1:{front.port}", kafka_events_topic=TOPIC,
        kafka_security_protocol=protocol(front), kafka_sasl_mechanism="scram-sha-512",
        kafka_sasl_username_file=str(username_file),
        kafka_sasl_password_file=str(password_file), kafka_delivery_timeout="3s", **extra)
    ids = []
    with caplog.at_level(logging.WARNING):
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.post(sc.url + "/v1/chat/completions", json=CHAT) as r:
                    assert r.status == 200  # the sidecar serves; its events wait in the log
                    ids.append(r.headers["x-inference-id"])
        degraded = await readyz_degraded(sc.admin_url, want=True)
    # The broker's reason where the operator looks first, and in the log lines.
    assert len(degraded) == 1 and degraded[0].startswith(
        f"sink kafka: delivery failing (kafka: cannot connect to 127.0.0.1:{front.port}: "), \
        degraded
    assert REFUSED.format("SCRAM-SHA-512") in degraded[0]
    assert degraded[0].endswith("), events kept in the log")
    reasons = [r.fields["reason"] for r in caplog.records  # type: ignore[attr-defined]
               if r.getMessage() == "sink write failed; batch kept for retry"]
    assert reasons and all(REFUSED.format("SCRAM-SHA-512") in reason for reason in reasons)
    # Never the password: not in this process's records, not on the sink child's stderr.
    assert WRONG not in caplog.text
    child_stderr = capfd.readouterr().err
    assert "SaslAuthenticationFailedError" in child_stderr  # the child's lines are seen
    assert WRONG not in child_stderr

    password_file.write_text(PASSWORD + "\n")
    assert await readyz_degraded(sc.admin_url, want=False) == []
    records = await asyncio.to_thread(read_back, front, 5)
    assert sorted(json.loads(r.value)["id"] for r in records) == sorted(ids)
    await sc.sidecar.stop()


def test_the_bootstrap_failure_kept_is_the_telling_one_not_the_deadline_s() -> None:
    """kafka-python logs each failed bootstrap attempt; the one its deadline cut short
    ("timed out") says less than a refused login before it."""
    import logging as logging_module

    from kafka import errors as kafka_errors

    from sidecar.sinks.kafka import BootstrapFailures

    logger = logging_module.getLogger(BootstrapFailures.LOGGER)
    refused = kafka_errors.SaslAuthenticationFailedError("Authentication failed")
    timed_out = kafka_errors.KafkaConnectionError("Connection timed out")
    with BootstrapFailures() as failures:
        logger.warning("Bootstrap connection to %s failed: %s (backoff %.2f secs)",
                       "bootstrap-0", refused, 0.1)
        logger.warning("Bootstrap connection to %s failed: %s (backoff %.2f secs)",
                       "bootstrap-0", timed_out, 0.2)
    assert failures.last is refused
    assert failures not in logger.handlers
    with BootstrapFailures() as alone:
        logger.warning("Bootstrap connection to %s failed: %s (backoff %.2f secs)",
                       "bootstrap-0", timed_out, 0.2)
    assert alone.last is timed_out
