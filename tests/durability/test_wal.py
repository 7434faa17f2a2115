"""``WriteAheadLog`` on disk: segments, trimming, recovery, corruption, full disks, policies
with exact per-segment figures, crash accounting (in process; SIGKILL: test_wal_crash.py)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.durability import LogFull, LogLocked, WriteAheadLog, disk
from sidecar.durability.base import full_headroom
from sidecar.durability.framing import SEGMENT_HEADER, SEGMENT_HEADER_V1, encode, frame_size
from sidecar.events.record import EVENT_SEQ_STEP, Record

HEADER = len(SEGMENT_HEADER)
Opened = list[WriteAheadLog]
SEG = 4096
MAX = 64 * 1024


def rec(seq: int, size: int = 100) -> Record:
    body = f"v{seq}:".encode()
    return Record(seq=seq, key=b"client", value=body + b"x" * max(0, size - len(body)))


def batch(first: int, n: int, size: int = 100) -> list[Record]:
    return [rec(s, size) for s in range(first, first + n)]


def ev(n: int) -> int:
    """The first seq of event ``n``'s block, as the EventQueue numbers events."""
    return n * EVENT_SEQ_STEP


def events(first: int, n: int, size: int = 100) -> list[Record]:
    """Records for events ``first`` .. ``first + n - 1``, one per event block."""
    return [rec(ev(e), size) for e in range(first, first + n)]


def evs(numbers: range | list[int]) -> list[int]:
    return [ev(e) for e in numbers]


def seqs(records: list[Record]) -> list[int]:
    return [r.seq for r in records]


def drain(log: WriteAheadLog) -> list[Record]:
    out: list[Record] = []
    for _ in range(10_000):
        got = log.read(1000, 1 << 30)
        if not got:
            return out
        out += got
    raise AssertionError("read never ran dry")


def segment_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Opened]:
    """Logs a test opened, closed at the end whatever happened."""
    logs: Opened = []
    yield logs
    for log in logs:
        log.close()


def wal(opened: Opened, d: Path, max_bytes: int = MAX, segment_bytes: int = SEG,
        when_full: str = "block") -> WriteAheadLog:
    log = WriteAheadLog(str(d), max_bytes, segment_bytes, when_full)
    opened.append(log)
    return log


def reopen(opened: Opened, log: WriteAheadLog, **kw: Any) -> WriteAheadLog:
    log.close()
    return wal(opened, Path(log.directory), **{"max_bytes": log.max_bytes,
                                                "segment_bytes": log.segment_bytes,
                                                "when_full": log.when_full, **kw})


# --- segments ---------------------------------------------------------------------------


