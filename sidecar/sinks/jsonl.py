"""JSON-lines file sink: one CloudEvent per line, appended; the default without Kafka.

A batch is written with one ``os.write`` loop, then fdatasynced: ``write`` returning is
what lets delivery trim the batch from the write-ahead log, so the lines must survive a
power cut by then, not only a crash of the process. If the disk fails part-way (ENOSPC,
EIO, in the write or the sync) the file is truncated back to where the batch began, so a
retry never leaves a torn or duplicated line. A pipe (``/dev/stdout``) is not synced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Sequence

from sidecar.events.record import Record
from sidecar.sinks.base import SinkError


def encode_lines(records: Sequence[Record]) -> bytes:
    return b"".join([r.value + b"\n" for r in records])


class JsonLinesSink:
    name = "jsonl"

    def __init__(self, path: str) -> None:
        self.path = path
        self._healthy = True
        self.last_success: float | None = None  # monotonic; readiness reads it
        self._seekable = True  # False for a pipe (events_file=/dev/stdout): no truncation
        self._syncable = True
        try:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        except OSError as exc:
            raise SinkError(f"events file {path}: cannot open it ({exc.strerror})") from None

    @property
    def healthy(self) -> bool:
        return self._healthy

    def write(self, records: Sequence[Record]) -> None:
        data = memoryview(encode_lines(records))
        start = self._end_offset()
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            if start is not None and self._syncable:
                self._sync()
        except OSError as exc:
            self._healthy = False
            # If even this fails the batch is still retried and the failure reported.
            if start is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
            raise SinkError(f"events file {self.path}: write failed ({exc.strerror})") from None
        self._healthy = True
        self.last_success = time.monotonic()

    def _sync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise
            self._syncable = False  # a device that cannot sync (a terminal): nothing to do

    def _end_offset(self) -> int | None:
        if not self._seekable:
            return None
        try:
            return os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._seekable = False
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        os.close(self._fd)
