"""``RdKafkaSink``: the Kafka sink on librdkafka (confluent-kafka), for ``kafka_client:
librdkafka``; the ``librdkafka`` extra installs it.

Same contract, settings and behaviour as ``KafkaSink`` (``kafka.py``, whose docstring
holds for this one too): an idempotent producer with ``acks=all``; ``write`` returns once
the broker acknowledged every record of the batch, or raises ``SinkError`` and discards
the producer, so nothing it still holds is delivered at some later moment; the producer
is created lazily, after a probe, with credentials read from their files. What differs is
the cost: kafka-python encodes and checksums every record in Python, about 25 µs of CPU a
record against about 7 here (``bench/kafka_clients.py``), which on a pod's two cores is
the difference between the Kafka sink keeping up with the file sink or not.

librdkafka's own choices, pinned to match kafka-python's:
- partitioner ``murmur2_random``: a key lands on the partition the Java client and
  kafka-python choose, so switching clients keeps a client's events in one partition
  (librdkafka's default, a CRC32 of the key, would move them);
- ``delivery.report.only.error``: a delivery report (a Python call) only for a record
  that failed; success is "nothing left in the queue" after ``flush``;
- its log lines go to the ``sidecar.kafka`` logger at warning and above; they name
  brokers and errors, never record data.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from sidecar.events.record import Record
from sidecar.sinks.base import SinkError
from sidecar.sinks.kafka import (
    CLOSE_TIMEOUT_S,
    KafkaSink,
    MetadataTimeout,
    probe,
    reason,
)
from sidecar.sinks.kafka_config import (
    CLIENT_ID,
    LINGER_MS,
    MAX_BLOCK_MS,
    MAX_REQUEST_SIZE,
    RECONNECT_BACKOFF_MAX_MS,
    KafkaSettings,
    SaslCredentials,
    read_credentials,
)

log = logging.getLogger("sidecar.kafka")

QUEUE_MAX_MESSAGES: Final = 10_000  # a write hands over one batch (at most 500 records)
QUEUE_MAX_KBYTES: Final = 4 * MAX_REQUEST_SIZE // 1024  # ... of at most 1 MiB, or one record
LOG_LEVEL: Final = 4  # syslog's warning: librdkafka's info lines are per connection
METADATA_RETRY_S: Final = 0.05


def rd_config(settings: KafkaSettings, credentials: SaslCredentials | None = None
              ) -> dict[str, Any]:
    """The librdkafka configuration for these settings (callbacks added by the sink)."""
    request_timeout_ms = int((settings.request_timeout_s or 0) * 1000)
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(item.strip() for item in settings.bootstrap.split(",")),
        "client.id": CLIENT_ID,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": settings.compression or "none",
        "linger.ms": LINGER_MS,
        "message.max.bytes": MAX_REQUEST_SIZE,
        "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
        "request.timeout.ms": request_timeout_ms,
        "socket.connection.setup.timeout.ms": max(request_timeout_ms, 1000),
        "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
        "queue.buffering.max.messages": QUEUE_MAX_MESSAGES,
        "queue.buffering.max.kbytes": QUEUE_MAX_KBYTES,
        "partitioner": "murmur2_random",
        "delivery.report.only.error": True,
        "log_level": LOG_LEVEL,
        "log.connection.close": False,
        "security.protocol": settings.security_protocol.lower(),
    }
    if "SSL" in settings.security_protocol:
        config.update({
            "ssl.ca.location": settings.ssl_cafile or default_ca_location(),
            "ssl.endpoint.identification.algorithm": "https",
        })
        if settings.ssl_certfile is not None:
            config["ssl.certificate.location"] = settings.ssl_certfile
        if settings.ssl_keyfile is not None:
            config["ssl.key.location"] = settings.ssl_keyfile
    if settings.security_protocol.startswith("SASL"):
        if credentials is None:
            raise ValueError("SASL is configured: credentials are required")
        config.update({
            "sasl.mechanisms": settings.sasl_mechanism,
            "sasl.username": credentials.username,
            "sasl.password": credentials.password,
        })
    return config


def default_ca_location() -> str:
    """Without a CA file: the CAs Python's default context trusts, as the probe and
    kafka-python do (``SSL_CERT_FILE``/``SSL_CERT_DIR`` included); librdkafka's own
    ``probe`` searches a fixed list of paths instead."""
    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.capath or "probe"


class _Reports:
    """What librdkafka reported while a write was under way (its callbacks run in the
    thread that calls ``flush``/``poll``: the writing thread)."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_failure = ""
        self.last_error = ""

    def delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:  # only failures are reported (delivery.report.only.error)
            self.failed += 1
            self.first_failure = self.first_failure or _describe(err)

    def error(self, err: Any) -> None:
        self.last_error = _describe(err)


def _describe(err: Any) -> str:
    """librdkafka's error as text (``KafkaError.str()``: a code's name and brokers)."""
    with contextlib.suppress(Exception):
        return str(err.str())[:300]
    return type(err).__name__


