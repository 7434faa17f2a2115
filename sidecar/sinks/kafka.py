"""Kafka sink: a batch is produced by an idempotent kafka-python producer with
``acks=all``, and ``write`` returns only once the broker acknowledged every record of it.

Delivery is at-least-once. A batch that fails part-way (broker down, paused, slow, a
refused request) raises ``SinkError`` and is retried whole by the pipeline, so some of
its records may reach the topic twice; consumers de-duplicate by the CloudEvents ``id``.

- The producer is created lazily, inside ``write``: the broker may be absent when the
  sidecar starts. Credentials are read from their files each time it is created, so a
  rotated secret is picked up by the next producer.
- After a failed write the producer is discarded (``close(timeout=0)``): batches it
  still holds are failed rather than delivered at some later, unpredictable moment, and
  the next ``write`` starts from a fresh producer and fresh credentials. (One exception:
  when the topic's metadata was late and nothing was handed over, the producer is kept
  for up to ``METADATA_PATIENCE`` writes, so a slow topic still gets there.)
- Memory: kafka-python >= 2.2 has no bound on its buffer (``buffer_memory`` is gone;
  3.0 rejects it as an unknown config). ``write`` hands the producer one batch and waits
  for it, so what the producer holds is bounded by the pipeline's batch (500 records,
  1 MiB), never by how long the broker has been away.
- Time: a write takes at most the producer's creation (a TCP probe of at most 5 s per
  bootstrap address, then the bootstrap, bounded by ``request_timeout_s``), the first
  send's wait for the topic's metadata (``MAX_BLOCK_MS``), then ``delivery_timeout_s``
  for the acknowledgements, against one deadline.

Nothing here depends on a particular broker; tests run it against Tansu.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from sidecar.events.record import Record
from sidecar.sinks.base import SinkError
from sidecar.sinks.kafka_config import (
    CLIENT_ID,
    MAX_BLOCK_MS,
    MAX_REQUEST_SIZE,
    DefaultPartitioner,
    KafkaNetClient,
    KafkaProducer,
    KafkaSettings,
    SaslCredentials,
    bootstrap_addresses,
    check_files,
    kafka_errors,
    kafka_settings_from,
    murmur2,
    producer_config,
    read_credentials,
    tls_context,
)
from sidecar.telemetry import ALERTS_TYPE_PREFIX

__all__ = [
    "CLIENT_ID", "MAX_BLOCK_MS", "MAX_REQUEST_SIZE", "KafkaSettings", "KafkaSink",
    "SaslCredentials", "check_files", "kafka_settings_from", "producer_config",
    "read_credentials",
]

PROBE_TIMEOUT_S: Final = 5.0
DISCARD_JOIN_S: Final = 1.0
CLOSE_TIMEOUT_S: Final = 2.0
METADATA_PATIENCE: Final = 3  # metadata timeouts in a row before the producer is replaced


class Producer(Protocol):
    """What the sink uses of ``kafka.KafkaProducer``."""

    def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> Any: ...

    def partitions_for(self, topic: str) -> Any: ...

    def close(self, timeout: float | None = None) -> None: ...


def probe(settings: KafkaSettings) -> None:
    """Fail fast, and cleanly, when no bootstrap address accepts a connection (with TLS:
    completes a handshake, so that a certificate the CA file does not vouch for is said,
    not reported as "Unable to bootstrap").

    kafka-python 3.0.12 leaks the socket of every refused connection attempt (closed only
    by the garbage collector, with a ResourceWarning), and its constructor leaks its
    client when the bootstrap fails; probing first keeps an absent broker, retried by the
    pipeline every few seconds, from going through either.
    """
    timeout = min(PROBE_TIMEOUT_S, settings.request_timeout_s or PROBE_TIMEOUT_S)
    failures = probe_failures(settings, tls_context(settings), timeout)
    if failures:
        raise SinkError(f"kafka: no broker reachable: {', '.join(failures)}")


def probe_failures(settings: KafkaSettings, context: ssl.SSLContext | None,
                   timeout: float) -> list[str]:
    """Connect (and with ``context``, shake hands) with each bootstrap address in turn
    until one succeeds: the failures, one per address, or [] once one succeeded. Blocking:
    call it from a thread."""
    failures = []
    for host, port in bootstrap_addresses(settings.bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if context is not None:  # the name checked as kafka-python checks it
                    context.wrap_socket(sock, server_hostname=host.rstrip(".")).close()
            return []
        except ssl.SSLError as exc:
            failures.append(f"{host}:{port} (TLS: {exc.reason or type(exc).__name__}: "
                            f"{getattr(exc, 'verify_message', None) or exc})"[:300])
        except OSError as exc:
            failures.append(f"{host}:{port} ({exc.strerror or type(exc).__name__})")
    return failures


def write_bound_s(settings: KafkaSettings) -> float:
    """The longest one ``KafkaSink.write`` can take (see "Time" above)."""
    probes = len(bootstrap_addresses(settings.bootstrap)) * PROBE_TIMEOUT_S
    topics = 2  # the events topic's metadata and the alerts topic's: MAX_BLOCK_MS each
    return (probes + (settings.request_timeout_s or PROBE_TIMEOUT_S)
            + topics * MAX_BLOCK_MS / 1000 + settings.delivery_timeout_s)


class KeyedPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """The default partitioner's choice (murmur2 of the key, as the Java client's), the
    hash remembered per key: keys repeat (a client's pseudonym, the model name) and
    kafka-python hashes in pure Python, with two metadata copies per call, about a tenth
    of its CPU per record."""

    MEMO_MAX: Final = 65536

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: Any, cluster: Any) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            chosen: int = super().partition(topic, key, serialized_key, value,
                                            serialized_value, cluster)
            return chosen
        hashed = self._hashes.get(serialized_key)
        if hashed is None:
            if len(self._hashes) >= self.MEMO_MAX:
                self._hashes.clear()
            hashed = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7fffffff
        ordered = sorted(partitions)
        return int(ordered[hashed % len(ordered)])


def create_producer(settings: KafkaSettings, config: dict[str, Any]) -> Producer:
    """A connected ``KafkaProducer`` (the default factory), or ``SinkError``."""
    probe(settings)
    clients: list[Any] = []

    def client_factory(**kwargs: Any) -> Any:
        clients.append(KafkaNetClient(**kwargs))
        return clients[-1]

    failures = BootstrapFailures()
    try:
        with failures:
            producer: Producer = KafkaProducer(kafka_client=client_factory,
                                               partitioner=KeyedPartitioner(), **config)
    except Exception as exc:
        # The constructor bootstraps (ApiVersions, SASL, metadata) and does not close its
        # client when that fails.
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        why = failures.last if isinstance(exc, kafka_errors.KafkaTimeoutError) else None
        raise SinkError(f"kafka: cannot connect to {settings.bootstrap}: "
                        f"{reason(why or exc)}") from None
    return producer


class BootstrapFailures(logging.Handler):
    """Why the bootstrap failed. kafka-python 3 retries a failed bootstrap connection
    until ``max_block_ms`` and then raises "Unable to bootstrap", dropping the cause (a
    refused SASL login, a broker that closes the connection); it only logs each one, from
    the thread that bootstraps, as "Bootstrap connection to <node> failed: <error>".
    ``last``: the latest such error, unless it is the attempt the deadline cut short
    ("timed out") and an earlier one says more."""

    LOGGER: Final = "kafka.net.manager"

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.last: BaseException | None = None

    def __enter__(self) -> BootstrapFailures:
        logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if (record.thread == self.thread and isinstance(record.msg, str)
                and record.msg.startswith("Bootstrap connection to")
                and isinstance(record.args, tuple) and len(record.args) >= 2
                and isinstance(record.args[1], BaseException)):
            error = record.args[1]
            if self.last is None or "timed out" not in str(error):
                self.last = error


def discard(producer: Producer) -> None:
    """Close at once, failing what the producer still holds instead of delivering it."""
    with contextlib.suppress(Exception):
        producer.close(timeout=0)
        return
    # kafka-python 3.0.12: close() begins with flush(timeout), and flush(0) raises
    # KafkaTimeoutError while a batch is incomplete, so close never reaches its own
    # force-close. Do what it would have done: fail the batches, stop the I/O thread.
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        with contextlib.suppress(Exception):
            sender.force_close()
            sender.join(DISCARD_JOIN_S)
    with contextlib.suppress(Exception):
        producer.close(timeout=0)  # nothing incomplete now: completes the close


def reason(exc: BaseException) -> str:
    """A short, payload-free reason for the operator."""
    if isinstance(exc, SinkError):
        return str(exc)
    if isinstance(exc, kafka_errors.KafkaError | OSError):
        # kafka-python's messages carry sizes, partitions and timings, never record data;
        # OSError covers TLS failures ("[SSL: CERTIFICATE_VERIFY_FAILED] ...").
        return str(exc)[:300]
    return f"unexpected {type(exc).__name__}"


class KafkaSink:
    name = "kafka"

    def __init__(
        self,
        settings: KafkaSettings,
        producer_factory: Callable[[KafkaSettings, dict[str, Any]], Producer] = create_producer,
    ) -> None:
        self.settings = settings
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._healthy = True
        self.last_success: float | None = None  # monotonic; readiness reads it
        self._metadata_misses = 0
        self._lock = threading.Lock()  # the pipeline writes from one thread; close may race

    @property
    def healthy(self) -> bool:
        return self._healthy

    def check_files(self) -> None:
        check_files(self.settings)

    def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        with self._lock:
            try:
                if self._producer is None:
                    self._producer = self._factory(self.settings, self._config())
                self._deliver(self._producer, records)
            except MetadataTimeout as exc:
                # Nothing was handed to the producer, so nothing stale to discard; keep it
                # (and the metadata request it has under way) for a few attempts, so a
                # topic slower than MAX_BLOCK_MS to appear still gets there.
                self._healthy = False
                self._metadata_misses += 1
                if self._metadata_misses >= METADATA_PATIENCE:
                    self._discard()
                raise SinkError(str(exc)) from None
            except Exception as exc:
                self._healthy = False
                self._discard()
                if isinstance(exc, SinkError):
                    raise
                raise SinkError(f"kafka: {reason(exc)}") from None
            self._healthy = True
            self.last_success = time.monotonic()
            self._metadata_misses = 0

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                self._close_producer(producer)

    def _discard(self) -> None:
        producer, self._producer = self._producer, None
        self._metadata_misses = 0
        if producer is not None:
            self._discard_producer(producer)

    # --- what depends on the producer library (rdkafka.py overrides these) -------------

    def _config(self) -> dict[str, Any]:
        """The producer factory's configuration, credentials read from their files now."""
        return producer_config(self.settings, read_credentials(self.settings))

    @staticmethod
    def _close_producer(producer: Any) -> None:
        # write() waits for its batch, so nothing is pending: a short grace is plenty.
        try:
            producer.close(timeout=CLOSE_TIMEOUT_S)
        except Exception:
            discard(producer)

    @staticmethod
    def _discard_producer(producer: Any) -> None:
        discard(producer)

    def _topics(self, records: Sequence[Record]) -> list[str]:
        """Each record's topic: ``ai.detector.*`` records to the alerts topic, if any."""
        events_topic = self.settings.topic
        alerts_topic = self.settings.alerts_topic or events_topic
        return [alerts_topic if is_alert(record) else events_topic for record in records]

    def _deliver(self, producer: Producer, records: Sequence[Record]) -> None:
        """Send every record, then wait until each is acknowledged, or raise."""
        topics = self._topics(records)
        timeout = self.settings.delivery_timeout_s
        deadline = time.monotonic() + timeout
        for topic in dict.fromkeys(topics):
            # Every topic's metadata before the first send: a topic that is missing (the
            # alerts topic on a cluster without auto-create) must fail the batch before any
            # of it went out, or every retry would publish its first records again.
            try:
                producer.partitions_for(topic)
            except kafka_errors.KafkaTimeoutError:
                raise MetadataTimeout(f"kafka: no metadata for topic {topic} within "
                                       f"{MAX_BLOCK_MS} ms (does it exist?)") from None
            except Exception as exc:
                raise SinkError(f"kafka: metadata of topic {topic}: {reason(exc)}") from None
        futures = []
        for record, topic in zip(records, topics, strict=True):
            try:
                futures.append(producer.send(
                    topic, value=record.value, key=record.key, headers=list(record.headers)
                ))
            except kafka_errors.KafkaTimeoutError:
                if futures:
                    raise SinkError(f"kafka: send blocked over {MAX_BLOCK_MS} ms") from None
                raise MetadataTimeout(f"kafka: no metadata for topic {topic} within "
                                       f"{MAX_BLOCK_MS} ms (does it exist?)") from None
            except kafka_errors.MessageSizeTooLargeError:
                raise SinkError(f"kafka: record seq={record.seq} ({record.size} bytes) is larger "
                                f"than max_request_size ({MAX_REQUEST_SIZE})") from None
            except Exception as exc:
                raise SinkError(f"kafka: send failed: {reason(exc)}") from None
        # No flush(): its timeout applies to each internal batch in turn, and an in-flight
        # batch can outlive delivery_timeout_ms (it expires only after its request timed
        # out), so flush(t) can take a multiple of t. Waiting on every future against one
        # deadline bounds the write; the last batches wait linger_ms (5 ms), measured as
        # costing nothing here.
        failed, first = 0, ""
        for future in futures:
            try:
                future.get(timeout=max(deadline - time.monotonic(), 0.0))
            except kafka_errors.KafkaTimeoutError:
                failed, first = failed + 1, first or "no acknowledgement in time"
            except Exception as exc:
                failed, first = failed + 1, first or reason(exc)
        if failed:
            raise SinkError(f"kafka: {failed} of {len(futures)} records not acknowledged within "
                            f"{timeout:g} s: {first}")


_ALERTS_PREFIX: Final = ALERTS_TYPE_PREFIX.encode()


def is_alert(record: Record) -> bool:
    """Records of ``ai.detector.*`` types go to the alerts topic (by their ce_type header:
    the log's record format needs no topic of its own)."""
    for name, value in record.headers:
        if name == "ce_type":
            return value.startswith(_ALERTS_PREFIX)
    return False


class MetadataTimeout(Exception):
    """send() gave up waiting for the topic's metadata before any record was handed over."""
