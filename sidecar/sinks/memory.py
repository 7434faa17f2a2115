"""In-memory sink: keeps records in a list. For development and unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from sidecar.events.record import Record
from sidecar.sinks.base import SinkError


class MemorySink:
    name = "memory"

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.fail_next = 0  # tests set this to make the next N writes fail
        self._lock = threading.Lock()
        self._healthy = True
        self.last_success: float | None = None  # monotonic; readiness reads it

    @property
    def healthy(self) -> bool:
        return self._healthy

    def write(self, records: Sequence[Record]) -> None:
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                self._healthy = False
                raise SinkError("memory sink told to fail")
            self.records.extend(records)
            self._healthy = True
            self.last_success = time.monotonic()

    def close(self) -> None:
        pass
