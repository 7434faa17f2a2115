"""Medians, tables and the pasteable markdown section for bench/run.py (medians and
machine details also for bench/pipeline.py)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from loadgen import LoadResult

DIRECT, PASSTHROUGH, SIDECAR = "direct", "pass-through", "sidecar"
BASELINE = "sidecar-baseline"  # bench/run.py --baseline-set: the same sidecar but settings


@dataclass(frozen=True)
class Sample:
    result: LoadResult
    proxy_cpu: float | None  # share of one core used by the proxy under test, 0..1
    upstream_cpu: float | None
    loadgen_cpu: float | None
    other_cpu: float | None  # the rest of the machine: other jobs steal from the figures
    broker_cpu: float | None = None  # the Kafka broker, where one takes part (pipeline.py)


@dataclass(frozen=True)
class Summary:
    runs: int
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_cpu: float | None
    upstream_cpu: float | None
    loadgen_cpu: float | None
    other_cpu: float | None
    errors: int
    requests: int
    broker_cpu: float | None = None


def _median_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(samples: Sequence[Sample]) -> Summary:
    """Median of each figure on its own: the runs are repeats, not paired observations."""
    results = [s.result for s in samples]
    return Summary(
        runs=len(samples),
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        proxy_cpu=_median_or_none([s.proxy_cpu for s in samples]),
        upstream_cpu=_median_or_none([s.upstream_cpu for s in samples]),
        loadgen_cpu=_median_or_none([s.loadgen_cpu for s in samples]),
        other_cpu=_median_or_none([s.other_cpu for s in samples]),
        errors=sum(r.errors for r in results),
        requests=sum(r.requests for r in results),
        broker_cpu=_median_or_none([s.broker_cpu for s in samples]),
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def peak_table(peak: dict[str, dict[str, Summary]]) -> str:
    rows = ["| workload | target | req/s | vs direct | p50 ms | p99 ms | CPU proxy "
            "| CPU upstream | CPU load gen | CPU other | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for workload, by_target in peak.items():
        direct = by_target[DIRECT].rps
        for target, s in by_target.items():
            ratio = s.rps / direct if direct else 0.0
            rows.append(f"| {workload} | {target} | {s.rps:,.0f} | {ratio:.2f}x | "
                        f"{s.p50_ms:.2f} | {s.p99_ms:.2f} | {_pct(s.proxy_cpu)} | "
                        f"{_pct(s.upstream_cpu)} | {_pct(s.loadgen_cpu)} | {_pct(s.other_cpu)} | "
                        f"{s.errors} |")
    return "\n".join(rows)


def sidecar_vs_passthrough(peak: dict[str, dict[str, Summary]]) -> str:
    parts = []
    for workload, by_target in peak.items():
        ceiling = by_target[PASSTHROUGH].rps
        share = by_target[SIDECAR].rps / ceiling if ceiling else 0.0
        parts.append(f"{workload} {share * 100:.0f}%")
    return "Sidecar throughput as a share of the minimal pass-through's: " + ", ".join(parts)


def paced_table(paced: dict[str, dict[str, Summary]], rates: dict[str, float]) -> str:
    rows = ["| workload | paced at | target | req/s | p50 ms | p99 ms | p99 added ms | CPU proxy "
            "| CPU other |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for workload, by_target in paced.items():
        direct = by_target[DIRECT].p99_ms
        for target, s in by_target.items():
            added = "-" if target == DIRECT else f"{s.p99_ms - direct:+.2f}"
            rows.append(f"| {workload} | {rates[workload]:,.0f}/s | {target} | {s.rps:,.0f} | "
                        f"{s.p50_ms:.2f} | {s.p99_ms:.2f} | {added} | {_pct(s.proxy_cpu)} | "
                        f"{_pct(s.other_cpu)} |")
    return "\n".join(rows)


def added_latency_line(paced: dict[str, dict[str, Summary]]) -> str:
    def added(target: str) -> str:
        return ", ".join(f"{w} {by_target[target].p99_ms - by_target[DIRECT].p99_ms:+.2f} ms"
                         for w, by_target in paced.items())

    return (f"p99 added by the sidecar at half its peak rate: {added(SIDECAR)} "
            f"(by the minimal pass-through: {added(PASSTHROUGH)})")


def baseline_line(peak: dict[str, dict[str, Summary]], paced: dict[str, dict[str, Summary]],
                  baseline_set: list[str]) -> str:
    """What the sidecar's settings cost over the baseline's (``baseline_set``), same run."""
    share = ", ".join(f"{w} {by[SIDECAR].rps / by[BASELINE].rps:.0%}" if by[BASELINE].rps
                      else f"{w} n/a" for w, by in peak.items())
    added = ", ".join(f"{w} {by[SIDECAR].p99_ms - by[BASELINE].p99_ms:+.2f} ms "
                      f"({by[BASELINE].p99_ms:.2f} -> {by[SIDECAR].p99_ms:.2f})"
                      for w, by in paced.items())
    return (f"Against the baseline sidecar ({', '.join(baseline_set)}), same rounds: peak "
            f"req/s {share} of the baseline's; p99 at the same paced rate: {added}.")


def notes(peak: dict[str, dict[str, Summary]], paced: dict[str, dict[str, Summary]],
          generator: str) -> list[str]:
    """The figures that miss the targets (sidecar >= 80% of the ceiling, <= 2 ms added)."""
    out = []
    for workload, by_target in peak.items():
        share = by_target[SIDECAR].rps / by_target[PASSTHROUGH].rps
        if share < 0.8:
            out.append(f"{workload}: the sidecar reaches {share * 100:.0f}% of the "
                       "pass-through's throughput, below the 80% target.")
    for workload, by_target in paced.items():
        added = by_target[SIDECAR].p99_ms - by_target[DIRECT].p99_ms
        if added > 2.0:
            out.append(f"{workload}: p99 added at half the sidecar's peak is {added:.2f} ms, "
                       "over the 2 ms target.")
    busy = [f"{w} {t}{suffix}" for table, suffix in ((peak, ""), (paced, " (paced)"))
            for w, by_target in table.items() for t, s in by_target.items()
            if s.other_cpu is not None and s.other_cpu > 0.25]
    return out + machine_notes(busy, generator, "figures")


def machine_notes(busy: Sequence[str], generator: str, figures: str) -> list[str]:
    """The notes every bench adds: runs another job disturbed, and a Python generator."""
    out = []
    if busy:
        out.append("Other processes took over a quarter of a core during: " + ", ".join(busy)
                   + "; those figures are understated.")
    if generator == "python":
        out.append(f"Python load generator: it saturates before the servers do; {figures} "
                   "are lower bounds and not comparable with wrk runs.")
    return out


def code_version(repo: Path, cwd: Path) -> str:
    """Which sidecar code was measured: the commit, uncommitted changes, or another copy."""
    def run(*cmd: str) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True,
                                  cwd=cwd)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    # The children import it the same way (same interpreter, environment and cwd).
    package = Path(run(sys.executable, "-c", "import sidecar; print(sidecar.__file__)")).parent
    if package != repo / "sidecar":
        return f"sidecar imported from {package}, not from the checkout at {repo}"
    commit = run("git", "-C", str(repo), "rev-parse", "--short", "HEAD") or "unknown commit"
    changed = run("git", "-C", str(repo), "status", "--porcelain", "--", "sidecar").splitlines()
    dirty = f", plus uncommitted changes to {len(changed)} file(s) in sidecar/" if changed else ""
    return f"git {commit}{dirty}"


def filesystem(path: Path) -> str:
    """Type of the filesystem holding ``path`` (fsync costs differ: tmpfs makes it free)."""
    best, kind = "", "unknown filesystem"
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                _, mount, fstype, *_ = line.split()
                inside = str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount
                if inside and len(mount) >= len(best):
                    best, kind = mount, fstype
    except (OSError, ValueError):
        pass
    return kind


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def machine() -> str:
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"nproc {nproc} ({_cpu_model()}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, aiohttp {_version('aiohttp')}, "
            f"uvloop {_version('uvloop')}")


def markdown_section(*, date: str, command: str, code: str, setup: str, peak_md: str,
                     share_line: str, paced_md: str, added_line: str, events_line: str,
                     notes: Sequence[str]) -> str:
    lines = [
        f"## Results {date}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}. The load generator, the demo upstream and the proxy "
        "under test all share these cores.",
        f"- Code: {code}",
        f"- Setup: {setup}",
        "",
        "### Peak throughput (medians)",
        "",
        peak_md,
        "",
        share_line + ".",
        "",
        "### p99 added latency at half the sidecar's peak rate (medians)",
        "",
        paced_md,
        "",
        added_line + ".",
        "",
        "### Events",
        "",
        events_line,
    ]
    if notes:
        lines += ["", "### Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines)