def test_segments_roll_and_are_named_by_their_first_seq(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    for first in range(1, 301, 10):
        log.append(batch(first, 10))
    log.sync()
    files = segment_files(tmp_path)
    assert len(files) > 5
    firsts = [int(f.stem) for f in files]
    assert [f.name for f in files] == [f"{n:020d}.seg" for n in firsts]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    for f in files:
        data = f.read_bytes()
        assert data.startswith(SEGMENT_HEADER)
        assert len(data) <= SEG
        assert data[HEADER:].startswith(encode(rec(int(f.stem)), 0)[:4])  # first frame here
    assert log.stats().bytes_used == sum(f.stat().st_size for f in files)
    assert seqs(drain(log)) == list(range(1, 301))


def test_a_record_bigger_than_a_segment_gets_its_own(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    log.append([rec(1), rec(2, 3 * SEG), rec(3)])
    files = segment_files(tmp_path)
    assert [int(f.stem) for f in files] == [1, 2, 3]
    assert files[1].stat().st_size == HEADER + frame_size(rec(2, 3 * SEG))
    assert drain(log) == [rec(1), rec(2, 3 * SEG), rec(3)]


def test_ack_trims_whole_segments_and_never_the_active_one(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 200))
    files = segment_files(tmp_path)
    second = int(files[1].stem)
    log.ack(second - 2)  # first segment not fully acked: nothing deleted
    assert segment_files(tmp_path) == files
    log.ack(second - 1)
    assert segment_files(tmp_path) == files[1:]
    log.ack(200)
    assert segment_files(tmp_path) == files[-1:]
    assert log.stats().bytes_used == files[-1].stat().st_size
    assert log.read(10, 1 << 20) == []
    log.append(batch(201, 200))  # the first few fill up the old active segment
    assert files[-1] in segment_files(tmp_path)
    log.ack(230)
    assert files[-1] not in segment_files(tmp_path)
    assert seqs(drain(log)) == list(range(231, 401))


def test_a_failed_delete_fails_neither_append_nor_ack(
        opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records of a trimmed or dropped segment are settled before its file goes: an
    EIO there must not fail the append (the writer would append the batch again) or the
    ack; the file is deleted by a later call."""
    real_unlink = os.unlink
    failing = [True]

    def unlink(path: str) -> None:
        if failing[0]:
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(path)
    monkeypatch.setattr(os, "unlink", unlink)
    log = wal(opened, tmp_path, max_bytes=4 * SEG, when_full="drop_oldest")
    log.append(events(1, 40))
    first = segment_files(tmp_path)[0]
    log.append(events(41, 200))  # drops the oldest segments: their deletes fail
    assert log.stats().dropped_oldest > 0 and first.exists()
    log.ack(ev(240))  # trims: its deletes fail too
    assert first.exists() and log.read(10, 1 << 20) == []
    failing[0] = False
    log.append(events(241, 1))
    assert first not in segment_files(tmp_path)
    assert sum(f.stat().st_size for f in segment_files(tmp_path)) == log.stats().bytes_used


def test_a_failed_cursor_store_is_stored_by_a_later_ack(
        opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 100))
    real_store = disk.CursorFile.store
    failing = [True]

    def store(self: disk.CursorFile, seq: int, force_sync: bool) -> None:
        if failing[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_store(self, seq, force_sync)
    monkeypatch.setattr(disk.CursorFile, "store", store)
    log.ack(60)  # not raised: the records are acked, delivery must not send them again
    assert log.stats().records_pending == 40
    assert disk.CursorFile(str(tmp_path)).load() == 0
    failing[0] = False
    log.ack(60)  # nothing new to ack, but the file is behind: stored now
    assert disk.CursorFile(str(tmp_path)).load() == 60
    log = reopen(opened, log)
    assert seqs(drain(log)) == list(range(61, 101))


def test_bytes_used_matches_the_files_through_every_operation(
    opened: Opened, tmp_path: Path
) -> None:
    log = wal(opened, tmp_path, when_full="drop_oldest")
    seq = 0
    for i in range(60):
        log.append(batch(seq + 1, 7, size=50 + 37 * i % 600))
        seq += 7
        if i % 3 == 0:
            log.ack(seq - 5)
        assert log.stats().bytes_used == sum(f.stat().st_size for f in segment_files(tmp_path))
        assert log.stats().bytes_used <= MAX


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        WriteAheadLog(str(tmp_path), 1000, 600, "block")
    with pytest.raises(ValueError, match="too small"):
        WriteAheadLog(str(tmp_path), 1000, 10, "block")
    with pytest.raises(ValueError, match="when_full"):
        WriteAheadLog(str(tmp_path), MAX, SEG, "spill")


# --- restart ----------------------------------------------------------------------------


def test_restart_resumes_after_the_cursor(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    log.append(events(1, 100))
    assert seqs(log.read(80, 1 << 20)) == evs(range(1, 81))
    log.ack(ev(60))
    log = reopen(opened, log)
    assert seqs(drain(log)) == evs(range(61, 101))
    assert (log.last_seq, log.next_seq) == (ev(100), ev(101))
    assert log.stats().records_pending == 40
    with pytest.raises(ValueError):
        log.append([rec(ev(100))])
    log.append(events(101, 5))
    log = reopen(opened, log)
    assert seqs(drain(log)) == evs(range(61, 106))


def test_restart_after_everything_acked_keeps_numbering(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    log.append(events(1, 50))
    log.ack(ev(50))
    log = reopen(opened, log)
    assert (log.last_seq, log.next_seq, log.stats().records_pending) == (ev(50), ev(51), 0)
    assert log.read(10, 1 << 20) == []


def test_records_keep_their_append_time_across_restart(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    t0 = time.time()
    log.append(batch(1, 3))
    log = reopen(opened, log)
    ts = log.stats().oldest_pending_ts
    assert ts is not None and t0 <= ts <= time.time()


def test_second_opener_is_refused(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    with pytest.raises(LogLocked) as info:
        WriteAheadLog(str(tmp_path), MAX, SEG, "block")
    assert info.value.errno == errno.EBUSY
    log.close()
    wal(opened, tmp_path)  # released on close


def test_unusable_directory_raises_oserror(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(OSError):
        WriteAheadLog(str(not_a_dir), MAX, SEG, "block")
    with pytest.raises(OSError):
        WriteAheadLog(str(not_a_dir / "sub"), MAX, SEG, "block")


@pytest.fixture
def full_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 64 KiB tmpfs that is full. Needs a mount (root, as CI runs)."""
    mount = tmp_path / "full"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()[:200]}")
    try:
        (mount / "wal").mkdir()  # as a volume's mount point: the directory exists
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        yield mount / "wal"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_filesystem_is_an_error_at_open_not_a_bus_error(full_filesystem: Path) -> None:
    # The hwm file was made sparse (ftruncate) and mapped: the first store into the map
    # needed a block the disk did not have, and the kernel killed the process (SIGBUS).
    # In a child, so that the old failure cannot take the test run with it.
    code = ("import sys; from sidecar.durability import WriteAheadLog\n"
            "try:\n"
            f"    WriteAheadLog({str(full_filesystem)!r}, 1 << 20, 1 << 16, 'block')\n"
            "except OSError as exc:\n"
            "    print(exc.errno, exc.strerror); sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 3, (result.returncode, result.stderr[-500:])
    assert result.stdout.strip() == f"{errno.ENOSPC} No space left on device"


def test_without_fallocate_the_hwm_block_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:  # some filesystems (NFS)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    mapped = disk.map_hwm(str(tmp_path))
    try:
        assert os.stat(tmp_path / "hwm").st_blocks > 0  # written, not sparse
        disk.HWM.pack_into(mapped, 0, 7, 5)
    finally:
        mapped.close()
    assert disk.HWM.unpack((tmp_path / "hwm").read_bytes()) == (7, 5)


# --- corruption -------------------------------------------------------------------------


def test_torn_tail_is_truncated_counted_once_and_appends_continue(
    opened: Opened, tmp_path: Path
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 20))
    log.close()
    last = segment_files(tmp_path)[-1]
    size = last.stat().st_size
    os.truncate(last, size - frame_size(rec(20)) // 2)  # record 20 half written
    log = wal(opened, tmp_path)
    assert log.stats().corrupt_skipped == 1
    assert log.last_seq == 19
    assert last.stat().st_size == size - frame_size(rec(20))
    log.append(batch(20, 5))
    log = reopen(opened, log)
    assert log.stats().corrupt_skipped == 0
    assert seqs(drain(log)) == list(range(1, 25))


def test_torn_segment_creation_leaves_no_trace(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 5))
    log.close()
    (tmp_path / f"{6:020d}.seg").write_bytes(SEGMENT_HEADER[:3])
    log = wal(opened, tmp_path)
    assert log.stats().corrupt_skipped == 0
    assert not (tmp_path / f"{6:020d}.seg").exists()
    log.append(batch(6, 2))
    assert seqs(drain(log)) == list(range(1, 8))


@pytest.mark.parametrize("offset", [0, 2, 6, 10, 20, 40])
def test_flipped_byte_skips_that_record_only(
    opened: Opened, tmp_path: Path, offset: int
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 100))
    log.close()
    first = segment_files(tmp_path)[0]
    data = bytearray(first.read_bytes())
    at = HEADER + 3 * frame_size(rec(1)) + offset  # inside record 4
    data[at] ^= 0x40
    first.write_bytes(bytes(data))
    log = wal(opened, tmp_path)
    assert log.stats().corrupt_skipped == 1
    got = seqs(drain(log))
    assert got == [s for s in range(1, 101) if s != 4]
    assert log.stats().records_pending == 99


