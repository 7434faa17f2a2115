"""The sink's partitioner picks the partition kafka-python's default (and Java's) picks."""

from __future__ import annotations

import random

from sidecar.sinks.kafka import KeyedPartitioner
from sidecar.sinks.kafka_config import DefaultPartitioner


class Cluster:
    """Stand-in for kafka-python's ClusterMetadata: the three calls partitioners make."""

    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return {"events"}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions if topic == "events" else None

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions


def test_same_partition_as_the_default_for_every_key_and_partition_count() -> None:
    rng = random.Random(3)
    ours, default = KeyedPartitioner(), DefaultPartitioner()
    keys = [rng.randbytes(rng.randint(0, 40)) for _ in range(300)] + [b"demo-llm", b""]
    for count in (1, 2, 3, 7, 12):
        cluster = Cluster(set(rng.sample(range(40), count)))
        for key in keys * 2:  # the second time from the memo
            assert ours.partition("events", key, key, None, b"v", cluster) == \
                default.partition("events", key, key, None, b"v", cluster)


def test_no_key_spreads_over_partitions_and_the_memo_stays_bounded() -> None:
    ours = KeyedPartitioner()
    cluster = Cluster({0, 1, 2})
    assert {ours.partition("events", None, None, None, b"v", cluster) for _ in range(200)} == \
        {0, 1, 2}
    for i in range(KeyedPartitioner.MEMO_MAX + 10):
        ours.partition("events", None, i.to_bytes(4, "big"), None, b"v", cluster)
    assert len(ours._hashes) <= KeyedPartitioner.MEMO_MAX
