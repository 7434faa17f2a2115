"""``replay``'s HTML report: one self-contained page (inline CSS and SVG drawn here; no
script, no external resource), with the summary, the tables, and for each detector its
statistic against its threshold over the events (x: event index, with event times as
labels), alerts as markers. P-values get a logarithmic y axis. A threshold far above
everything else (ADWIN's bound while its shadow window is short) is cut at the top.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Final

from sidecar.tools.series import DetectorRun, Point, TimeAxis

WIDTH, HEIGHT = 900, 230
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 12, 46

# What each type's curve is (see the detector modules' docstrings and ``observe``).
STATISTICS: Final = {
    "adwin": "change of the window mean a cut at the shadow window's boundary would make, "
             "against what ADWIN's bound allows there (ADWIN alerts on the first of all its "
             "cuts to cross: often before this one)",
    "page_hinkley": "cumulative sum of standardised deviations (in standard deviations), "
                    "against threshold",
    "kswin": "p-value of the last Kolmogorov-Smirnov test, against alpha: alerts below",
    "chi_square": "chi-square of the recent window against the reference window, against "
                  "its critical value at alpha",
    "rate_burst": "the event's client's decayed request count over short_s, against its "
                  "line (global bursts: markers only)",
    "near_duplicate": "prompts in the window near-identical to the event's, against min_count",
    "extraction": "the client's sliding-window request count, against min_requests (an "
                  "alert also needs min_distinct)",
    "token_usage": "the client's large-request score (input or output, the larger), "
                   "against min_score",
    "error_probing": "the client's decayed error count, against min_errors (an alert also "
                     "needs the error-rate condition)",
    "signatures": "matched rules it alerts on, per event, against 1",
    "policy": "violated intended-use constraints per event, against 1",
}

LOG_SCALE: Final = frozenset({"kswin"})  # p-values: their threshold is a few decades down

STYLE: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 960px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
section { margin: 22px 0; } h2 { font-size: 16px; margin: 0 0 2px; }
p.what { margin: 0 0 4px; color: #555; font-size: 13px; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.stat { fill: none; stroke: #1f5fbf; stroke-width: 1.2; }
.line { fill: none; stroke: #c0392b; stroke-width: 1.2; stroke-dasharray: 5 3; }
.alert { fill: #f39c12; stroke: #8a5300; stroke-width: 0.8; }
.axis { stroke: #999; stroke-width: 1; } .grid { stroke: #eee; stroke-width: 1; }
"""


