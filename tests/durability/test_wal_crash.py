"""A real crash: a child process writes the log and is SIGKILLed; the parent reopens it.

The child prints a seq only after the operation it reports (append, sync or ack) returned,
so anything it printed must be on disk after the kill: SIGKILL loses nothing that reached
the page cache. Every wait is bounded; the child is killed in ``finally`` whatever happens.

Except in the ack run, the child numbers its records as the EventQueue numbers events: one
record per event, at the first seq of the event's block (``sidecar/events/record.py``), so
``lost_on_crash`` (counted in events) counts records here.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.durability import WriteAheadLog
from sidecar.events.record import EVENT_SEQ_STEP, Record, event_number

WAIT_S = 30.0
Procs = list[subprocess.Popen[bytes]]

CHILD = r"""
import sys, time
from sidecar.durability import WriteAheadLog
from sidecar.events.record import EVENT_SEQ_STEP, Record, event_number

directory, mode = sys.argv[1], sys.argv[2]
log = WriteAheadLog(directory, 1 << 30, 64 * 1024, "block")

def batch(first, n):  # plain seqs first .. first + n - 1
    return [Record(seq=s, key=b"k", value=b"v%d:" % s + b"x" * 200)
            for s in range(first, first + n)]

def events(first, n):  # one record per event first .. first + n - 1, at its block's seq
    return [Record(seq=e * EVENT_SEQ_STEP, key=b"k",
                   value=b"v%d:" % (e * EVENT_SEQ_STEP) + b"x" * 200)
            for e in range(first, first + n)]

ev = event_number(log.next_seq) - 1  # the last event numbered so far
if mode in ("sync", "nosync"):
    n = 10 if mode == "sync" else 400
    for _ in range(20_000):  # bounded: the parent kills long before
        # the producer accepted them before the writer wrote
        log.note_accepted((ev + n) * EVENT_SEQ_STEP)
        log.append(events(ev + 1, n))
        ev += n
        if mode == "sync":
            log.sync()
        print(ev * EVENT_SEQ_STEP, flush=True)
elif mode == "accept-ahead":
    for _ in range(5):
        log.append(events(ev + 1, 10))
        ev += 10
    log.sync()
    log.note_accepted((ev + 7) * EVENT_SEQ_STEP)  # seven events accepted, never written
    print(ev * EVENT_SEQ_STEP, flush=True)
    time.sleep(60)