def test_flipped_byte_in_the_last_record_of_the_active_segment(
    opened: Opened, tmp_path: Path
) -> None:
    log = wal(opened, tmp_path)
    log.append(events(1, 10))
    log.close()
    last = segment_files(tmp_path)[-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 1
    last.write_bytes(bytes(data))
    log = wal(opened, tmp_path)
    assert log.stats().corrupt_skipped == 1
    assert log.last_seq == ev(9)
    assert log.next_seq == ev(11)  # the producer's numbering never reuses a seq...
    log.append(events(10, 1))  # ...but event 10 was cut off, so the log would accept it
    assert seqs(drain(log)) == evs(range(1, 11))


def test_corruption_after_open_is_skipped_at_read_time(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 10))
    log.sync()
    first = segment_files(tmp_path)[0]
    with open(first, "r+b") as fh:
        fh.seek(HEADER + 2 * frame_size(rec(1)) + 30)  # record 3's payload
        fh.write(b"#")
    assert seqs(drain(log)) == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert log.stats().corrupt_skipped == 1


def test_a_valid_but_foreign_frame_found_at_read_time_is_skipped(
    opened: Opened, tmp_path: Path
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 5))
    log.sync()
    with open(segment_files(tmp_path)[0], "r+b") as fh:
        fh.seek(HEADER + frame_size(rec(1)))  # record 2, replaced by a well-formed impostor
        fh.write(encode(rec(900), 0.0))
    assert frame_size(rec(900)) == frame_size(rec(2))
    assert seqs(drain(log)) == [1, 3, 4, 5]
    assert log.stats().corrupt_skipped == 1


