"""Benchmark: the sidecar against a direct connection and a minimal aiohttp pass-through.

    .venv/bin/python bench/run.py            # 3 runs x 5 s per target and workload
    .venv/bin/python bench/run.py --quick    # smoke mode: 1 run x 2 s

Starts the demo model server, the sidecar and bench/passthrough.py on free loopback
ports; for a 1 KB JSON chat request and the same with "stream": true (SSE) measures
peak req/s and p50/p99 straight to the upstream, through the pass-through and through
the sidecar, then p50/p99 of all three at half the sidecar's peak rate; then checks that
the events file holds an event for every request the sidecar answered. Prints tables
and a markdown section for bench/RESULTS.md.

    .venv/bin/python bench/run.py --baseline-set privacy_profile=metadata-only

also starts a second sidecar, the *baseline*, with the same settings but these, measured
in the same rounds and paced at the same rate: what those settings cost, in one run
(e.g. masking's effect on p99 at load).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import urllib.request
from pathlib import Path

import report
from loadgen import LoadResult, chat_body, run_load, wrk_path
from procs import (
    Service,
    count_lines,
    free_port,
    ignoring_signals,
    machine_busy_seconds,
    metric_total,
    run_command,
    wait_quiet,
)
from report import BASELINE, DIRECT, PASSTHROUGH, SIDECAR, Sample, Summary

BENCH_DIR = Path(__file__).resolve().parent
TARGETS = (DIRECT, PASSTHROUGH, SIDECAR)
# Loopback softirq and the idle servers stay well under this share of a core; more means
# another job ran during the measurement, so it is redone (at most REDO_LIMIT times).
# Waiting for a quiet machine is bounded per run and in total; --quick never waits.
OTHER_CPU_LIMIT = 0.25
REDO_LIMIT = 2
QUIET_WAIT_S, QUIET_BUDGET_S = 20.0, 180.0
IDENTITY = {"SIDECAR_MODEL_NAME": "demo-llm", "SIDECAR_MODEL_VERSION": "2026.11.0",
            "SIDECAR_POLICY_VERSION": "policy-7", "SIDECAR_EVIDENCE_BUNDLE_ID": "eb-bench-0001"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3, help="Runs per target (medians reported).")
    p.add_argument("--duration", type=float, default=5.0, help="Seconds per run.")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--warmup", type=float, default=1.0, help="Unrecorded seconds per target.")
    p.add_argument("--generator", choices=("wrk", "python"),
                   help="Load generator (default: wrk if installed, else python).")
    p.add_argument("--durability", choices=("sync", "batch", "memory"),
                   help="The sidecar's durability mode (default: its own default, sync).")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="A sidecar setting for this run (repeatable), e.g. "
                        "privacy_profile=metadata-only.")
    p.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE",
                   help="Also measure a baseline sidecar: the same settings but these "
                        "(repeatable).")
    p.add_argument("--quick", action="store_true", help="Smoke mode: 1 run of 2 s.")
    p.add_argument("--keep-workdir", action="store_true", help="Keep logs and events file.")
    args = p.parse_args(argv)
    if any("=" not in item for item in args.set + args.baseline_set):
        p.error("--set and --baseline-set take KEY=VALUE")
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 2.0, 0.5
    if args.runs < 1 or args.duration <= 0 or args.connections < 1:
        p.error("--runs, --duration and --connections must be positive")
    args.generator = args.generator or ("wrk" if wrk_path() else "python")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.services: list[Service] = []
        self.urls: dict[str, str] = {}
        self.admin_url = ""
        self.bodies: dict[str, Path] = {}
        self.sidecar_answered = 0  # every response the sidecar sent, for the events check
        self.quiet_budget = 0.0 if args.quick else QUIET_BUDGET_S
        self.redone = 0
        self.events_file = workdir / "events.jsonl"
        self.targets = TARGETS + ((BASELINE,) if args.baseline_set else ())
        for name, stream in (("json", False), ("sse", True)):
            self.bodies[name] = workdir / f"{name}.json"
            self.bodies[name].write_bytes(chat_body(stream))

    def _service(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Service:
        service = Service(name, cmd, self.workdir, env)
        self.services.append(service)  # registered before waiting, so it is always stopped
        return service

    def start(self) -> None:
        py = sys.executable
        path = "/v1/chat/completions"
        up_port, pt_port, sc_port, admin_port = (free_port() for _ in range(4))
        upstream_url = f"http://127.0.0.1:{up_port}"
        self._service("upstream", [py, "-m", "sidecar.demo.model_server", "--host",
                                   "127.0.0.1", "--port", str(up_port)]).wait_tcp(up_port)
        self._service("pass-through", [py, str(BENCH_DIR / "passthrough.py"), "--listen-port",
                                       str(pt_port), "--upstream", upstream_url]
                      ).wait_tcp(pt_port)
        sc_url = self._sidecar(SIDECAR, upstream_url, sc_port, admin_port, self.events_file, [])
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.urls = {DIRECT: upstream_url + path, PASSTHROUGH: f"http://127.0.0.1:{pt_port}{path}",
                     SIDECAR: sc_url + path}
        if self.args.baseline_set:
            self.urls[BASELINE] = self._sidecar(
                BASELINE, upstream_url, free_port(), free_port(),
                self.workdir / "baseline-events.jsonl", self.args.baseline_set) + path
        self._smoke_check()

    def _sidecar(self, name: str, upstream_url: str, port: int, admin_port: int,
                 events_file: Path, overrides: list[str]) -> str:
        """Start a sidecar with the bench's settings, then ``overrides``; its base URL."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env.update(IDENTITY, SIDECAR_UPSTREAM_URL=upstream_url,
                   SIDECAR_LISTEN=f"127.0.0.1:{port}",
                   SIDECAR_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
                   SIDECAR_EVENTS_FILE=str(events_file), SIDECAR_LOG_LEVEL="warning",
                   SIDECAR_DRAIN_TIMEOUT="10s",  # keeps the final stop inside its bound
                   SIDECAR_WAL_DIR=str(self.workdir / f"{name}-wal"))
        if self.args.durability:
            env["SIDECAR_DURABILITY"] = self.args.durability
        for item in self.args.set + overrides:
            key, _, value = item.partition("=")
            env[f"SIDECAR_{key.strip().upper()}"] = value.strip()
        py = sys.executable
        exe = Path(py).with_name("inference-sidecar")
        cmd = [str(exe), "serve"] if exe.exists() else [py, "-m", "sidecar", "serve"]
        sidecar = self._service(name, cmd, env)
        sidecar.wait_tcp(port)
        sidecar.wait_http_ok(f"http://127.0.0.1:{admin_port}/readyz")
        return f"http://127.0.0.1:{port}"

    def _smoke_check(self) -> None:
        """One request per target and workload, so a broken path fails fast and loudly."""
        for target, url in self.urls.items():
            for workload, body in self.bodies.items():
                request = urllib.request.Request(url, data=body.read_bytes(), method="POST",
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    payload = response.read()
                    stamped = response.headers.get("x-inference-id") is not None
                if target == SIDECAR:
                    self.sidecar_answered += 1
                if response.status != 200 or not payload or \
                        stamped != (target in (SIDECAR, BASELINE)):
                    raise RuntimeError(f"{target}/{workload}: status {response.status}, "
                                       f"{len(payload)} bytes, stamped={stamped}")

    def by_name(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def _cpu_snapshot(self, proxy: Service | None) -> list[float | None]:
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished load generators
        return [self.by_name("upstream").cpu_seconds(), proxy.cpu_seconds() if proxy else None,
                reaped.ru_utime + reaped.ru_stime, machine_busy_seconds()]

    def measure(self, target: str, workload: str, duration: float, delay_ms: float = 0.0,
                settle: bool = True) -> Sample:
        """One run, started on a quiet machine and redone if another job took CPU."""
        redo_limit = REDO_LIMIT if settle and not self.args.quick else 0
        for attempt in range(redo_limit + 1):
            if settle and self.quiet_budget > 0:
                t0 = time.monotonic()
                if not wait_quiet(OTHER_CPU_LIMIT, min(QUIET_WAIT_S, self.quiet_budget)):
                    print("  (machine still busy; measuring anyway)", flush=True)
                self.quiet_budget -= time.monotonic() - t0
            sample = self._measure_once(target, workload, duration, delay_ms)
            other = sample.other_cpu
            # With the waiting budget spent the machine is busy for good: redoing won't help.
            if (other is None or other <= OTHER_CPU_LIMIT or attempt == redo_limit
                    or self.quiet_budget <= 0):
                break
            self.redone += 1
            print(f"  (redoing {workload} {target}: other processes used {other:.0%} of a "
                  "core)", flush=True)
        return sample

    def _measure_once(self, target: str, workload: str, duration: float,
                      delay_ms: float) -> Sample:
        proxy = None if target == DIRECT else self.by_name(target)
        before = self._cpu_snapshot(proxy)
        t0 = time.monotonic()
        result: LoadResult = run_load(self.args.generator, self.urls[target],
                                      self.bodies[workload], self.args.connections,
                                      duration, delay_ms)
        wall = time.monotonic() - t0
        upstream, proxied, loadgen, busy = (
            None if b is None or a is None else (a - b) / wall
            for b, a in zip(before, self._cpu_snapshot(proxy), strict=True))
        # The rest of the machine (other jobs, idle services) steals from the figures.
        other = None if busy is None else max(
            0.0, busy - sum(c or 0.0 for c in (upstream, proxied, loadgen)))
        if target == SIDECAR:
            self.sidecar_answered += result.requests
        return Sample(result, proxy_cpu=proxied, upstream_cpu=upstream, loadgen_cpu=loadgen,
                      other_cpu=other)

    def sweep(self, targets: tuple[str, ...], delays: dict[str, float] | None = None
              ) -> dict[str, dict[str, Summary]]:
        """``runs`` rounds; each round visits every target, starting one further along,
        so no target always runs first (cold) or right after the heaviest one."""
        args = self.args
        samples: dict[str, dict[str, list[Sample]]] = {w: {t: [] for t in targets}
                                                       for w in self.bodies}
        for run in range(args.runs):
            order = targets[run % len(targets):] + targets[:run % len(targets)]
            for workload in self.bodies:
                for target in order:
                    delay = (delays or {}).get(workload, 0.0)
                    s = self.measure(target, workload, args.duration, delay)
                    samples[workload][target].append(s)
                    r = s.result
                    print(f"  run {run + 1}/{args.runs} {workload:4} {target:12} "
                          f"{r.rps:9,.0f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms"
                          + (f"  errors {r.errors}" if r.errors else ""), flush=True)
        return {w: {t: report.summarize(samples[w][t]) for t in targets} for w in samples}

    def events_check(self, catch_up_s: float = 30.0) -> tuple[str, bool]:
        """Wait (bounded) for the events file to catch up, then stop the sidecar and count.

        Events reach the file asynchronously, so the wait measures how far behind the
        sink was when the load stopped; the SIGTERM then drains whatever is left.
        """
        t0 = time.monotonic()
        while (count_lines(self.events_file) < self.sidecar_answered
               and time.monotonic() - t0 < catch_up_s):
            time.sleep(0.25)
        lag = time.monotonic() - t0
        dropped = metric_total(self.admin_url + "/metrics",
                               "inference_sidecar_events_dropped_total")
        status = self.by_name(SIDECAR).stop()
        lines = count_lines(self.events_file)
        ok = lines >= self.sidecar_answered and status == 0
        return (f"{'OK' if ok else 'FAIL'}: the events file has {lines:,} lines for "
                f"{self.sidecar_answered:,} responses the sidecar answered (warm-up and smoke "
                "requests included; any excess are requests cut off when a run ended); it "
                f"caught up {lag:.1f} s after the last run; events dropped per /metrics: "
                f"{dropped:,.0f}; sidecar exit status {status}.", ok)


def _stop_all(bench: Bench) -> None:
    with ignoring_signals():
        for service in reversed(bench.services):
            service.stop()


def _measure(args: argparse.Namespace, bench: Bench, date: str, command: str) -> tuple[str, bool]:
    """Everything that needs the servers; returns the markdown section and the verdict."""
    print(f"starting upstream, pass-through and sidecar (work dir {bench.workdir})", flush=True)
    bench.start()
    code = report.code_version(BENCH_DIR.parent, bench.workdir)  # others may edit it meanwhile
    print(f"generator {args.generator}: 1 thread, {args.connections} connections, "
          f"{args.duration:g} s x {args.runs} runs; warm-up {args.warmup:g} s per target",
          flush=True)
    for workload in bench.bodies:
        for target in bench.targets:
            bench.measure(target, workload, args.warmup, settle=False)
    print("peak throughput:", flush=True)
    peak = bench.sweep(bench.targets)
    rates = {w: peak[w][SIDECAR].rps / 2 for w in peak}
    delays = {w: args.connections * 1000.0 / rate for w, rate in rates.items() if rate > 0}
    print("paced at half the sidecar's peak rate:", flush=True)
    paced = bench.sweep(bench.targets, delays)
    events_line, events_ok = bench.events_check()

    peak_md, paced_md = report.peak_table(peak), report.paced_table(paced, rates)
    share, added = report.sidecar_vs_passthrough(peak), report.added_latency_line(paced)
    if args.baseline_set:
        added += "\n\n" + report.baseline_line(peak, paced, args.baseline_set)
    print("\n".join(["", peak_md, "", share, "", paced_md, "", added, "", events_line]))
    setup = (f"{args.generator}, 1 thread, {args.connections} connections, {args.duration:g} s "
             f"per run, {args.runs} run(s) per target interleaved, medians. Requests: POST "
             f"/v1/chat/completions, {len(chat_body(False))} B JSON body; sse sets "
             "\"stream\": true and gets 6 events. CPU: share of one core during the run "
             "(the sidecar's includes its detection and masking worker processes). "
             "Sidecar on its default settings"
             + (f" except durability: {args.durability}" if args.durability else "")
             + "".join(f"; {item}" for item in args.set)
             + (f". Baseline: a second sidecar with the same settings except "
                f"{', '.join(args.baseline_set)}, measured in the same rounds"
                if args.baseline_set else "")
             + f"; its files in {bench.workdir.parent} "
             f"({report.filesystem(bench.workdir)}). {bench.redone} run(s) redone because "
             "another job took CPU meanwhile.")
    section = report.markdown_section(
        date=date, command=command, code=code, setup=setup,
        peak_md=peak_md, share_line=share, paced_md=paced_md, added_line=added,
        events_line=events_line,
        notes=report.notes(peak, paced, args.generator))
    return section, events_ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    holder: list[Bench] = []

    def measure(workdir: Path, date: str, command: str) -> tuple[str, bool]:
        holder.append(Bench(args, workdir))
        return _measure(args, holder[0], date, command)

    def stop() -> None:
        if holder:
            _stop_all(holder[0])

    return run_command("bench/run.py", argv, "sidecar-bench-", args.keep_workdir, measure, stop)


if __name__ == "__main__":
    sys.exit(main())
