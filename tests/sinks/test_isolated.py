"""``ProcessSink`` (``sidecar/sinks/isolated.py``) with real child processes.

The contract half (order, close, failed writes) also runs in ``test_contract.py``; here:
the child's life cycle (start on first write, restart after it dies, hangs or answers
badly), its isolation from the sidecar's signals, its exit when the parent goes, and the
frame functions.

Helper sinks a child must build (``StallingSink``, ``RaisingSink``) live in this module:
the factory is pickled by reference, as ``tests.sinks.test_isolated.StallingSink`` (the
name pytest's importlib mode gives this module), so the child imports this module. It
can when the repository root is on its ``sys.path`` (for ``tests.sinks``) and so is
``tests/`` (for ``factories``, imported above): the ``child_imports_tests`` fixture puts
both on ``PYTHONPATH`` before the child starts, which it inherits.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from factories import make_records

from sidecar.events.record import Record
from sidecar.sinks.base import Sink, SinkError
from sidecar.sinks.isolated import FRAME_HEADER, FRAME_MAX, ProcessSink, read_frame, write_frame
from sidecar.sinks.jsonl import JsonLinesSink

ROOT = Path(__file__).resolve().parents[2]
EXIT_WAIT_S = 5.0


# --- helper sinks, built in the child ---------------------------------------------------


class StallingSink(JsonLinesSink):
    """The file sink, except that a batch holding record ``stall_seq`` sleeps ``stall_s``
    first (a hung producer)."""

    name = "stalling"

    def __init__(self, path: str, stall_seq: int, stall_s: float) -> None:
        super().__init__(path)
        self.stall_seq = stall_seq
        self.stall_s = stall_s

    def write(self, records: Sequence[Record]) -> None:
        if any(r.seq == self.stall_seq for r in records):
            time.sleep(self.stall_s)
        super().write(records)


class RaisingSink(JsonLinesSink):
    """The file sink, except that a batch holding record ``boom_seq`` raises a bug."""

    name = "raising"

    def __init__(self, path: str, boom_seq: int) -> None:
        super().__init__(path)
        self.boom_seq = boom_seq

    def write(self, records: Sequence[Record]) -> None:
        if any(r.seq == self.boom_seq for r in records):
            raise RuntimeError("a bug in the sink")
        super().write(records)


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def child_imports_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children started from now on can import this module (see the module docstring)."""
    paths = [str(ROOT), str(ROOT / "tests")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


@pytest.fixture
def make_sink() -> Iterator[Callable[..., ProcessSink]]:
    """Builds ProcessSinks; closes each (stopping its child) after the test."""
    made: list[ProcessSink] = []

    def build(factory: Callable[[], Sink], name: str = "jsonl",
              reply_timeout_s: float = 10.0) -> ProcessSink:
        sink = ProcessSink(factory, name=name, reply_timeout_s=reply_timeout_s)
        made.append(sink)
        return sink

    yield build
    for sink in made:
        sink.close()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def values(records: Sequence[Record]) -> list[bytes]:
    return [r.value for r in records]


def child(sink: ProcessSink) -> subprocess.Popen[bytes]:
    proc = sink._proc
    assert proc is not None, "no child running"
    return proc


def gone(pid: int) -> bool:
    """The process no longer runs (reaped, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, timeout: float = EXIT_WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.01)
    return gone(pid)


# --- life cycle ---------------------------------------------------------------------------


def test_batches_land_in_order_and_close_stops_the_child(
    tmp_path: Path, make_sink: Callable[..., ProcessSink]
) -> None:
    path = tmp_path / "events.jsonl"
    sink = make_sink(functools.partial(JsonLinesSink, str(path)))
    assert sink.pid is None  # started on the first write, not before
    first, second, third = (make_records(0, 3), make_records(3, 50), make_records(53, 1))
    sink.write(first)
    pid = sink.pid
    assert pid is not None and pid != os.getpid()
    sink.write(second)
    sink.write(third)
    assert sink.pid == pid  # one child for all of them
    assert lines(path) == values(first + second + third)
    assert sink.healthy is True

    proc = child(sink)
    sink.close()
    assert proc.poll() == 0  # stopped by "close", not killed
    assert sink.pid is None
    sink.close()  # twice is fine

    later = make_records(54, 2)
    sink.write(later)
    assert sink.pid is not None and sink.pid != pid
    assert lines(path) == values(first + second + third + later)
    assert sink.healthy is True


def test_a_sink_that_cannot_start_fails_the_write_with_its_reason(
    tmp_path: Path, make_sink: Callable[..., ProcessSink]
) -> None:
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "events.jsonl"  # its parent is a regular file
    sink = make_sink(functools.partial(JsonLinesSink, str(path)))
    with pytest.raises(SinkError) as info:
        sink.write(make_records(0, 1))
    message = str(info.value)
    assert message.startswith("jsonl worker process: ")
    assert f"events file {path}: cannot open it" in message
    assert sink.healthy is False
    assert sink.pid is None  # the child was stopped, not left behind
    with pytest.raises(SinkError, match="cannot open it"):
        sink.write(make_records(0, 1))  # a retry tries again, and fails the same way


def test_a_killed_child_fails_one_write_then_a_new_child_takes_over(
    tmp_path: Path, make_sink: Callable[..., ProcessSink]
) -> None:
    path = tmp_path / "events.jsonl"
    sink = make_sink(functools.partial(JsonLinesSink, str(path)))
    before = make_records(0, 2)
    sink.write(before)
    proc = child(sink)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(EXIT_WAIT_S)

    batch = make_records(2, 3)
    with pytest.raises(SinkError) as info:
        sink.write(batch)
    assert str(info.value) == "jsonl worker process exited (signal 9); restarting it"
    assert sink.healthy is False
    assert sink.pid is None

    sink.write(batch)  # delivery's retry
    assert sink.pid is not None and sink.pid != proc.pid
    assert sink.healthy is True
    assert lines(path) == values(before + batch)


@pytest.mark.usefixtures("child_imports_tests")
def test_a_hung_child_is_killed_after_the_reply_timeout_and_replaced(
    tmp_path: Path, make_sink: Callable[..., ProcessSink]
) -> None:
    path = tmp_path / "events.jsonl"
    timeout_s = 0.5
    sink = make_sink(functools.partial(StallingSink, str(path), stall_seq=3, stall_s=60.0),
                     name="stalling", reply_timeout_s=timeout_s)
    before = make_records(0, 2)  # seqs 1, 2
    sink.write(before)
    proc = child(sink)

    started = time.monotonic()
    with pytest.raises(SinkError) as info:
        sink.write(make_records(2, 1))  # seq 3: stalls
    elapsed = time.monotonic() - started
    assert str(info.value) == "stalling worker process no answer within 0.5 s; restarting it"
    assert timeout_s <= elapsed < timeout_s + 3.0
    assert proc.returncode == -signal.SIGKILL  # killed and reaped, not left sleeping
    assert sink.healthy is False

    after = make_records(3, 2)
    sink.write(after)
    assert sink.pid is not None and sink.pid != proc.pid
    assert sink.healthy is True
    assert lines(path) == values(before + after)


def test_a_child_that_stopped_reading_fails_a_large_write_after_the_timeout(
    tmp_path: Path, make_sink: Callable[..., ProcessSink]
) -> None:
    # SIGSTOP, a frozen cgroup: a batch over the pipe's 64 KiB buffer never gets written;
    # the write must fail by the reply timeout (not hang, and hang shutdown with it)
    path = tmp_path / "events.jsonl"
    sink = make_sink(functools.partial(JsonLinesSink, str(path)), reply_timeout_s=0.5)
    sink.write(make_records(0, 1))
    proc = child(sink)
    os.kill(proc.pid, signal.SIGSTOP)
    big = [Record(r.seq, r.key, r.value + b" " * 4000, r.headers) for r in make_records(1, 100)]
    started = time.monotonic()
    with pytest.raises(SinkError, match=r"no answer within 0\.5 s"):
        sink.write(big)
    assert time.monotonic() - started < 0.5 + 3.0
    assert proc.returncode == -signal.SIGKILL and sink.healthy is False
    sink.write(big)  # a new child takes the batch
    assert sink.pid != proc.pid and len(lines(path)) == 101


@pytest.mark.usefixtures("child_imports_tests")
def test_an_unexpected_exception_in_the_sink_is_a_sink_error_and_the_child_stays(
    tmp_path: Path, make_sink: Callable[..., ProcessSink]
) -> None:
    path = tmp_path / "events.jsonl"
    sink = make_sink(functools.partial(RaisingSink, str(path), boom_seq=2), name="raising")
    first = make_records(0, 1)
    sink.write(first)
    pid = sink.pid
    with pytest.raises(SinkError) as info:
        sink.write(make_records(1, 1))  # seq 2
    assert str(info.value) == "raising: unexpected RuntimeError"
    assert sink.healthy is False
    assert sink.pid == pid  # an answer came: the child is fine
    after = make_records(2, 2)
    sink.write(after)
    assert sink.pid == pid
    assert sink.healthy is True
    assert lines(path) == values(first + after)


# --- isolation from the sidecar ---------------------------------------------------------


def test_the_child_has_its_own_session_and_ignores_sigint_and_sigterm(
    tmp_path: Path, make_sink: Callable[..., ProcessSink]
) -> None:
    path = tmp_path / "events.jsonl"
    sink = make_sink(functools.partial(JsonLinesSink, str(path)))
    sink.write(make_records(0, 1))
    pid = child(sink).pid
    assert os.getsid(pid) == pid != os.getsid(0)
    assert os.getpgid(pid) == pid != os.getpgid(0)  # a Ctrl-C to our group misses it

    os.killpg(os.getpgid(pid), signal.SIGINT)  # its own group: only the child
    os.kill(pid, signal.SIGTERM)
    sink.write(make_records(1, 1))  # it handles pending signals before it answers
    assert sink.pid == pid
    assert child(sink).poll() is None
    assert len(lines(path)) == 2


def test_the_child_exits_when_the_parent_closes_the_pipe(
    tmp_path: Path, make_sink: Callable[..., ProcessSink]
) -> None:
    path = tmp_path / "events.jsonl"
    sink = make_sink(functools.partial(JsonLinesSink, str(path)))
    batch = make_records(0, 3)
    sink.write(batch)
    proc = child(sink)
    assert proc.stdin is not None
    proc.stdin.close()  # what the kernel does when the parent dies; no "close" sent
    assert proc.wait(EXIT_WAIT_S) == 0
    assert lines(path) == values(batch)


PARENT_SCRIPT = textwrap.dedent("""
    import functools, os, signal, sys
    from sidecar.events.record import Record
    from sidecar.sinks.isolated import ProcessSink
    from sidecar.sinks.jsonl import JsonLinesSink

    sink = ProcessSink(functools.partial(JsonLinesSink, sys.argv[1]), name="jsonl",
                       reply_timeout_s=10)
    sink.write([Record(1, b"k", b'{"n": 1}')])
    print(sink.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_the_child_exits_when_the_parent_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    parent = subprocess.run(
        [sys.executable, "-c", PARENT_SCRIPT, str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    pid = int(parent.stdout)
    assert wait_gone(pid), f"worker {pid} outlived its parent"
    assert lines(path) == [b'{"n": 1}']


# --- frames -------------------------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):  # the test closed it
            os.close(fd)


def test_frames_round_trip(pipe: tuple[int, int]) -> None:
    r, w = pipe
    records = make_records(0, 3)
    for message in [("write", records), ("ok",), ("error", "why \u00e9"), ("close",)]:
        write_frame(w, message)
        assert read_frame(r, time.monotonic() + 5) == message
    write_frame(w, ("ok",))
    assert read_frame(r) == ("ok",)  # no deadline: a plain blocking read


def test_a_frame_larger_than_the_pipe_buffer_round_trips(pipe: tuple[int, int]) -> None:
    r, w = pipe
    message = ("write", make_records(0, 2000))  # ~1 MiB: many partial writes and reads
    writer = threading.Thread(target=write_frame, args=(w, message))
    writer.start()
    try:
        assert read_frame(r, time.monotonic() + 10) == message
    finally:
        writer.join(10)


def test_frames_with_deadlines_work_on_descriptors_past_1024() -> None:
    # select() refuses them; a sidecar holding a thousand upstream sockets has them
    import resource

    from sidecar.workers.child import write_raw

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        pytest.skip("the descriptor limit is below 1600")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1600), hard))
    r, w = os.pipe()
    high_r, high_w = os.dup2(r, 1500), os.dup2(w, 1501)
    os.close(r)
    os.close(w)
    try:
        os.set_blocking(high_w, False)
        write_raw(high_w, pickle.dumps(("ok", 1)), time.monotonic() + 5)
        assert read_frame(high_r, time.monotonic() + 5) == ("ok", 1)
    finally:
        os.close(high_r)
        os.close(high_w)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_read_frame_times_out_on_an_empty_pipe(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        read_frame(r, started + 0.1)
    assert 0.1 <= time.monotonic() - started < 2.0


def test_read_frame_times_out_on_half_a_frame(pipe: tuple[int, int]) -> None:
    r, w = pipe
    data = pickle.dumps(("ok",))
    os.write(w, FRAME_HEADER.pack(len(data)) + data[:-1])
    with pytest.raises(TimeoutError):
        read_frame(r, time.monotonic() + 0.1)


def test_read_frame_past_its_deadline_does_not_read(pipe: tuple[int, int]) -> None:
    r, w = pipe
    write_frame(w, ("ok",))
    with pytest.raises(TimeoutError):
        read_frame(r, time.monotonic() - 1)


def test_read_frame_raises_eof_error_when_the_writer_closed(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.close(w)
    with pytest.raises(EOFError):
        read_frame(r, time.monotonic() + 5)
    with pytest.raises(EOFError):
        read_frame(r)


def test_read_frame_raises_eof_error_in_the_middle_of_a_frame(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, FRAME_HEADER.pack(100) + b"x" * 10)
    os.close(w)
    with pytest.raises(EOFError):
        read_frame(r, time.monotonic() + 5)


def test_read_frame_refuses_a_frame_over_the_maximum(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, FRAME_HEADER.pack(FRAME_MAX + 1))
    with pytest.raises(ValueError, match=f"frame of {FRAME_MAX + 1} bytes"):
        read_frame(r, time.monotonic() + 5)


# --- found while writing these ----------------------------------------------------------


def _unpicklable_factory() -> Any:
    return lambda: JsonLinesSink(os.devnull)  # a local function: pickle refuses it


def test_an_unpicklable_factory_is_a_sink_error(
    make_sink: Callable[..., ProcessSink]
) -> None:
    sink = make_sink(_unpicklable_factory())
    try:
        sink.write(make_records(0, 1))
    except SinkError:
        pass
    except Exception as exc:
        raise AssertionError(f"write raised {type(exc).__name__}, not SinkError") from exc
    else:
        raise AssertionError("write succeeded")
    assert sink.pid is None  # no half-started child left behind
    assert sink.healthy is False


def test_a_service_that_cannot_start_is_reported_in_one_json_line(
    capfd: pytest.CaptureFixture[str]
) -> None:
    from sidecar.workers.child import Child, WorkerError

    child = Child("broken", functools.partial(int, "not a number"))  # raises ValueError
    with pytest.raises(WorkerError, match=r"cannot start its service \(ValueError\)"):
        child.start()
    lines_out = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert lines_out and all(line.startswith("{") for line in lines_out), lines_out
    assert "not a number" not in "".join(lines_out)  # the error's type, never its text