def test_garbage_files_are_ignored_and_reported(
    opened: Opened, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 5))
    log.close()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "123.seg").write_bytes(b"\xffWAL" * 10)  # not a 20-digit name
    with caplog.at_level(logging.WARNING, logger="inference_sidecar.wal"):
        log = wal(opened, tmp_path)
    assert seqs(drain(log)) == [1, 2, 3, 4, 5]
    assert log.stats().corrupt_skipped == 0
    warned = [r for r in caplog.records if "not part of the log" in r.getMessage()]
    assert warned and sorted(warned[0].fields["files"]) == ["123.seg", "notes.txt"]  # type: ignore[attr-defined]
    assert (tmp_path / "notes.txt").exists()


def test_a_garbage_segment_is_counted_and_removed(
    opened: Opened, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 5))
    log.close()
    (tmp_path / f"{0:020d}.seg").write_bytes(os.urandom(300))
    with caplog.at_level(logging.WARNING, logger="inference_sidecar.wal"):
        log = wal(opened, tmp_path)
    assert log.stats().corrupt_skipped >= 1
    assert not (tmp_path / f"{0:020d}.seg").exists()
    assert seqs(drain(log)) == [1, 2, 3, 4, 5]
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_a_segment_of_another_format_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / f"{1:020d}.seg").write_bytes(b"SCWAL\x00\x00\x09" + b"\x00" * 50)
    with pytest.raises(ValueError, match="not supported"):
        WriteAheadLog(str(tmp_path), MAX, SEG, "block")
    assert (tmp_path / f"{1:020d}.seg").stat().st_size == 58  # left alone