def render(title: str, summary: Sequence[str], headers: Sequence[str],
           rows: Sequence[Sequence[str]], runs: Sequence[DetectorRun], events: int,
           times: TimeAxis, sweep: tuple[Sequence[str], Sequence[Sequence[str]]] | None) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in summary]
    parts.append(_table(headers, rows))
    if sweep is not None:
        parts += ["<h2>Sweep: alerts per setting</h2>", _table(*sweep)]
    for run in runs:
        what = STATISTICS.get(run.type, "the detector's statistic, against its threshold")
        parts += [f'<section class="detector" id="{html.escape(run.name)}">',
                  f"<h2>{html.escape(run.name)} <small>({html.escape(run.type)}, "
                  f"{html.escape(run.mode)}): {run.alerts} alert(s)</small></h2>",
                  f'<p class="what">{html.escape(what)}</p>', plot(run, events, times),
                  "</section>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td{_cls(v)}>{html.escape(v)}</td>' for v in row) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cls(value: str) -> str:
    return ' class="n"' if value.replace(".", "", 1).isdigit() else ""


def plot(run: DetectorRun, events: int, times: TimeAxis) -> str:
    """One SVG: the statistic (line), the threshold (dashed), alerts (dots)."""
    points = run.series.points()
    values = [v for p in points if (v := p[1]) is not None and math.isfinite(v)]
    values += [v for m in run.markers if (v := m.statistic) is not None and math.isfinite(v)]
    lines = sorted(v for p in points if (v := p[2]) is not None and math.isfinite(v))
    if lines:  # the threshold's 90th percentile, so a rare huge one does not flatten the rest
        values.append(lines[int(len(lines) * 0.9)] if values else lines[-1])
    svg = [f'<svg class="plot" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(run.name)}">']
    if not values:
        svg.append(f'<text x="{LEFT}" y="{HEIGHT // 2}">no statistic: the detector skipped '
                   "every event or was still warming up</text></svg>")
        return "".join(svg)
    log = run.type in LOG_SCALE or (run.type not in STATISTICS and min(values) > 0
                                    and max(values) / min(values) > 1e4)
    scale = _Scale(values, events, log and min(values) > 0)
    svg += scale.axes(times)
    for k in (1, 2):
        style = "stat" if k == 1 else "line"
        for segment in _segments(points, k):
            coords = " ".join(f"{scale.x(i):.1f},{scale.y(v):.1f}" for i, v in segment)
            if len(segment) == 1:
                coords += f" {scale.x(segment[0][0]) + 1:.1f},{scale.y(segment[0][1]):.1f}"
            svg.append(f'<polyline class="{style}" points="{coords}"/>')
    for m in run.markers:
        value = next((v for v in (m.statistic, m.threshold) if v is not None
                      and math.isfinite(v)), None)
        y = scale.y(value) if value is not None else TOP
        svg.append(f'<circle class="alert" cx="{scale.x(m.index):.1f}" cy="{y:.1f}" r="3.5">'
                   f"<title>{html.escape(m.label)}</title></circle>")
    svg.append("</svg>")
    return "".join(svg)


def _segments(points: Sequence[Point], k: int) -> list[list[tuple[int, float]]]:
    """Runs of consecutive points whose k-th part (1: statistic, 2: threshold) is known."""
    out: list[list[tuple[int, float]]] = [[]]
    for point in points:
        value = point[k]
        if value is None or not math.isfinite(value):
            if out[-1]:
                out.append([])
        else:
            out[-1].append((point[0], value))
    return [s for s in out if s]


class _Scale:
    def __init__(self, values: Sequence[float], events: int, log: bool) -> None:
        low, high = min(values), max(values)
        self.log = log
        if log:
            low, high = math.log10(low) - 0.2, math.log10(high) + 0.2
        else:
            low = min(low, 0.0)
            high += (high - low) * 0.05
        self.low, self.high = low, high if high > low else low + 1.0
        self.last = max(events - 1, 1)

    def x(self, index: int) -> float:
        return LEFT + index / self.last * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        v = math.log10(max(value, 1e-300)) if self.log else value
        y = HEIGHT - BOTTOM - (v - self.low) / (self.high - self.low) * (HEIGHT - TOP - BOTTOM)
        return min(max(y, TOP), HEIGHT - BOTTOM)  # off the chart: on its edge

    def ticks(self) -> list[float]:
        """Round values (1, 2 or 5 x 10^k apart; powers of ten on a log axis)."""
        if self.log:
            ticks = [float(k) for k in range(math.ceil(self.low), math.floor(self.high) + 1)]
            step = max(1, math.ceil(len(ticks) / 6))
            return ticks[::step]
        rough = (self.high - self.low) / 4
        power = 10 ** math.floor(math.log10(rough))
        step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
        first = math.ceil(self.low / step)
        return [k * step for k in range(first, math.floor(self.high / step) + 1)]

    def axes(self, times: TimeAxis) -> list[str]:
        bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
        out = []
        for v in self.ticks():
            y = self.y(10 ** v if self.log else v)
            label = f"{10 ** v:.0e}" if self.log else f"{v:.4g}"
            out.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>'
                       f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for i in range(5):
            index = round(self.last * i / 4)
            x = self.x(index)
            stamp = (times.near(index) or "")[:19].replace("T", " ")
            anchor = "end" if i == 4 else "middle"
            out.append(f'<line class="axis" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" '
                       f'y2="{bottom + 4}"/><text x="{x:.1f}" y="{bottom + 16}" '
                       f'text-anchor="{anchor}">{index}</text><text x="{x:.1f}" '
                       f'y="{bottom + 30}" text-anchor="{anchor}">{html.escape(stamp)}</text>')
        out.append(f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
                   f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/>')
        return out
