"""``WriteAheadLog``: the durable, segmented, checksummed event log on local disk.

On-disk format (one directory per log, owned by one process at a time)::

    lock                        flock(LOCK_EX) held while open: a second opener gets LogLocked
    00000000000000000001.seg    segments, named by the first seq they hold (20 digits, so
    00000000000000004711.seg      lexical order is seq order)
    cursor                      16 bytes: b"SCCU", acked seq (u64), CRC-32C of the first 12
    hwm                         16 bytes, memory-mapped: highest seq the producer accepted
                                  (u64), highest seq the log settled (written or dropped, u64)

A segment is ``SEGMENT_HEADER`` (8 bytes: b"SCWAL", 0, 0, format version 2; version 1,
the same but for how notices are numbered, is read too) followed by
frames, one per record, as ``framing.py`` describes (magic, CRC-32C, length, payload with
seq, append time, key, headers, value). Seqs increase strictly across the whole log. The
last segment is the active one; a new one is started when the next record would push the
active one past ``segment_bytes`` (a record bigger than that gets a segment of its own).

Durability: ``append`` writes with ``pwrite`` at the offset the log knows is good; on any
error it truncates back and deletes segments it created, so a failed append leaves nothing
and may be retried. ``sync`` fdatasyncs written segments, then the directory if segments
were created or deleted; after a failed fdatasync the next ``sync`` first writes again
everything not yet synced (the kernel may have dropped it and would report success).
``ack`` rewrites the cursor in place and fsyncs it at most every ``CURSOR_FSYNC_INTERVAL``
seconds: after a crash a few acked records may be redelivered.
Whole segments are deleted once every record in them is acked (never the active one); a
delete that fails is retried later and never fails the append or ack it follows.

Recovery (on open) scans every segment and checks every checksum. A bad frame in the middle
is skipped by resynchronising on the next magic; a bad or torn tail of the last segment is
truncated; both are counted in ``corrupt_skipped``. The read position starts at the first
record above the cursor. ``hwm`` lives in the page cache, so it survives SIGKILL: if the
producer accepted seqs the log never settled, ``lost_on_crash`` counts their events and numbering
continues after them (``next_seq``).

Threads: one writer (append, sync), one delivery thread (read, rewind, ack), and any thread
for stats/full/note_accepted. One lock guards the in-memory index; disk I/O is done outside
it, so a slow fsync or write never stalls delivery or the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections.abc import Sequence

from sidecar.durability import disk, framing, segments
from sidecar.durability.base import LogStats, check_increasing, check_when_full, full_headroom
from sidecar.durability.index import LogIndex
from sidecar.durability.segments import HEADER, Segment
from sidecar.events.record import Record, event_number, next_event_seq

log = logging.getLogger("inference_sidecar.wal")

_ACCEPTED = struct.Struct("<Q")  # hwm offset 0: accepted; offset 8: settled


HWM_FLUSH_S = 1.0  # power-cut crash accounting granularity


class WriteAheadLog:
    """The on-disk ``EventLog``; see the module docstring for format and guarantees.

    ``bytes_used`` is what the segment files take: every segment not yet deleted, so acked
    records that share a segment with unacked ones still count. That is the number that
    bounds the disk, and ``max_bytes`` caps it (drop_oldest may exceed it by one batch
    between writing the batch and deleting the segments it displaces).
    """

    def __init__(self, directory: str, max_bytes: int, segment_bytes: int, when_full: str) -> None:
        self.when_full = check_when_full(when_full)
        if segment_bytes < HEADER + framing.OVERHEAD:
            raise ValueError(f"segment_bytes {segment_bytes} is too small for any record")
        if max_bytes < 2 * segment_bytes:
            raise ValueError("max_bytes must be at least twice segment_bytes")
        self.directory = directory
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self._headroom = full_headroom(max_bytes)
        self._lock = threading.Lock()
        self._mm_flushed = 0.0
        self._closed = False
        self._writer = disk.SegmentWriter(directory)  # writer thread's files
        self._rfds: dict[Segment, int] = {}  # delivery thread's read fds
        self._unlink_later: list[str] = []  # trimmed segments a failed unlink left behind
        self._cursor_stale = False  # the cursor file is behind ``_cursor``: a store failed
        os.makedirs(directory, exist_ok=True)
        self._lockfd = disk.lock_directory(directory)
        try:
            self._open()
        except BaseException:
            self._release_files()
            raise

    def _open(self) -> None:
        found = disk.recover(self.directory)
        if found.unknown_files:
            log.warning(
                "write-ahead log: files that are not part of the log were ignored",
                extra={"fields": {"directory": self.directory, "files": found.unknown_files[:20]}},
            )
        self._cursor_file = disk.CursorFile(self.directory)
        self._ix = ix = LogIndex(found.segments, self._cursor_file.load(), found.corrupt)
        ix.dir_dirty = found.changed
        # A crash between cursor write and delete:
        self._remove([seg.path for seg in ix.take_trimmable()])
        self._mm = disk.map_hwm(self.directory)
        accepted, settled = (int(v) for v in disk.HWM.unpack_from(self._mm, 0))
        written = max(ix.last_seq, settled)
        # Counted in events, not seqs: final records share their event blocks.
        self._lost = max(0, event_number(accepted) - event_number(written))
        if self._lost:
            log.warning(
                "write-ahead log: events accepted before a crash were never written",
                extra={"fields": {"directory": self.directory, "lost_on_crash": self._lost,
                                  "accepted_through": accepted, "written_through": written}},
            )
        # Numbering resumes after anything ever accepted or settled, so a seq is never
        # reused even when the disk lost the tail that held it.
        self._accepted = max(accepted, written)
        disk.HWM.pack_into(self._mm, 0, self._accepted, self._accepted)  # count losses once

    # --- producer side (event loop) ---------------------------------------------------

    def note_accepted(self, seq: int) -> None:
        """Record that the producer accepted ``seq``: one store into the page cache."""
        if seq > self._accepted:
            self._accepted = seq
            try:  # noqa: SIM105 - try is free here; contextlib.suppress triples the cost
                _ACCEPTED.pack_into(self._mm, 0, seq)
            except ValueError:  # closed: the process is shutting down
                pass

    @property
    def next_seq(self) -> int:
        return next_event_seq(max(self._accepted, self._ix.last_seq))

    @property
    def last_seq(self) -> int:
        return self._ix.last_seq

    @property
    def bytes_used(self) -> int:
        return self._ix.bytes_used  # one int read: no lock (a hint, as ``full``)

    @property
    def corrupt_skipped(self) -> int:
        return self._ix.corrupt

    @property
    def full(self) -> bool:
        """True when ``bytes_used`` plus ``full_headroom(max_bytes)`` exceeds ``max_bytes``."""
        return self._ix.bytes_used + self._headroom > self.max_bytes

    def stats(self) -> LogStats:
        with self._lock:
            return self._ix.stats(self._lost)

    # --- writer thread -----------------------------------------------------------------

    def append(self, records: Sequence[Record], completes: bool = False) -> None:
        self._check_open()
        if not records:
            return
        ix = self._ix
        check_increasing(records, ix.last_seq)
        ts = time.time()
        frames = framing.encode_batch(records, ts)
        sizes = [len(f) for f in frames]
        with self._lock:
            keep_from, keep_to, roll = segments.plan_batch(
                ix.segs, sizes, ix.bytes_used, ix.cursor,
                self.max_bytes, self.segment_bytes, self.when_full, completes,
            )
            active = None if roll or not ix.segs else ix.segs[-1]
        kept = range(keep_from, keep_to)
        chunks: list[tuple[Segment, int, int]] = []
        if kept:
            layout = segments.layout(sizes, kept, active, self.segment_bytes)
            chunks = self._writer.write(records, frames, layout, active)
        with self._lock:
            doomed = ix.commit(records, sizes, kept, chunks, ts, self.max_bytes, self.when_full)
        self._remove([seg.path for seg in doomed])  # never raises: the batch is in
        with contextlib.suppress(ValueError):
            _ACCEPTED.pack_into(self._mm, 8, records[-1].seq)  # settled: written or dropped

    def sync(self) -> None:
        """fdatasync written segments, then the directory if files came or went.

        Writer thread only; the lock is taken only to read and clear the directory flag.
        """
        self._check_open()
        if self._writer.sync() and time.monotonic() - self._mm_flushed >= HWM_FLUSH_S:
            # A process crash keeps the mapped page anyway; only a power cut needs it on
            # disk, so crash accounting survives power loss up to the last second.
            disk.sync_hwm(self.directory)
            self._mm_flushed = time.monotonic()
        with self._lock:
            dir_dirty, self._ix.dir_dirty = self._ix.dir_dirty, False
        if dir_dirty:
            try:
                disk.fsync_dir(self.directory)
            except OSError:
                with self._lock:
                    self._ix.dir_dirty = True
                raise

    # --- delivery thread ---------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int) -> list[Record]:
        """The next records in seq order: at most ``max_records``, and frames totalling at
        most ``max_bytes`` except that one record is always returned if there is one.

        If drop_oldest deletes the segment being read mid-read, the read starts over; [] is
        possible only if that keeps happening, and the next call carries on."""
        self._check_open()
        ix = self._ix
        for _ in range(8):
            with self._lock:
                if ix.rseg is None or not ix.rseg.live:
                    ix.reposition()
                if ix.rseg is None:
                    return []
                plan, end = segments.read_plan(ix.segs, ix.rseg, ix.ridx, max_records, max_bytes)
                gen = ix.rgen
            if not plan:
                return []
            try:
                out, corrupt = disk.fetch(self._rfds, plan)
            except FileNotFoundError:
                with self._lock:
                    if all(span[0].live for span in plan):
                        raise  # deleted behind the log's back: report, do not spin
                continue
            with self._lock:
                if gen != ix.rgen:
                    continue
                ix.rseg, ix.ridx = end
                ix.corrupt += corrupt
                if out:
                    ix.read_seq = max(ix.read_seq, out[-1].seq)
            self._close_stale_fds()
            return out
        return []

    def rewind(self) -> None:
        self._check_open()
        with self._lock:
            self._ix.rewind()

    def ack(self, seq: int) -> None:
        """Advance the cursor to ``seq`` (capped at ``last_seq``), trim finished segments."""
        self._check_open()
        ix = self._ix
        with self._lock:
            seq = min(seq, ix.last_seq)
            if seq <= ix.cursor:
                if not self._cursor_stale:
                    return
                seq, doomed = ix.cursor, []  # only the store that failed is left to do
            else:
                doomed = ix.advance(seq)
            self._cursor_stale = True
        try:
            self._cursor_file.store(seq, force_sync=False)
        except OSError as exc:
            # The records are acked (in memory) and delivered: raising would make delivery
            # send them again for as long as the disk fails. The next ack stores the
            # cursor; a restart before that redelivers them (at-least-once).
            with self._lock:
                self._unlink_later += [seg.path for seg in doomed]
            log.warning("event log cursor not stored; the next ack retries",
                        extra={"fields": {"reason": exc.strerror or type(exc).__name__}})
            return
        with self._lock:
            if ix.cursor == seq:
                self._cursor_stale = False
        self._remove([seg.path for seg in doomed])
        self._close_stale_fds()

    def _remove(self, paths: list[str]) -> None:
        """Delete trimmed segment files, and any an earlier failure left behind. Never
        raises: their records are already settled in the index, so an error here (EIO,
        EROFS, EPERM) must not fail the append or ack it follows, which a retry would then
        repeat; the files are tried again next time (and by recovery at the next open)."""
        with self._lock:
            paths, self._unlink_later = self._unlink_later + paths, []
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                with self._lock:
                    self._unlink_later.append(path)
                log.warning("trimmed event log segment not deleted; will retry",
                            extra={"fields": {"segment": os.path.basename(path),
                                              "reason": exc.strerror or type(exc).__name__}})

    def _close_stale_fds(self) -> None:
        for seg in [s for s in self._rfds if not s.live]:
            os.close(self._rfds.pop(seg))

    # --- files -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"write-ahead log {self.directory} is closed")

    def close(self) -> None:
        """sync, persist the cursor, close every file and release the directory lock.

        Call it once the writer and delivery threads have stopped using the log."""
        if self._closed:
            return
        try:
            self.sync()
            self._cursor_file.store(self._ix.cursor, force_sync=True)
        finally:
            self._closed = True
            self._release_files()

    def _release_files(self) -> None:
        fds = [*self._writer.take_fds(), *self._rfds.values()]
        self._rfds = {}
        if hasattr(self, "_cursor_file"):
            fds.append(self._cursor_file.fd)
        if hasattr(self, "_mm"):
            with contextlib.suppress(OSError):
                self._mm.flush()
            self._mm.close()
        disk.close_quietly([*fds, self._lockfd])  # closing the lock fd releases the flock