elif mode == "torn":
    import os, signal
    for _ in range(3):
        log.append(events(ev + 1, 10))
        ev += 10
    log.sync()
    print(ev * EVENT_SEQ_STEP, flush=True)
    real_pwrite = os.pwrite
    def dying_pwrite(fd, data, offset):  # half a batch and a bit reaches the file, then death
        real_pwrite(fd, bytes(memoryview(data)[: len(data) // 2 + 50]), offset)
        os.kill(os.getpid(), signal.SIGKILL)
    os.pwrite = dying_pwrite
    log.note_accepted((ev + 10) * EVENT_SEQ_STEP)
    log.append(events(ev + 1, 10))
elif mode == "ack":
    log.append(batch(1, 2000))
    log.sync()
    print(0, flush=True)
    for _ in range(2000):
        got = log.read(10, 1 << 20)
        if not got:
            break
        log.ack(got[-1].seq)
        print(got[-1].seq, flush=True)
        time.sleep(0.005)  # 200 acks take over a second: the parent kills well before
    time.sleep(60)
"""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Procs]:
    procs: Procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)
        if proc.stdout is not None:
            proc.stdout.close()


def start(procs: Procs, directory: Path, mode: str) -> subprocess.Popen[bytes]:
    with open(directory.parent / f"{mode}.stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), mode],
            stdout=subprocess.PIPE, stderr=err,
        )
    procs.append(proc)
    return proc


def wait_for_lines(proc: subprocess.Popen[bytes], count: int) -> list[int]:
    """Block (bounded) until the child has printed ``count`` lines."""
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), b""
    lines: list[int] = []
    deadline = time.monotonic() + WAIT_S
    while len(lines) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"child printed {len(lines)} lines in {WAIT_S}s"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        assert chunk, f"child exited early with {proc.wait(WAIT_S)}"
        buf += chunk
        *complete, buf = buf.split(b"\n")
        lines += [int(x) for x in complete]
    return lines


def kill(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL the child; every line it printed before dying."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(WAIT_S)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout is not None
    return [int(x) for x in proc.stdout.read().split()]


def ev(n: int) -> int:
    """The seq of event ``n``'s (only) record in the child's numbering."""
    return n * EVENT_SEQ_STEP


def evs(numbers: range) -> list[int]:
    return [ev(e) for e in numbers]


def read_all(log: WriteAheadLog) -> list[Record]:
    out: list[Record] = []
    for _ in range(100_000):
        got = log.read(5000, 1 << 30)
        if not got:
            return out
        out += got
    raise AssertionError("read never ran dry")


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "batch"), [("sync", 10), ("nosync", 400)])
@pytest.mark.parametrize("round_", range(3))
def test_sigkill_loses_nothing_that_was_reported_written(
    spawn: Procs, tmp_path: Path, mode: str, batch: int, round_: int
) -> None:
    directory = tmp_path / "wal"
    proc = start(spawn, directory, mode)
    printed = wait_for_lines(proc, 20 + 15 * round_)
    time.sleep(random.uniform(0, 0.02))  # land anywhere in a write
    printed += kill(proc)
    log = WriteAheadLog(str(directory), 1 << 30, 64 * 1024, "block")
    try:
        got = read_all(log)
        stats = log.stats()
        last_event = event_number(log.last_seq)
        assert log.last_seq == ev(last_event)
        # gapless (one record per event block), no dupes
        assert [r.seq for r in got] == evs(range(1, last_event + 1))
        assert log.last_seq >= printed[-1]
        assert all(r.value.startswith(b"v%d:" % r.seq) for r in got)
        assert stats.corrupt_skipped <= 1  # at most the one record torn by the kill
        assert 0 <= stats.lost_on_crash <= batch
        assert log.next_seq == ev(last_event + stats.lost_on_crash + 1)
        log.append([Record(seq=log.next_seq, key=b"k", value=b"after")])  # carries on
    finally:
        log.close()


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_write(spawn: Procs, tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    proc = start(spawn, directory, "torn")
    assert wait_for_lines(proc, 1) == [ev(30)]
    assert proc.wait(WAIT_S) == -signal.SIGKILL  # it killed itself inside pwrite
    log = WriteAheadLog(str(directory), 1 << 30, 64 * 1024, "block")
    try:
        stats = log.stats()
        # Events 31-35 made it whole, 36 was cut in half, 37-40 never reached the file.
        assert (log.last_seq, stats.corrupt_skipped, stats.lost_on_crash) == (ev(35), 1, 5)
        assert [r.seq for r in read_all(log)] == evs(range(1, 36))
        assert log.next_seq == ev(41)
        log.append([Record(seq=ev(41), key=b"k", value=b"after")])
    finally:
        log.close()
    log = WriteAheadLog(str(directory), 1 << 30, 64 * 1024, "block")
    try:
        assert log.stats().corrupt_skipped == 0  # the torn bytes were cut off, once
        assert [r.seq for r in read_all(log)] == [*evs(range(1, 36)), ev(41)]
    finally:
        log.close()


@pytest.mark.slow
def test_sigkill_counts_accepted_but_unwritten_records(
    spawn: Procs, tmp_path: Path
) -> None:
    directory = tmp_path / "wal"
    proc = start(spawn, directory, "accept-ahead")
    assert wait_for_lines(proc, 1) == [ev(50)]
    kill(proc)
    log = WriteAheadLog(str(directory), 1 << 30, 64 * 1024, "block")
    try:
        assert (log.last_seq, log.stats().lost_on_crash, log.next_seq) == (ev(50), 7, ev(58))
        assert len(read_all(log)) == 50
    finally:
        log.close()
    log = WriteAheadLog(str(directory), 1 << 30, 64 * 1024, "block")
    try:
        assert (log.stats().lost_on_crash, log.next_seq) == (0, ev(58))  # reported once
    finally:
        log.close()


@pytest.mark.slow
def test_sigkill_during_delivery_resumes_after_the_last_ack(
    spawn: Procs, tmp_path: Path
) -> None:
    directory = tmp_path / "wal"
    proc = start(spawn, directory, "ack")
    printed = wait_for_lines(proc, 30)
    printed += kill(proc)
    acked = printed[-1]
    assert 0 < acked <= 2000
    log = WriteAheadLog(str(directory), 1 << 30, 64 * 1024, "block")
    try:
        seqs = [r.seq for r in read_all(log)]
        first = seqs[0] if seqs else 2001
        assert first > acked  # the cursor write precedes the print: nothing redelivered
        assert first <= acked + 11  # ...and at most one unreported ack of 10 went unseen
        assert seqs == list(range(first, 2001))
        assert log.stats().records_pending == len(seqs)
    finally:
        log.close()
