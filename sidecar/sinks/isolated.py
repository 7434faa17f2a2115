"""``ProcessSink``: a sink that runs in a child process, off the sidecar's GIL.

kafka-python is pure Python: per event it costs about 100 µs of CPU in the producing
process (``send()``, the accumulator, its network thread), and rebuilding a producer
during a broker outage held the GIL long enough to stall the event loop for tens of
milliseconds. Run in a child (``sidecar/sinks/worker.py``), that work lands on another
core and cannot stall the loop; what stays in the sidecar is one pickled batch written
to a pipe and one small reply read back, both in the delivery thread.

The contract is the inner sink's (``sidecar/sinks/base.py``): ``write`` returns once the
child reports the batch stored, or raises ``SinkError``. The child is started on the
first write (the sidecar starts serving without waiting for it) and replaced when it
dies, hangs past ``reply_timeout_s`` or breaks the protocol; a batch that was in its hands
then is failed and retried whole by the pipeline, which the at-least-once contract allows.

The child is not in the sidecar's process group and ignores SIGINT and SIGTERM: the
sidecar stops it after draining (``close``). If the sidecar dies, the child reads EOF on
its stdin and exits.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from sidecar.events.record import Record
from sidecar.logs import get_logger
from sidecar.sinks.base import Sink, SinkError

log = get_logger("sink.process")

FRAME_HEADER: Final = struct.Struct("!I")
FRAME_MAX: Final = 64 * 1024**2  # a batch is at most ~1 MiB; anything near this is corruption
READY_TIMEOUT_S: Final = 30.0  # the child imports its sink (kafka-python) before answering
CLOSE_GRACE_S: Final = 10.0
EXIT_WAIT_S: Final = 1.0

# Messages, parent → child: ("init", log_level, factory), ("write", records), ("close",).
# Child → parent: ("ok",) or ("error", reason).


def write_frame(fd: int, message: object) -> None:
    write_raw(fd, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def write_raw(fd: int, data: bytes) -> None:
    """One frame of already pickled ``data``."""
    view = memoryview(FRAME_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


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
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1024**2))
        if not chunk:
            raise EOFError
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


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
        self._reply_timeout_s = reply_timeout_s
        self._log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._healthy = True
        self._lock = threading.Lock()  # one write at a time; close may come from elsewhere

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        with self._lock:
            reply = self._call(("write", list(records)), self._reply_timeout_s)
            self._healthy = reply[0] == "ok"
            if not self._healthy:
                raise SinkError(str(reply[1]))

    def close(self) -> None:
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            with contextlib.suppress(SinkError):
                self._call(("close",), CLOSE_GRACE_S)
            self._stop(proc)

    def _call(self, message: tuple[Any, ...], timeout_s: float) -> tuple[Any, ...]:
        """Send ``message`` to the child (started if needed) and return its reply; any
        failure of the child or the pipe replaces the child and raises ``SinkError``."""
        proc = self._proc or self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            write_frame(proc.stdin.fileno(), message)
            reply = read_frame(proc.stdout.fileno(), time.monotonic() + timeout_s)
            if not (isinstance(reply, tuple) and reply and reply[0] in ("ok", "error")):
                raise ValueError("unexpected reply")
            return reply
        except TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
        except (OSError, EOFError):
            reason = f"exited ({self._exit_status(proc)})"
        except (ValueError, pickle.UnpicklingError):
            reason = "broke the protocol"
        self._healthy = False
        self._stop(proc, grace_s=0.0)  # its state is unknown: never wait on it
        raise SinkError(f"{self.name} worker process {reason}; restarting it")

    def _start(self) -> subprocess.Popen[bytes]:
        try:
            init = pickle.dumps(("init", self._log_level, self._factory))
        except Exception as exc:  # a lambda, a socket...: a programming error, said clearly
            self._healthy = False
            raise SinkError(f"{self.name} worker process: cannot send it the sink "
                            f"({type(exc).__name__})") from None
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.sinks.worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                start_new_session=True,  # a Ctrl-C to the sidecar's group must not reach it
            )
        except OSError as exc:
            raise SinkError(f"{self.name} worker process: cannot start ({exc.strerror})") from None
        assert proc.stdin is not None and proc.stdout is not None
        try:
            write_raw(proc.stdin.fileno(), init)
            reply = read_frame(proc.stdout.fileno(), time.monotonic() + READY_TIMEOUT_S)
        except (OSError, EOFError, TimeoutError, ValueError, pickle.UnpicklingError):
            reply = ("error", f"did not start ({self._exit_status(proc)})")
        if reply[0] != "ok":
            self._healthy = False
            self._stop(proc, grace_s=0.0)
            raise SinkError(f"{self.name} worker process: {reply[1]}")
        self._proc = proc
        log.info("sink worker process started", extra={"fields": {
            "sink": self.name, "pid": proc.pid}})
        return proc

    def _stop(self, proc: subprocess.Popen[bytes], grace_s: float = CLOSE_GRACE_S) -> None:
        """Close its pipes (EOF makes it close its sink and exit); kill it after
        ``grace_s``."""
        self._proc = None
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
