"""``ProcessSink``: a sink that runs in a worker process, off the sidecar's GIL.

kafka-python is pure Python: per event it costs about 100 µs of CPU in the producing
process (``send()``, the accumulator, its network thread), and rebuilding a producer
during a broker outage held the GIL long enough to stall the event loop for tens of
milliseconds. Run in a child (``sidecar/workers/``), that work lands on another core and
cannot stall the loop; what stays in the sidecar is one pickled batch written to a pipe
and one small reply read back, both in the delivery thread.

The contract is the inner sink's (``sidecar/sinks/base.py``): ``write`` returns once the
child reports the batch stored, or raises ``SinkError``. The child is started on the
first write (the sidecar starts serving without waiting for it) and replaced when it
dies, hangs past ``reply_timeout_s`` or breaks the protocol; a batch that was in its hands
then is failed and retried whole by the pipeline, which the at-least-once contract allows.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from sidecar.events.record import Record
from sidecar.sinks.base import Sink, SinkError
from sidecar.workers.child import (
    FRAME_HEADER,
    FRAME_MAX,
    Child,
    ServiceError,
    WorkerError,
    read_frame,
    write_frame,
)

__all__ = ["FRAME_HEADER", "FRAME_MAX", "ProcessSink", "SinkService", "read_frame",
           "write_frame"]


class SinkService:
    """The child's side: the sink, built in the child, writing what the parent sends."""

    def __init__(self, factory: Callable[[], Sink]) -> None:
        try:
            self.sink = factory()
        except SinkError as exc:
            raise ServiceError(str(exc)) from None
        self.name = self.sink.name

    def handle(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            self.sink.write([Record(*row) for row in rows])
        except SinkError as exc:
            raise ServiceError(str(exc)) from None

    def close(self) -> None:
        self.sink.close()


class ProcessSink:
    """Runs ``factory()`` (a picklable callable returning a ``Sink``) in a child process."""

    def __init__(
        self,
        factory: Callable[[], Sink],
        name: str,
        reply_timeout_s: float,
        log_level: str = "info",
    ) -> None:
        self.name = name
        self._factory = factory
        self._child = Child(name, functools.partial(SinkService, factory), log_level)
        self._reply_timeout_s = reply_timeout_s
        self._healthy = True
        self.last_success: float | None = None  # monotonic; readiness reads it

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def _proc(self) -> Any:  # for tests: the child's Popen, or None
        return self._child.proc

    def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        try:
            # Plain tuples: pickling the slotted dataclass costs 2.3 µs a record in the
            # delivery thread, which holds the sidecar's GIL; tuples cost 0.7.
            rows = [(r.seq, r.key, r.value, r.headers) for r in records]
            self._child.call(rows, self._reply_timeout_s)
        except WorkerError as exc:
            self._healthy = False
            raise SinkError(str(exc)) from None
        self._healthy = True
        self.last_success = time.monotonic()

    def close(self) -> None:
        self._child.close()
