"""Child processes for bench/run.py and bench/pipeline.py: start on loopback, wait until
ready, always stop.

Each child gets its own session (process group), so a Ctrl-C in the terminal reaches
only run.py, which then stops the children in order — the sidecar with SIGTERM, so it
drains its event queue into the events file before exiting.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

STOP_GRACE_S = 20.0  # longer than the sidecar's drain timeout set by run.py


def free_port() -> int:
    # Racy in theory (the port is free when we look), harmless on a quiet loopback.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def metric_total(url: str, name: str) -> float:
    """Sum of one Prometheus metric over all its label sets, scraped from ``url``."""
    return metric_totals(url, (name,))[name]


def metric_totals(url: str, names: Iterable[str]) -> dict[str, float]:
    """``metric_total`` for several metrics from one scrape (consistent with each other)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    totals = {}
    for name in names:
        pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.M)
        totals[name] = sum(float(m.group(1)) for m in pattern.finditer(text))
    return totals


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy so far (Linux /proc/stat); None where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def pid_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux /proc); None where
    unavailable. Also for children that are not a ``Service`` (the embedded broker)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Live children of ``pid`` (Linux /proc); [] where unavailable."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        return []
    return found


def wait_quiet(max_busy_cores: float, max_wait_s: float, window_s: float = 0.5) -> bool:
    """Wait until the machine's busy CPU over ``window_s`` is below ``max_busy_cores``.

    The bench shares the machine with whatever else runs on it; a run that starts while
    another job is busy measures that job as much as the proxy. False on timeout.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_busy_seconds()
        time.sleep(window_s)
        after = machine_busy_seconds()
        if before is None or after is None or (after - before) / window_s < max_busy_cores:
            return True
        if time.monotonic() >= deadline:
            return False


class Service:
    """One child process, run in the work directory with its output in a log file there.

    The work directory is also the child's cwd, so any relative path a server defaults to
    (an events file, a write-ahead log) lands there and not in the caller's checkout.
    """

    def __init__(self, name: str, cmd: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=log_dir,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}:\n"
                               f"{self.log_tail()}")

    def wait_tcp(self, port: int, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not accepting on port {port} after {timeout_s}s")

    def wait_http_ok(self, url: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
                    last = f"status {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"status {exc.code}"
            except OSError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: {url} not 200 after {timeout_s}s ({last})")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far (Linux /proc) of the process and of the children
        it runs (the sidecar's detection and masking workers: their CPU is the sidecar's,
        not another job's); None where unavailable."""
        own = pid_cpu_seconds(self.pid)
        if own is None:
            return None
        return own + sum(pid_cpu_seconds(child) or 0.0 for child in child_pids(self.pid))

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5.0)
        return self.proc.returncode


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the children


def ignoring_signals() -> contextlib.AbstractContextManager[None]:
    """While stopping children, ignore a second signal (`timeout` signals the whole group):
    it would abort the loop and orphan the servers, and stopping is bounded anyway."""

    @contextlib.contextmanager
    def manager() -> Iterator[None]:
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = [signal.signal(sig, signal.SIG_IGN) for sig in signals]
        try:
            yield
        finally:
            for sig, handler in zip(signals, previous, strict=True):
                signal.signal(sig, handler)

    return manager()


def run_command(
    script: str,
    argv: list[str] | None,
    workdir_prefix: str,
    keep_workdir: bool,
    measure: Callable[[Path, str, str], tuple[str, bool]],
    stop: Callable[[], None],
    failures: tuple[type[BaseException], ...] = (RuntimeError, OSError,
                                                 subprocess.SubprocessError),
) -> int:
    """The shared ``main`` of the bench commands: signals, work dir, cleanup, output.

    ``measure(workdir, date, command)`` returns the markdown section and whether its
    checks passed; ``stop()`` stops every child and is always called.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)  # so that these too run the cleanup below
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv]) if argv is None else \
        shlex.join([script, *argv])
    workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
    keep = keep_workdir
    try:
        section, ok = measure(workdir, date, command)
    except KeyboardInterrupt:
        print("interrupted; stopping the servers", file=sys.stderr)
        return 130
    except failures as exc:
        keep = True  # the servers' logs are the first thing to look at
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stop()
        if keep:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n----- markdown for bench/RESULTS.md -----\n")
    print(section)
    return 0 if ok else 1