@pytest.mark.parametrize("byte", [5, 6, 7])
def test_a_damaged_version_byte_over_readable_records_keeps_them(
        opened: Opened, tmp_path: Path, byte: int, caplog: pytest.LogCaptureFixture) -> None:
    """One flipped bit in a segment header must not stop the log (and the sidecar) from
    opening: the records behind it are checked one by one anyway."""
    log = wal(opened, tmp_path)
    log.append(batch(1, 5))
    log.close()
    path = segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[byte] ^= 0x08
    path.write_bytes(bytes(data))
    log = wal(opened, tmp_path)
    assert seqs(drain(log)) == [1, 2, 3, 4, 5]
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_unreadable_cursor_redelivers_everything(
    opened: Opened, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 10))
    log.ack(5)
    log.close()
    (tmp_path / "cursor").write_bytes(b"SCCU" + b"\x00" * 12)
    with caplog.at_level(logging.WARNING, logger="inference_sidecar.wal"):
        log = wal(opened, tmp_path)
    assert seqs(drain(log)) == list(range(1, 11))
    assert any("cursor" in r.getMessage() for r in caplog.records)


def test_a_read_racing_drop_oldest_returns_no_dropped_record(
    opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = fill(opened, tmp_path, "drop_oldest", step=EVENT_SEQ_STEP)
    assert seqs(log.read(1, 1 << 20)) == [ev(1)]  # the reader holds events 1-4's segment open
    real_fetch = disk.fetch
    raced: list[bool] = []

    def fetch_after_a_drop(*args: Any) -> Any:
        if not raced:  # the writer runs between the read's plan and its disk read
            raced.append(True)
            log.append(events(13, 4))
        return real_fetch(*args)

    monkeypatch.setattr(disk, "fetch", fetch_after_a_drop)
    got = seqs(log.read(3, 1 << 20))
    stats = log.stats()
    # Event 1 was handed out: delivery holds it and sends it, so it is not lost.
    assert raced and (stats.dropped_oldest, stats.dropped_in_flight) == (3, 1)
    assert got == evs([5, 6, 7])
    assert seqs(drain(log)) == evs(range(8, 17))


def test_sync_fsyncs_every_segment_written_and_the_directory(
    opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 5))
    log.sync()
    synced: list[int] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    log.append(batch(6, 100))  # grows the active segment and creates several more
    files = segment_files(tmp_path)
    assert len(files) > 3
    log.sync()
    assert set(synced) >= {f.stat().st_ino for f in files} | {tmp_path.stat().st_ino}
    synced.clear()
    log.sync()  # nothing written since: nothing to do
    assert synced == []
    log.ack(50)  # deleting segments dirties the directory again
    log.sync()
    assert synced == [tmp_path.stat().st_ino]


# --- full disk --------------------------------------------------------------------------


def enospc_after(monkeypatch: pytest.MonkeyPatch, allowed: int) -> list[int]:
    """Make os.pwrite write ``allowed`` bytes in total, part of a call, then fail."""
    real = os.pwrite
    left = [allowed]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(memoryview(data)[: left[0]]), offset)
        left[0] -= n
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)
    return left


@pytest.mark.parametrize("allowed", [0, 1, 500, 2500, 5000])
def test_enospc_part_way_leaves_the_log_as_before(
    opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: int
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 30))
    assert seqs(log.read(10, 1 << 20)) == list(range(1, 11))
    before_stats = log.stats()
    before_files = {f.name: f.read_bytes() for f in segment_files(tmp_path)}
    with monkeypatch.context() as mp:
        enospc_after(mp, allowed)
        with pytest.raises(OSError) as info:
            log.append(batch(31, 40))  # spans segments: the failure hits several places
    assert info.value.errno == errno.ENOSPC
    assert log.stats() == before_stats
    assert log.last_seq == 30
    assert {f.name: f.read_bytes() for f in segment_files(tmp_path)} == before_files
    assert seqs(drain(log)) == list(range(11, 31))
    log.append(batch(31, 40))  # the retry succeeds
    log.sync()
    assert seqs(drain(log)) == list(range(31, 71))
    log = reopen(opened, log)
    assert log.stats().corrupt_skipped == 0
    assert seqs(drain(log)) == list(range(1, 71))


