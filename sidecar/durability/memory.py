"""``MemoryLog``: the ``EventLog`` contract without a disk, for ``durability: memory``.

Same ordering, read/rewind/ack and ``when_full`` semantics as ``WriteAheadLog``, so the
pipeline code is the same either way; a restart loses whatever is pending (there is no
crash accounting: ``lost_on_crash`` is always 0). Sizes are counted as the frames the
write-ahead log would write, so ``max_bytes`` means the same in both.

Differences that follow from having no segments: acked records are freed at once, and
drop_oldest drops single records (the write-ahead log drops whole segments).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from itertools import accumulate

from sidecar.durability.base import (
    LogFull,
    LogStats,
    check_increasing,
    check_when_full,
    full_headroom,
)
from sidecar.durability.framing import frame_size
from sidecar.events.record import Record, is_notice, next_event_seq, starts_event


class MemoryLog:
    def __init__(self, max_bytes: int, when_full: str = "block") -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.when_full = check_when_full(when_full)
        self.max_bytes = max_bytes
        self._headroom = full_headroom(max_bytes)
        self._lock = threading.Lock()
        self._entries: deque[tuple[Record, float, int]] = deque()  # unacked, in seq order
        self._ridx = 0  # index in _entries of the next record to read
        self._dropped_in_flight = 0
        self._bytes_used = 0
        self._events = 0  # entries that start an event
        self._cursor = 0
        self._last_seq = 0
        self._accepted = 0
        self._dropped_oldest = self._dropped_newest = self._notices_dropped = 0
        self._closed = False

    def note_accepted(self, seq: int) -> None:
        """Only feeds ``next_seq``: with no disk there is no crash to account for."""
        if seq > self._accepted:
            self._accepted = seq

    @property
    def next_seq(self) -> int:
        return next_event_seq(max(self._accepted, self._last_seq))

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def bytes_used(self) -> int:
        return self._bytes_used  # one int read: no lock (a hint, as ``full``)

    @property
    def corrupt_skipped(self) -> int:
        return 0  # nothing to damage

    @property
    def full(self) -> bool:
        """Same rule as the write-ahead log: ``bytes_used`` + headroom > ``max_bytes``."""
        return self._bytes_used + self._headroom > self.max_bytes

    def append(self, records: Sequence[Record], completes: bool = False) -> None:
        self._check_open()
        if not records:
            return
        check_increasing(records, self._last_seq)
        ts = time.time()
        sizes = [frame_size(r) for r in records]
        with self._lock:
            keep_from, keep_to = self._plan(sizes, completes)
            if self.when_full == "drop_oldest":
                need = sum(sizes[keep_from:keep_to])
                while self._entries and self._bytes_used + need > self.max_bytes:
                    dropped, _, size = self._entries.popleft()
                    self._bytes_used -= size
                    event = starts_event(dropped.seq)
                    self._events -= event
                    if self._ridx > 0:  # read already: delivery holds it and sends it
                        self._dropped_in_flight += event
                        self._ridx -= 1
                    else:
                        self._dropped_oldest += event
                        self._notices_dropped += is_notice(dropped.seq)
            for i in range(keep_from, keep_to):
                self._entries.append((records[i], ts, sizes[i]))
                self._bytes_used += sizes[i]
                self._events += starts_event(records[i].seq)
            if keep_to > keep_from:
                self._last_seq = records[keep_to - 1].seq
            self._dropped_oldest += sum(starts_event(r.seq) for r in records[:keep_from])
            self._dropped_newest += sum(starts_event(r.seq) for r in records[keep_to:])
            refused = [*records[:keep_from], *records[keep_to:]]
            self._notices_dropped += sum(is_notice(r.seq) for r in refused)

    def _plan(self, sizes: list[int], completes: bool) -> tuple[int, int]:
        """The range of the batch to keep, per ``when_full``; under lock."""
        total, room = sum(sizes), self.max_bytes - self._bytes_used
        if total <= room or (completes and self.when_full == "block"):
            return 0, len(sizes)
        if self.when_full == "block":
            raise LogFull(
                f"a batch of {len(sizes)} records ({total} bytes) does not fit: "
                f"{self._bytes_used} of {self.max_bytes} bytes used"
            )
        if self.when_full == "drop_newest":
            return 0, sum(1 for c in accumulate(sizes) if c <= room)
        suffix = sum(1 for c in accumulate(reversed(sizes)) if c <= self.max_bytes)
        return len(sizes) - suffix, len(sizes)

    def sync(self) -> None:
        self._check_open()

    def read(self, max_records: int, max_bytes: int) -> list[Record]:
        self._check_open()
        out: list[Record] = []
        used = 0
        with self._lock:
            while self._ridx < len(self._entries) and len(out) < max_records:
                record, _, size = self._entries[self._ridx]
                if out and used + size > max_bytes:
                    break
                out.append(record)
                used += size
                self._ridx += 1
        return out

    def rewind(self) -> None:
        self._check_open()
        with self._lock:
            self._ridx = 0

    def ack(self, seq: int) -> None:
        self._check_open()
        with self._lock:
            self._cursor = max(self._cursor, min(seq, self._last_seq))
            while self._entries and self._entries[0][0].seq <= self._cursor:
                acked, _, size = self._entries.popleft()
                self._bytes_used -= size
                self._events -= starts_event(acked.seq)
                self._ridx = max(0, self._ridx - 1)

    def stats(self) -> LogStats:
        with self._lock:
            return LogStats(
                bytes_used=self._bytes_used,
                records_pending=len(self._entries),
                events_pending=self._events,
                dropped_oldest=self._dropped_oldest,
                dropped_newest=self._dropped_newest,
                corrupt_skipped=0,
                lost_on_crash=0,
                oldest_pending_ts=self._entries[0][1] if self._entries else None,
                dropped_in_flight=self._dropped_in_flight,
                notices_dropped=self._notices_dropped,
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("memory log is closed")

    def close(self) -> None:
        self._closed = True
