"""The write-ahead log's small files and its recovery scan (format: ``wal.py``).

Kept apart from ``wal.py`` so that module holds only the live operations: what is here
runs once on open (recovery, the directory lock) or touches a file other than a segment
(the cursor and the crash-accounting ``hwm``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from crc32c import crc32c

from sidecar.durability import framing
from sidecar.durability.base import LogLocked
from sidecar.durability.segments import HEADER, SEGMENT_NAME, Segment, Span, segment_name
from sidecar.events.record import Record

log = logging.getLogger("inference_sidecar.wal")

OWN_FILES = frozenset({"lock", "cursor", "hwm"})
CURSOR_FSYNC_INTERVAL = 1.0
_CURSOR = struct.Struct("<4sQI")  # magic, acked seq, CRC-32C of the first 12 bytes
_CURSOR_MAGIC = b"SCCU"
HWM = struct.Struct("<QQ")  # accepted by the producer, settled by the log (written or dropped)


def lock_directory(directory: str) -> int:
    """flock the directory's ``lock`` file; the fd must stay open while the log is."""
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogLocked(errno.EBUSY, "write-ahead log directory is in use", directory) from None
    return fd


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until done: a short write is legal and must not leave a gap."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def fsync_dir(directory: str) -> None:
    """Make file creations and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CursorFile:
    """The acked seq, rewritten in place (16 bytes, one sector: no torn write in practice,
    and the checksum catches one anyway). fsynced at most every ``CURSOR_FSYNC_INTERVAL``:
    losing the last second of acks only means redelivering those records."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.fd = os.open(os.path.join(directory, "cursor"), os.O_RDWR | os.O_CREAT, 0o640)
        self._synced = time.monotonic()

    def load(self) -> int:
        raw = os.pread(self.fd, _CURSOR.size, 0)
        if not raw:
            return 0
        if len(raw) == _CURSOR.size:
            magic, seq, crc = _CURSOR.unpack(raw)
            if magic == _CURSOR_MAGIC and crc32c(raw[:12]) == crc:
                return int(seq)
        log.warning(
            "write-ahead log: cursor file unreadable; redelivering everything on disk",
            extra={"fields": {"directory": self.directory}},
        )
        return 0

    def store(self, seq: int, force_sync: bool) -> None:
        head = _CURSOR_MAGIC + seq.to_bytes(8, "little")
        os.pwrite(self.fd, head + crc32c(head).to_bytes(4, "little"), 0)
        now = time.monotonic()
        if force_sync or now - self._synced >= CURSOR_FSYNC_INTERVAL:
            os.fsync(self.fd)
            self._synced = now