def create_rd_producer(settings: KafkaSettings, config: dict[str, Any]) -> Any:
    """A librdkafka producer that has bootstrapped (the default factory), or ``SinkError``.

    librdkafka connects in the background; asking for the cluster's metadata within the
    request timeout turns a broker that accepts connections but does not answer into the
    same prompt "cannot connect" as kafka-python's constructor."""
    from confluent_kafka import KafkaException, Producer

    probe(settings)
    errors: list[str] = []
    forward = config.get("error_cb")

    def on_error(err: Any) -> None:  # keeps the first reasons (a TLS failure) for below
        errors.append(_describe(err))
        del errors[:-3]
        if forward is not None:
            forward(err)

    try:
        producer = Producer({**config, "error_cb": on_error, "logger": log})
    except KafkaException as exc:  # a configuration librdkafka refuses
        raise SinkError(f"kafka: librdkafka refused the configuration: "
                        f"{_describe(exc.args[0]) if exc.args else exc}") from None
    try:
        producer.list_topics(timeout=settings.request_timeout_s or MAX_BLOCK_MS / 1000)
    except KafkaException as exc:
        with contextlib.suppress(Exception):
            producer.poll(0)  # serves the error reports: the cause, where there is one
        discard_rd(producer)
        cause = errors[0] if errors else (_describe(exc.args[0]) if exc.args
                                          else type(exc).__name__)
        raise SinkError(f"kafka: cannot connect to {settings.bootstrap}: {cause}") from None
    return producer


def discard_rd(producer: Any) -> None:
    """Close at once: what the producer still holds is failed, not delivered later."""
    with contextlib.suppress(Exception):
        producer.purge(in_queue=True, in_flight=True, blocking=True)
        producer.flush(0)  # serves the purged records' reports
    with contextlib.suppress(Exception):
        producer.close()


class RdKafkaSink(KafkaSink):
    """``KafkaSink`` with librdkafka as the producer."""

    def __init__(
        self,
        settings: KafkaSettings,
        producer_factory: Callable[[KafkaSettings, dict[str, Any]], Any] = create_rd_producer,
    ) -> None:
        super().__init__(settings, producer_factory)
        self._reports = _Reports()
        self._topics_known: set[str] = set()  # topics whose metadata ``_topics_of`` had
        self._topics_of: Any = None

    def _config(self) -> dict[str, Any]:
        return {**rd_config(self.settings, read_credentials(self.settings)),
                "on_delivery": self._reports.delivered, "error_cb": self._reports.error}

    @staticmethod
    def _close_producer(producer: Any) -> None:
        # write() waited for its batch: nothing is pending, flush returns at once.
        with contextlib.suppress(Exception):
            producer.flush(CLOSE_TIMEOUT_S)
        discard_rd(producer)

    @staticmethod
    def _discard_producer(producer: Any) -> None:
        discard_rd(producer)

    def _deliver(self, producer: Any, records: Sequence[Record]) -> None:
        from confluent_kafka import KafkaError, KafkaException

        topics = self._topics(records)
        for topic in dict.fromkeys(topics):  # before anything is sent (see KafkaSink)
            self._check_topic(producer, topic)
        timeout = self.settings.delivery_timeout_s
        deadline = time.monotonic() + timeout
        reports = self._reports
        reports.failed, reports.first_failure, reports.last_error = 0, "", ""
        produce = producer.produce
        for record, topic in zip(records, topics, strict=True):
            try:
                produce(topic, record.value, record.key, headers=list(record.headers))
            except BufferError:
                raise SinkError("kafka: the producer's queue is full") from None
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise SinkError(f"kafka: record seq={record.seq} ({record.size} bytes) is "
                                    f"larger than max_request_size ({MAX_REQUEST_SIZE})"
                                    ) from None
                raise SinkError(f"kafka: send failed: {_describe(err)}") from None
        left = producer.flush(max(deadline - time.monotonic(), 0.0))
        if left or reports.failed:
            first = reports.first_failure or reports.last_error or "no acknowledgement in time"
            raise SinkError(f"kafka: {left + reports.failed} of {len(records)} records not "
                            f"acknowledged within {timeout:g} s: {first}")

    def _check_topic(self, producer: Any, topic: str) -> None:
        """The topic's metadata, once per producer, before anything is sent: as in
        ``KafkaSink``, a missing topic fails the batch before any of it went out."""
        if producer is not self._topics_of:
            self._topics_of, self._topics_known = producer, set()
        if topic in self._topics_known:
            return
        from confluent_kafka import KafkaException

        # As kafka-python's wait for metadata: a topic being created (auto-create answers
        # LEADER_NOT_AVAILABLE first) gets up to MAX_BLOCK_MS.
        deadline = time.monotonic() + MAX_BLOCK_MS / 1000
        while (left := deadline - time.monotonic()) > 0:
            try:
                metadata = producer.list_topics(topic, timeout=left)
            except KafkaException:
                break
            except Exception as exc:
                raise SinkError(f"kafka: metadata of topic {topic}: {reason(exc)}") from None
            found = metadata.topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                self._topics_known.add(topic)
                return
            time.sleep(min(METADATA_RETRY_S, max(deadline - time.monotonic(), 0.0)))
        raise MetadataTimeout(f"kafka: no metadata for topic {topic} within "
                              f"{MAX_BLOCK_MS} ms (does it exist?)")
