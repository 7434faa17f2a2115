"""``Child``: one worker process, started on demand, called with request/reply messages.

Some work must not run on the sidecar's event loop nor under its GIL: kafka-python costs
about 100 µs of CPU per event in the producing process, presidio several hundred µs per
masked payload. A child process puts that work on another core. The protocol is
length-prefixed pickles over the child's stdin/stdout (both ends are our own code):

- parent → child: ``("init", log_level, factory)`` once, then ``("call", message)`` or
  ``("close",)``; ``factory()`` builds the child's ``Service`` (see ``main.py``);
- child → parent: ``("ok", result)`` or ``("error", reason)``.

``call`` blocks (run it in a thread, never on the loop). A child that dies, does not answer
within the call's timeout or breaks the protocol is stopped and ``WorkerError`` raised; the
next call starts a fresh one. The child is not in the sidecar's process group and ignores
SIGINT and SIGTERM: the sidecar stops it (``close``) after draining; if the sidecar dies,
the child reads EOF on stdin and exits.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from sidecar.logs import get_logger

log = get_logger("worker")

FRAME_HEADER: Final = struct.Struct("!I")
FRAME_MAX: Final = 64 * 1024**2  # a message is at most a few MiB; more is corruption
READY_TIMEOUT_S: Final = 60.0  # the child imports and builds its service before answering
CLOSE_GRACE_S: Final = 10.0
EXIT_WAIT_S: Final = 1.0


class WorkerError(Exception):
    """The call did not complete; the message says why, for the operator."""


class WorkerRefused(WorkerError):
    """The service answered that it could not do this call (or the message was too
    large to send): the child and its state are intact."""


class ServiceError(Exception):
    """Raised by a service in the child: it could not do this call (or could not start);
    the message says why, for the operator. Defined here, not in ``main.py``: the child
    runs that module as ``__main__``, where a class of its own would be a different one."""


def _ready(fd: int, events: int, wait_s: float) -> bool:
    """Whether ``fd`` is ready within ``wait_s``: poll, not select, which refuses
    descriptors from 1024 up (a sidecar holding a thousand upstream sockets has them)."""
    poller = select.poll()
    poller.register(fd, events | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(max(1, math.ceil(wait_s * 1000))))


def write_frame(fd: int, message: object) -> None:
    write_raw(fd, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def write_raw(fd: int, data: bytes, deadline: float | None = None) -> None:
    """One frame of already pickled ``data``; ``TimeoutError`` if ``deadline`` (monotonic)
    passes first. With a deadline, ``fd`` must be non-blocking: a child that stopped
    reading (SIGSTOP, a frozen cgroup) must not hold a write of more than the pipe's 64 KiB
    for ever."""
    view = memoryview(FRAME_HEADER.pack(len(data)) + data)
    while view:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not _ready(fd, select.POLLOUT, wait):
                raise TimeoutError
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def read_frame(fd: int, deadline: float | None = None) -> Any:
    """The next message, or ``EOFError`` when the other end closed; ``TimeoutError`` if
    ``deadline`` (monotonic) passes first."""
    header = _read_exactly(fd, FRAME_HEADER.size, deadline)
    (size,) = FRAME_HEADER.unpack(header)
    if size > FRAME_MAX:
        raise ValueError(f"frame of {size} bytes")
    return pickle.loads(_read_exactly(fd, size, deadline))


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not _ready(fd, select.POLLIN, wait):
                raise TimeoutError
        chunk = os.read(fd, min(left, 1024**2))
        if not chunk:
            raise EOFError
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class Child:
    """A worker process running ``factory()``'s service; ``name`` is for messages."""

    def __init__(self, name: str, factory: Callable[[], Any], log_level: str = "info") -> None:
        self.name = name
        self._factory = factory
        self._log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one call at a time; close may come from elsewhere

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        """Start the child now rather than on the first call (``WorkerError`` if it
        cannot start)."""
        with self._lock:
            if self.proc is None:
                self._start()

    def call(self, message: Any, timeout_s: float) -> Any:
        """The service's answer to ``message``. ``WorkerError`` with the reason when the
        service refused it (the child stays) or the child failed (it is replaced)."""
        with self._lock:
            reply = self._exchange(("call", message), timeout_s)
        if reply[0] == "error":
            raise WorkerRefused(str(reply[1]))
        return reply[1]

    def replace_factory(self, factory: Callable[[], Any]) -> None:
        """What a child started from now on runs (a hot reload: the running child got the
        change in a call; a replacement must not start from the old one)."""
        with self._lock:
            self._factory = factory

    def close(self) -> None:
        with self._lock:
            proc = self.proc
            if proc is None:
                return
            with contextlib.suppress(WorkerError):
                self._exchange(("close",), CLOSE_GRACE_S)
            self._stop(proc)

    def _exchange(self, message: tuple[Any, ...], timeout_s: float) -> tuple[Any, ...]:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > FRAME_MAX:  # the child would refuse it and exit: refuse it here
            raise WorkerRefused(f"{self.name} worker process: a message of {len(data)} bytes "
                              f"is over the {FRAME_MAX}-byte frame limit")
        proc = self.proc or self._start()
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            write_raw(proc.stdin.fileno(), data, deadline)
            reply = read_frame(proc.stdout.fileno(), deadline)
            if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] in ("ok", "error")):
                raise ValueError("unexpected reply")
            return reply
        except TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
        except (OSError, EOFError):
            reason = f"exited ({self._exit_status(proc)})"
        except (ValueError, pickle.UnpicklingError):
            reason = "broke the protocol"
        self._stop(proc, grace_s=0.0)  # its state is unknown: never wait on it
        raise WorkerError(f"{self.name} worker process {reason}; restarting it")

    def _start(self) -> subprocess.Popen[bytes]:
        try:
            init = pickle.dumps(("init", self._log_level, self._factory))
        except Exception as exc:  # a lambda, a socket...: a programming error, said clearly
            raise WorkerError(f"{self.name} worker process: cannot send it its work "
                              f"({type(exc).__name__})") from None
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.workers.main"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                start_new_session=True,  # a Ctrl-C to the sidecar's group must not reach it
            )
        except OSError as exc:
            raise WorkerError(f"{self.name} worker process: cannot start "
                              f"({exc.strerror})") from None
        assert proc.stdin is not None and proc.stdout is not None
        try:
            write_raw(proc.stdin.fileno(), init)
            reply = read_frame(proc.stdout.fileno(), time.monotonic() + READY_TIMEOUT_S)
        except (OSError, EOFError, TimeoutError, ValueError, pickle.UnpicklingError):
            reply = ("error", f"did not start ({self._exit_status(proc)})")
        if reply[0] != "ok":
            self._stop(proc, grace_s=0.0)
            raise WorkerError(f"{self.name} worker process: {reply[1]}")
        os.set_blocking(proc.stdin.fileno(), False)  # writes are bounded by their deadline
        self.proc = proc
        log.info("worker process started", extra={"fields": {"worker": self.name,
                                                              "pid": proc.pid}})
        return proc

    def _stop(self, proc: subprocess.Popen[bytes], grace_s: float = CLOSE_GRACE_S) -> None:
        """Close its pipes (EOF makes it close its service and exit); kill it after
        ``grace_s``."""
        self.proc = None
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @staticmethod
    def _exit_status(proc: subprocess.Popen[bytes]) -> str:
        try:  # it closed its end of the pipe: it is exiting, give it a moment to be reaped
            code: int | None = proc.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return "still running"
        return f"signal {-code}" if code < 0 else f"status {code}"