def map_hwm(directory: str) -> mmap.mmap:
    """Map the 16-byte ``hwm`` file. Stores into the map land in the page cache, so they
    survive the process being killed (not a power cut, unless ``sync`` flushed them)."""
    fd = os.open(os.path.join(directory, "hwm"), os.O_RDWR | os.O_CREAT, 0o640)
    try:
        # The file's block is allocated now, while a full disk is an OSError (ENOSPC) the
        # start-up reports; a sparse file (ftruncate) made the first store into the map a
        # SIGBUS that killed the process without a word.
        try:
            os.posix_fallocate(fd, 0, HWM.size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            size = os.fstat(fd).st_size  # no fallocate here: writing allocates as well
            if size < HWM.size:
                pwrite_all(fd, bytes(HWM.size - size), size)
        return mmap.mmap(fd, HWM.size)
    finally:
        os.close(fd)


def sync_hwm(directory: str) -> None:
    """Write the mapped ``hwm`` page back to disk. ``fsync`` on the file does what msync
    does for a shared mapping, but releases the GIL: ``mmap.flush`` holds it for the whole
    disk wait, which stalled the event loop for up to 88 ms while the log was busy."""
    fd = os.open(os.path.join(directory, "hwm"), os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def close_quietly(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass(slots=True)
class Recovered:
    segments: list[Segment]
    corrupt: int  # records skipped (bad frames in the middle, bad tail of the last segment)
    unknown_files: list[str]
    changed: bool  # files were deleted or truncated: the directory wants an fsync


def recover(directory: str) -> Recovered:
    """Scan every segment in seq order; cut the last one back to its last valid record.

    Seqs must increase across segments, so a record that repeats or goes back (stale
    bytes) is skipped like a corrupt one. A segment with no valid record left is deleted:
    it is either a file torn while being created or garbage. A file that looks like a
    segment of another format version is refused rather than destroyed.
    """
    names = sorted(os.listdir(directory))
    unknown = [n for n in names if not SEGMENT_NAME.match(n) and n not in OWN_FILES]
    out = Recovered([], 0, unknown, False)
    prev = 0
    for name in filter(SEGMENT_NAME.match, names):
        path = os.path.join(directory, name)
        with open(path, "rb") as fh:
            data = fh.read()
        v1 = data.startswith(framing.SEGMENT_HEADER_V1)
        header_ok = v1 or data.startswith(framing.SEGMENT_HEADER)
        if framing.SEGMENT_HEADER.startswith(data):  # torn while being created: no record
            os.unlink(path)
            out.changed = True
            continue
        other_version = not header_ok and len(data) >= HEADER and data.startswith(b"SCWAL")
        scan = framing.scan(data, HEADER if header_ok or other_version else 0, prev)
        if other_version and not scan.seqs:
            # No record this version can read behind the header: another format's file,
            # kept for the software that wrote it. (With readable records, the header's
            # version bytes were damaged: the records are kept, the damage logged.)
            raise ValueError(f"{path}: segment format {data[5:8].hex()} is not supported")
        out.corrupt += scan.corrupt
        if scan.corrupt or (data and not header_ok):
            log.warning(
                "write-ahead log: corrupt records skipped on recovery",
                extra={"fields": {"segment": path, "corrupt_records": scan.corrupt,
                                  "header_ok": header_ok, "bad_tail": scan.bad_tail}},
            )
        if not scan.seqs:  # garbage, or a first record torn: nothing to keep
            os.unlink(path)
            out.changed = True
            continue
        out.segments.append(Segment(path, len(data), scan.end, scan.starts, scan.seqs, scan.stamps,
                                    notices_known=not v1))
        prev = scan.seqs[-1]
    if out.segments and out.segments[-1].size > out.segments[-1].end:
        last = out.segments[-1]  # appends go here: drop its bad tail (a torn write)
        os.truncate(last.path, last.end)
        last.size = last.end
        out.changed = True
    return out


class SegmentWriter:
    """The writer thread's files: the active segment and finished ones not yet fsynced.

    Only the writer thread touches it, so it needs no lock; ``WriteAheadLog`` publishes
    what was written to the shared index afterwards.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.fd: int | None = None  # the active segment, opened on first append
        self.rolled: list[int] = []  # finished segments, fdatasynced then closed by sync
        self.dirty = False  # written since the last sync
        self._cut_back: int | None = None  # a failed append could not truncate: redo first
        # What was written since each file's last good fdatasync, by fd: (offset, bytes).
        # After a failed fdatasync Linux may have dropped those pages, or marked them clean
        # without writing them, and the next fdatasync reports success ("fsyncgate"): so
        # they are written again before it. About one sync interval of writes.
        self._unsynced: dict[int, list[tuple[int, bytes]]] = {}
        self._sync_failed = False

    def write(
        self,
        records: Sequence[Record],
        frames: list[bytes],
        layout: list[tuple[Segment | None, int, int]],
        active: Segment | None,
    ) -> list[tuple[Segment, int, int]]:
        """Write the chunks of a batch (``segments.layout``), creating new segment files.

        All or nothing: on error the active segment is truncated back and new files are
        deleted before the OSError (ENOSPC, EIO, ...) propagates unchanged.
        """
        chunks: list[tuple[Segment, int, int]] = []
        created: list[tuple[Segment, int]] = []
        written: list[tuple[int, int, bytes]] = []
        grew = False
        try:
            if self._cut_back is not None and self.fd is not None:
                os.ftruncate(self.fd, self._cut_back)
                self._cut_back = None
            for seg, lo, hi in layout:
                body = b"".join(frames[lo:hi])
                if seg is not None:
                    if self.fd is None:
                        self.fd = os.open(seg.path, os.O_RDWR)
                    grew = True
                    pwrite_all(self.fd, body, seg.size)
                    written.append((self.fd, seg.size, body))
                else:
                    path = os.path.join(self.directory, segment_name(records[lo].seq))
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
                    seg = Segment(path, HEADER, HEADER)
                    created.append((seg, fd))
                    body = framing.SEGMENT_HEADER + body
                    pwrite_all(fd, body, 0)
                    written.append((fd, 0, body))
                chunks.append((seg, lo, hi))
        except OSError:
            if grew and self.fd is not None and active is not None:
                try:
                    os.ftruncate(self.fd, active.size)
                except OSError:
                    self._cut_back = active.size  # the next pwrite still lands right
            for seg, fd in created:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(seg.path)
            raise
        self.dirty = True
        for fd, offset, body in written:
            self._unsynced.setdefault(fd, []).append((offset, body))
        if created:
            if self.fd is not None:
                self.rolled.append(self.fd)
            self.rolled.extend(fd for _, fd in created[:-1])
            self.fd = created[-1][1]
        return chunks

    def sync(self) -> bool:
        """fdatasync everything written since the last sync; False if there was nothing.
        After a failed one, everything not yet synced is written again first."""
        if not self.dirty:
            return False
        try:
            if self._sync_failed:
                for fd, writes in self._unsynced.items():
                    for offset, body in writes:
                        pwrite_all(fd, body, offset)
            while self.rolled:
                self._fdatasync(self.rolled[0])
                os.close(self.rolled.pop(0))
            if self.fd is not None:
                self._fdatasync(self.fd)
        except OSError:
            self._sync_failed = True
            raise
        self._sync_failed = False
        self.dirty = False
        return True

    def _fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)
        self._unsynced.pop(fd, None)

    def take_fds(self) -> list[int]:
        fds = [*self.rolled] + ([self.fd] if self.fd is not None else [])
        self.rolled, self.fd = [], None
        self._unsynced.clear()
        return fds


def fetch(fds: dict[Segment, int], plan: Sequence[Span]) -> tuple[list[Record], int]:
    """Read and decode planned spans (delivery thread, no lock), caching one fd per segment.

    A record failing its checksum now (the disk changed since recovery) is skipped and
    counted, never returned: (records, corrupt count).
    """
    out: list[Record] = []
    corrupt = 0
    for seg, starts, seqs, hi in plan:
        fd = fds.get(seg)
        if fd is None:
            fd = fds[seg] = os.open(seg.path, os.O_RDONLY)
        lo = starts[0]
        buf = os.pread(fd, hi - lo, lo)
        for start, seq in zip(starts, seqs, strict=True):
            try:
                record: Record | None = framing.decode(buf, start - lo)[0]
            except framing.CorruptRecord:
                record = None
            if record is None or record.seq != seq:
                corrupt += 1
                log.warning(
                    "write-ahead log: record failed its checksum on read; skipped",
                    extra={"fields": {"segment": seg.path, "seq": seq}},
                )
                continue
            out.append(record)
    return out, corrupt
