"""The ``Sink`` contract every sink implements (and ``tests/sinks`` checks for each).

``write`` is blocking and runs in the delivery thread, never on the event loop. It
returns only once the whole batch is stored (acknowledged), or raises ``SinkError``.
Delivery is at-least-once: a batch that failed part-way is retried whole, so a sink
that cannot store atomically (Kafka) may store some records twice; consumers
de-duplicate by the CloudEvents ``id``. The file sink does store atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sidecar.events.record import Record


class SinkError(Exception):
    """The batch was not stored; the message says why, for the operator."""


class Sink(Protocol):
    name: str
    last_success: float | None  # time.monotonic() of the last write that stored its batch

    @property
    def healthy(self) -> bool:
        """False while the last write failed; readiness reports it."""
        ...

    def write(self, records: Sequence[Record]) -> None: ...

    def close(self) -> None: ...
