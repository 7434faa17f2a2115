"""Load generators for bench/run.py: wrk (preferred) or a small aiohttp client (fallback).

Both run as a separate process and end with the same ``BENCH_RESULT {json}`` line, so
run.py treats them alike. The Python one is only a fallback: on one core it saturates
well before wrk does, so its figures are lower bounds, not comparable with wrk's.

    python bench/loadgen.py URL BODY_FILE --connections 32 --duration 5 [--delay-ms 20]
    python bench/loadgen.py URL BODY_FILE --requests 50000 --duration 300   # at most N

Only the Python generator can stop after an exact number of requests (``--requests``,
used by bench/pipeline.py to fill a write-ahead log with a known number of events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

WRK_SCRIPT = Path(__file__).with_name("wrk_bench.lua")
MARKER = "BENCH_RESULT "


@dataclass(frozen=True)
class LoadResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    http_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.http_errors


def chat_body(stream: bool, size: int = 1024) -> bytes:
    """A system + user chat request of exactly ``size`` bytes (1 KB by default)."""
    def encode(content: str) -> bytes:
        body = {"model": "demo-llm", "max_tokens": 64, "temperature": 0.2, "stream": stream,
                "messages": [{"role": "system", "content": "You are a concise assistant."},
                             {"role": "user", "content": content}]}
        return json.dumps(body, separators=(",", ":")).encode()

    filler = "Summarise the attached incident report in three bullet points. " * 32
    return encode(filler[:size - len(encode(""))])


def wrk_path() -> str | None:
    return shutil.which("wrk")


def load_command(generator: str, url: str, body_file: Path, connections: int,
                 duration_s: float, delay_ms: float = 0.0, max_requests: int = 0) -> list[str]:
    delay = f"{delay_ms:.3f}"
    if generator == "wrk":
        if max_requests:
            raise RuntimeError("wrk cannot stop after a number of requests; use python")
        wrk = wrk_path()
        if wrk is None:
            raise RuntimeError("wrk not found on PATH; use --generator python")
        # wrk takes whole seconds only; one thread so it leaves the other core to the servers
        return [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s",
                "--timeout", "5s", "-s", str(WRK_SCRIPT), url, "--", str(body_file), delay]
    return [sys.executable, str(Path(__file__).resolve()), url, str(body_file),
            "--connections", str(connections), "--duration", str(duration_s),
            "--delay-ms", delay] + (["--requests", str(max_requests)] if max_requests else [])


def parse_result(stdout: str) -> LoadResult:
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            return LoadResult(
                requests=int(data["requests"]), duration_s=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000.0, p99_ms=data["p99_us"] / 1000.0,
                max_ms=data["max_us"] / 1000.0, socket_errors=int(data["socket_errors"]),
                http_errors=int(data["http_errors"]),
            )
    raise RuntimeError(f"load generator printed no {MARKER.strip()} line:\n{stdout[-2000:]}")


def run_load(generator: str, url: str, body_file: Path, connections: int, duration_s: float,
             delay_ms: float = 0.0, max_requests: int = 0) -> LoadResult:
    """One load run; bounded by a timeout well past its nominal duration. With
    ``max_requests`` (Python generator only) it also stops after that many requests."""
    cmd = load_command(generator, url, body_file, connections, duration_s, delay_ms,
                       max_requests)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return parse_result(done.stdout)


# --- the Python fallback generator ------------------------------------------------------


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


async def _generate(url: str, body: bytes, connections: int, duration_s: float,
                    delay_ms: float, max_requests: int = 0) -> dict[str, int]:
    latencies: list[float] = []
    counts = {"socket_errors": 0, "http_errors": 0, "bytes": 0}
    issued = 0  # requests started; one event loop, so no lock
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker() -> None:
            nonlocal issued
            while time.perf_counter() < deadline and not 0 < max_requests <= issued:
                issued += 1
                if delay_ms > 0:  # same pacing as wrk_bench.lua's delay()
                    await asyncio.sleep(random.uniform(0.5, 1.5) * delay_ms / 1000.0)
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        counts["bytes"] += len(await response.read())  # SSE: the whole stream
                        if response.status >= 400:
                            counts["http_errors"] += 1
                except (aiohttp.ClientError, OSError, TimeoutError):
                    counts["socket_errors"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "duration_us": int(elapsed * 1e6), **counts,
            "p50_us": int(_percentile(latencies, 50) * 1e6),
            "p99_us": int(_percentile(latencies, 99) * 1e6),
            "max_us": int((latencies[-1] if latencies else 0.0) * 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Small aiohttp load generator (wrk fallback).")
    parser.add_argument("url")
    parser.add_argument("body_file", type=Path)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--requests", type=int, default=0,
                        help="Stop after this many requests (0: only --duration bounds it).")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency
        run = asyncio.run
    else:
        run = uvloop.run
    result = run(_generate(args.url, args.body_file.read_bytes(), args.connections,
                           args.duration, args.delay_ms, args.requests))
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
