"""bench/pipeline.py's results: the rows it collects and the tables and markdown it prints."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

import report
from report import PASSTHROUGH, Sample, Summary

if TYPE_CHECKING:
    from pipeline import PipelineBench

SINKS, DURABILITIES = ("jsonl", "kafka"), ("memory", "batch", "sync")
CONFIGS = tuple(f"{sink}+{mode}" for sink in SINKS for mode in DURABILITIES)
FILE_BASELINE, AIM_CONFIG, AIM_SHARE = "jsonl+batch", "kafka+batch", 0.85


@dataclass(frozen=True)
class Drain:
    sent: int  # responses to the backlog requests (and the smoke request)
    logged: int  # log_events before the broker started
    reconnect_s: float  # broker start -> first delivery seen on /metrics
    drain_s: float  # first delivery seen -> log empty
    rate: float  # events/s while draining
    rate_total: float  # events/s from the broker start (reconnect included)
    sidecar_cpu: float | None
    broker_cpu: float | None
    other_cpu: float | None
    records: int
    distinct: int
    ok: bool


@dataclass(frozen=True)
class EventsRow:
    name: str
    answered: int
    lag_s: float
    records: int
    distinct: int
    dropped: float
    status: int | None

    @property
    def ok(self) -> bool:
        return self.distinct >= self.answered and self.status == 0 and not self.dropped


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _per(cpu: float | None, rate: float) -> str:
    """CPU microseconds per request (or event), from a share of a core and a rate."""
    return "-" if cpu is None or rate <= 0 else f"{cpu / rate * 1e6:.0f}"


def _paired_ratio(samples: dict[str, list[Sample]], a: str, b: str) -> float:
    """Median over rounds of rps(a) / rps(b), both measured in the same round."""
    return statistics.median(x.result.rps / y.result.rps
                             for x, y in zip(samples[a], samples[b], strict=True)
                             if y.result.rps > 0)


def peak_table(peak: dict[str, Summary], bench: PipelineBench) -> str:
    rows = ["| target | sink | durability | req/s | runs min-max | vs pass-through "
            f"| vs {FILE_BASELINE} | p50 ms | p99 ms | CPU proxy | proxy CPU µs/req "
            "| CPU broker | CPU upstream | CPU load gen | CPU other "
            "| undelivered after a run (max) | errors |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ceiling, baseline = peak[PASSTHROUGH].rps, peak[FILE_BASELINE].rps
    for name, s in peak.items():
        t = bench.targets[name]
        rps = [x.result.rps for x in bench.samples[name]]
        backlog = f"{max(t.undelivered):,}" if t.undelivered else "-"
        rows.append(
            f"| {name} | {t.sink} | {t.durability} | {s.rps:,.0f} | {min(rps):,.0f}-"
            f"{max(rps):,.0f} | {s.rps / ceiling:.2f}x | {s.rps / baseline:.2f}x | "
            f"{s.p50_ms:.2f} | {s.p99_ms:.2f} | {_pct(s.proxy_cpu)} | "
            f"{_per(s.proxy_cpu, s.rps)} | {_pct(s.broker_cpu)} | "
            f"{_pct(s.upstream_cpu)} | {_pct(s.loadgen_cpu)} | {_pct(s.other_cpu)} | "
            f"{backlog} | {s.errors} |")
    return "\n".join(rows)


def reading(peak: dict[str, Summary], bench: PipelineBench) -> list[str]:
    """The aim (kafka+batch within 15% of the file sink) and the measured cost of sync."""
    aim, base = peak[AIM_CONFIG], peak[FILE_BASELINE]
    share = aim.rps / base.rps
    paired = _paired_ratio(bench.samples, AIM_CONFIG, FILE_BASELINE)
    verdict = "met" if share >= AIM_SHARE else "NOT met"
    lines = [f"Aim, {AIM_CONFIG} within 15% of {FILE_BASELINE}: {aim.rps:,.0f} vs "
             f"{base.rps:,.0f} req/s = {share:.0%} (median of the per-round ratios: "
             f"{paired:.0%}); p99 {aim.p99_ms:.2f} vs {base.p99_ms:.2f} ms: **{verdict}**."]
    for sink in SINKS:
        sync, batch, memory = (peak[f"{sink}+{m}"] for m in ("sync", "batch", "memory"))
        lines.append(
            f"Cost of `sync` with the {sink} sink: {sync.rps:,.0f} req/s, "
            f"{sync.rps / batch.rps - 1:+.0%} vs batch ({batch.rps:,.0f}) and "
            f"{sync.rps / memory.rps - 1:+.0%} vs memory ({memory.rps:,.0f}); p50 "
            f"{sync.p50_ms:.2f} vs {batch.p50_ms:.2f} ms ({sync.p50_ms - batch.p50_ms:+.2f}), "
            f"p99 {sync.p99_ms:.2f} vs {batch.p99_ms:.2f} ms ({sync.p99_ms - batch.p99_ms:+.2f}); "
            f"CPU {_pct(sync.proxy_cpu)} vs {_pct(batch.proxy_cpu)} of a core.")
    shares = ", ".join(f"{m} {peak[f'kafka+{m}'].rps / peak[f'jsonl+{m}'].rps:.0%}"
                       for m in DURABILITIES)
    lines.append(f"Kafka sink throughput as a share of the file sink's, per durability: {shares}.")
    return lines


def drain_table(drains: list[Drain]) -> str:
    rows = ["| drain | events sent | in the log before | reconnect s | drain s | events/s "
            "| events/s incl. reconnect | CPU sidecar | sidecar CPU µs/event | CPU broker "
            "| CPU other | distinct ids on topic | duplicates | check |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, d in enumerate(drains, 1):
        rows.append(f"| {i} | {d.sent:,} | {d.logged:,} | {d.reconnect_s:.2f} | {d.drain_s:.2f} "
                    f"| {d.rate:,.0f} | {d.rate_total:,.0f} | {_pct(d.sidecar_cpu)} | "
                    f"{_per(d.sidecar_cpu, d.rate)} | {_pct(d.broker_cpu)} | "
                    f"{_pct(d.other_cpu)} | {d.distinct:,} | "
                    f"{d.records - d.distinct:,} | {'OK' if d.ok else 'FAIL'} |")
    if len(drains) > 1:
        rows.append(f"| median | | | {statistics.median(d.reconnect_s for d in drains):.2f} | "
                    f"{statistics.median(d.drain_s for d in drains):.2f} | "
                    f"{statistics.median(d.rate for d in drains):,.0f} | "
                    f"{statistics.median(d.rate_total for d in drains):,.0f} | | | | | | | |")
    return "\n".join(rows)


def events_table(rows: list[EventsRow]) -> str:
    out = ["| sidecar | responses sent | caught up after s | records | distinct ids "
           "| duplicates | dropped | exit status | check |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    out += [f"| {r.name} | {r.answered:,} | {r.lag_s:.1f} | {r.records:,} | {r.distinct:,} | "
            f"{r.records - r.distinct:,} | {r.dropped:,.0f} | {r.status} | "
            f"{'OK' if r.ok else 'FAIL'} |" for r in rows]
    return "\n".join(out)


def notes(peak: dict[str, Summary], drains: list[Drain], generator: str) -> list[str]:
    busy = [name for name, s in peak.items() if s.other_cpu is not None and s.other_cpu > 0.25]
    busy += [f"drain {i}" for i, d in enumerate(drains, 1)
             if d.other_cpu is not None and d.other_cpu > 0.25]
    return report.machine_notes(busy, generator, "peak figures")


def markdown_section(*, date: str, command: str, code: str, setup: str, peak_md: str,
                     reading_lines: list[str], drain_md: str, drain_line: str, events_md: str,
                     note_lines: list[str]) -> str:
    lines = [
        f"## Pipeline results {date}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {report.machine()}. The load generator, the demo upstream, the broker "
        "and the proxy under test all share these cores.",
        f"- Code: {code}",
        f"- Setup: {setup}",
        "",
        "### Throughput through the sidecar per sink and durability (medians)",
        "",
        peak_md,
        "",
        *[f"- {line}" for line in reading_lines],
        "",
        "### Sustained events/s from the write-ahead log to Kafka",
        "",
        drain_md,
        "",
        drain_line,
        "",
        "### Events check",
        "",
        events_md,
    ]
    if note_lines:
        lines += ["", "### Notes", "", *[f"- {n}" for n in note_lines]]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------
