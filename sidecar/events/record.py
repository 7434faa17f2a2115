"""``Record``: an event as the durable log and the sinks see it, already encoded.

``value`` is the CloudEvents JSON document; ``key`` orders a client's events within a
Kafka partition; ``headers`` let consumers filter without parsing the value. ``seq`` is
the sidecar's own sequence number: strictly increasing, also across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def size(self) -> int:
        """Bytes this record takes in a log or a batch, near enough for bounding."""
        return len(self.key) + len(self.value) + sum(len(k) + len(v) for k, v in self.headers)