def test_enospc_when_truncating_back_also_fails(
    opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 3))
    size = segment_files(tmp_path)[-1].stat().st_size
    with monkeypatch.context() as mp:
        enospc_after(mp, 150)

        def ftruncate(fd: int, length: int) -> None:
            raise OSError(errno.EIO, "truncate failed")

        mp.setattr(os, "ftruncate", ftruncate)
        with pytest.raises(OSError):
            log.append(batch(4, 3))
    assert segment_files(tmp_path)[-1].stat().st_size == size + 150  # junk left behind
    assert seqs(drain(log)) == [1, 2, 3]  # ...but never read
    log.append([rec(4, 10)])  # cut back first, then written where it belongs
    log = reopen(opened, log)
    assert log.stats().corrupt_skipped == 0
    assert drain(log) == [*batch(1, 3), rec(4, 10)]


def test_fsync_failure_is_raised(
    opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = wal(opened, tmp_path)
    log.append(batch(1, 3))

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    with monkeypatch.context() as mp:
        mp.setattr(os, "fdatasync", fdatasync)
        with pytest.raises(OSError):
            log.sync()
    log.sync()  # still to do: retried, not forgotten
    assert seqs(drain(log)) == [1, 2, 3]


def test_after_a_failed_fsync_the_unsynced_records_are_written_again(
    opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linux after a failed writeback: the dirty pages may be dropped (or kept clean,
    # never written) and the next fdatasync succeeds ("fsyncgate"). Simulated here: each
    # segment's first fdatasync loses what was written to it since its last good one, and
    # fails; sync is retried until it succeeds, as the log writer does.
    log = wal(opened, tmp_path, segment_bytes=2048)
    log.append(batch(1, 4))
    log.sync()
    synced = {path.name: path.stat().st_size for path in segment_files(tmp_path)}
    log.append(batch(5, 30))  # the active segment grows and new ones are created
    real, failed = os.fdatasync, set()

    def fdatasync(fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.endswith(".seg") and name not in failed:
            failed.add(name)
            os.ftruncate(fd, synced.get(name, 0))  # the kernel lost the unsynced pages
            raise OSError(errno.EIO, "I/O error")
        real(fd)
        synced[name] = os.fstat(fd).st_size

    with monkeypatch.context() as mp:
        mp.setattr(os, "fdatasync", fdatasync)
        for _ in range(20):
            try:
                log.sync()
                break
            except OSError:
                continue
    assert len(failed) == len(segment_files(tmp_path)) > 2  # old, rolled and active
    log = reopen(opened, log)  # what recovery finds on disk
    assert log.corrupt_skipped == 0
    assert seqs(drain(log)) == list(range(1, 35))


# --- when_full with exact figures -------------------------------------------------------

F = frame_size(rec(1))  # every record below has this frame size (seqs are a fixed u64)
SEG4 = HEADER + 4 * F  # a segment holds exactly four records
MAX3 = 3 * SEG4  # the log holds exactly three full segments


def fill(opened: Opened, d: Path, when_full: str, n: int = 12, step: int = 1) -> WriteAheadLog:
    log = wal(opened, d, max_bytes=MAX3, segment_bytes=SEG4, when_full=when_full)
    for s in range(1, n + 1):
        log.append([rec(s * step)])
    assert log.stats().bytes_used == (n // 4) * SEG4 + (HEADER + (n % 4) * F if n % 4 else 0)
    return log


def test_exact_drop_oldest(opened: Opened, tmp_path: Path) -> None:
    log = fill(opened, tmp_path, "drop_oldest", step=EVENT_SEQ_STEP)
    assert seqs(log.read(2, 1 << 20)) == evs([1, 2])
    log.ack(ev(1))
    log.append(events(13, 1))  # needs a new segment: the oldest (events 1-4, 3 unacked) goes
    stats = log.stats()
    # Of the three unacked, event 2 was read (in flight, still delivered): two are lost.
    assert (stats.dropped_oldest, stats.dropped_in_flight, stats.records_pending) == (2, 1, 9)
    assert [int(f.stem) for f in segment_files(tmp_path)] == evs([5, 9, 13])
    assert seqs(drain(log)) == evs(range(5, 14))


def test_exact_drop_oldest_including_the_active_segment(opened: Opened, tmp_path: Path) -> None:
    log = fill(opened, tmp_path, "drop_oldest", step=EVENT_SEQ_STEP)
    log.append(events(13, 12))  # three segments' worth: everything older goes
    stats = log.stats()
    assert (stats.dropped_oldest, stats.records_pending) == (12, 12)
    assert seqs(drain(log)) == evs(range(13, 25))
    log.append(events(25, 13))  # bigger than the whole log: keep the newest 12
    stats = log.stats()
    # 13-24 were read (drain), so they are in flight, not lost; 25 never got in.
    assert (stats.dropped_oldest, stats.dropped_in_flight, stats.records_pending) == (
        12 + 1, 12, 12)
    log.rewind()
    assert seqs(drain(log)) == evs(range(26, 38))


def test_exact_drop_newest(opened: Opened, tmp_path: Path) -> None:
    log = fill(opened, tmp_path, "drop_newest", n=10, step=EVENT_SEQ_STEP)
    log.append(events(11, 5))  # events 11 and 12 fit in the third segment; 13 needs a fourth
    stats = log.stats()
    assert (stats.dropped_newest, stats.records_pending, stats.dropped_oldest) == (3, 12, 0)
    assert log.last_seq == ev(12)
    assert seqs(drain(log)) == evs(range(1, 13))


def test_exact_block(opened: Opened, tmp_path: Path) -> None:
    log = fill(opened, tmp_path, "block")
    with pytest.raises(LogFull):
        log.append([rec(13)])
    log.ack(3)  # first segment not fully acked: still full
    with pytest.raises(LogFull):
        log.append([rec(13)])
    log.ack(4)
    log.append(batch(13, 4))
    assert [int(f.stem) for f in segment_files(tmp_path)] == [5, 9, 13]
    with pytest.raises(LogFull):
        log.append([rec(17)])


def test_block_counts_a_fully_acked_active_segment_as_free(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path, max_bytes=2 * SEG4, segment_bytes=SEG4, when_full="block")
    log.append(batch(1, 4))
    log.ack(4)  # one full, fully acked, active segment
    log.append(batch(5, 8))  # needs both segments' worth: fits once the first is trimmed
    assert [int(f.stem) for f in segment_files(tmp_path)] == [5, 9]
    assert log.stats().bytes_used == 2 * SEG4


def test_segment_headers_count_against_max_bytes(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path, max_bytes=MAX3 + F, segment_bytes=SEG4, when_full="block")
    for s in range(1, 13):
        log.append([rec(s)])
    assert log.stats().bytes_used == MAX3  # F bytes left, but a new segment needs HEADER + F
    with pytest.raises(LogFull):
        log.append([rec(13)])


def test_full_is_bytes_used_plus_headroom(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path, max_bytes=MAX, when_full="block")
    room = full_headroom(MAX)
    assert room == MAX // 16
    seq = 0
    while log.stats().bytes_used + room <= MAX:
        assert not log.full
        seq += 1
        log.append([rec(seq)])
    assert log.full


# --- crash accounting (in process) ------------------------------------------------------


def test_lost_on_crash_counts_accepted_but_unwritten(
    opened: Opened, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = wal(opened, tmp_path)
    log.append(events(1, 10))
    for e in range(1, 16):
        log.note_accepted(ev(e))
    assert log.next_seq == ev(16)
    with caplog.at_level(logging.WARNING, logger="inference_sidecar.wal"):
        log = reopen(opened, log)
    assert log.stats().lost_on_crash == 5  # events 11-15
    assert (log.last_seq, log.next_seq) == (ev(10), ev(16))
    warned = [r for r in caplog.records if "never written" in r.getMessage()]
    assert warned[0].fields["lost_on_crash"] == 5  # type: ignore[attr-defined]
    log = reopen(opened, log)
    assert log.stats().lost_on_crash == 0  # counted once
    assert log.next_seq == ev(16)


def test_final_records_in_an_event_block_are_not_counted_as_events(
    opened: Opened, tmp_path: Path
) -> None:
    # Final records (pipeline/ahead.py) take seqs inside the block of the last event
    # written before them: they complete events, they are not events of their own.
    log = wal(opened, tmp_path)
    log.append(events(1, 3))
    log.append([rec(ev(3) + 1), rec(ev(3) + 2)])  # two finals after event 3
    for e in range(1, 6):
        log.note_accepted(ev(e))
    log = reopen(opened, log)
    assert log.stats().lost_on_crash == 2  # events 4 and 5, not the finals
    assert (log.last_seq, log.next_seq) == (ev(3) + 2, ev(6))


def test_records_dropped_by_policy_are_not_lost_on_crash(opened: Opened, tmp_path: Path) -> None:
    log = fill(opened, tmp_path, "drop_newest", step=EVENT_SEQ_STEP)
    for e in range(1, 20):
        log.note_accepted(ev(e))
    log.append(events(13, 7))
    assert log.stats().dropped_newest == 7
    log = reopen(opened, log)
    assert log.stats().lost_on_crash == 0
    assert log.next_seq == ev(20)


def test_hwm_is_one_store_into_a_mapped_file(
    opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = wal(opened, tmp_path)

    def no_io(*_args: object) -> None:
        raise AssertionError("note_accepted made a system call (it runs per request)")

    for name in ("write", "pwrite", "fsync", "fdatasync", "lseek", "open"):
        monkeypatch.setattr(os, name, no_io)
    for s in range(200_000, 200_100):
        log.note_accepted(s)
    monkeypatch.undo()
    raw = (tmp_path / "hwm").read_bytes()  # visible through the page cache, no flush
    assert disk.HWM.unpack(raw)[0] == 200_099


def test_a_format_1_segment_is_read_and_its_drops_count_no_notice(
    opened: Opened, tmp_path: Path
) -> None:
    # Written before notices took odd seqs: an ahead record at B, its final at B + 1 (odd).
    old = [r for n in range(1, 21) for r in (rec(ev(n), 500), rec(ev(n) + 1, 500))]
    (tmp_path / f"{old[0].seq:020d}.seg").write_bytes(
        SEGMENT_HEADER_V1 + b"".join(encode(r, 1.0) for r in old))
    log = wal(opened, tmp_path, max_bytes=16 * 1024, when_full="drop_oldest")
    assert seqs(drain(log)) == seqs(old)  # read as ever
    log.rewind()
    log.append(events(21, 30, size=500))  # drop_oldest deletes the old segment, unread
    stats = log.stats()
    assert stats.dropped_oldest + stats.dropped_in_flight > 0
    assert stats.notices_dropped == 0  # its odd seqs are finals, not alerts
    assert stats.corrupt_skipped == 0  # an older format, not damage


def test_a_new_segment_is_format_2(opened: Opened, tmp_path: Path) -> None:
    log = wal(opened, tmp_path)
    log.append(events(1, 2))
    (path,) = segment_files(tmp_path)
    assert path.read_bytes().startswith(SEGMENT_HEADER) and SEGMENT_HEADER != SEGMENT_HEADER_V1
