"""``inference-sidecar replay``: the detectors over recorded events, to tune them before
they run on live traffic (issue 5, item 8)::

    inference-sidecar replay --events events.jsonl [--detectors detectors.yaml]
        [--report replay-report.html] [--sweep DETECTOR.params.PARAM=V1,V2,...] [--quiet]

Reads the JSON-lines file the sidecar's file sink writes (``sidecar.tools.recorded``),
feeds every ``ai.inference.completed`` event's ``data`` to the detectors in file order
(``--detectors``, else the shipped default set), and prints a table per detector
(alerts, distinct clients flagged, the first alert, events it skipped) and writes an HTML
report with each detector's statistic against its threshold over the events
(``sidecar.tools.report``). Each ``--sweep`` re-runs the detectors it names with each
value, in the same pass, and prints their alerts per setting (``sidecar.tools.sweep``).

A progress bar (tqdm) goes to stderr when it is a terminal, unless ``--quiet``. Exit 0;
2 with one line for an unusable events file, detectors file or ``--sweep``; 1 if the
report cannot be written. Importing this module costs only argparse: the command line
builds every parser at start-up; the detectors, river and tqdm load in ``run``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the module itself stays cheap to import
    from detectors.config import DetectorsConfig
    from detectors.registry import DetectorSet
    from sidecar.tools.recorded import ReadStats, Recorded
    from sidecar.tools.sweep import Sweep

EXIT_CONFIG = 2
DESCRIPTION = ("Run the detectors over recorded events (the JSON-lines events file) and "
               "report, per detector, its alerts and its statistic against its threshold.")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "replay", help="Run the detectors over recorded events (tuning).",
        description=DESCRIPTION)
    parser.add_argument("--events", required=True, metavar="FILE.jsonl",
                        help="Recorded events: CloudEvents (or bare data dicts), one a line.")
    parser.add_argument("--detectors", metavar="FILE.yaml",
                        help="Detectors file (default: the shipped default set).")
    parser.add_argument("--report", default="replay-report.html", metavar="PATH",
                        help="Where the HTML report goes (default: %(default)s).")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="Re-run with each value of DETECTOR.params.PARAM (or "
                             "DETECTOR.severity, DETECTOR.mode); repeat for a product.")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    return parser


def run(args: argparse.Namespace) -> int:
    from detectors.config import DetectorConfigError, load_config
    from sidecar.tools.recorded import Recorded
    from sidecar.tools.sweep import SweepError, parse_sweep, variants

    try:
        recorded = Recorded(args.events)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _fail(f"replay: events file {args.events}: cannot read it ({reason})",
                     EXIT_CONFIG)
    try:
        config = load_config(args.detectors)
        sweeps = [parse_sweep(text) for text in args.sweep]
        settings = variants(config, sweeps) if sweeps else []
    except (DetectorConfigError, SweepError) as exc:
        # One line: a YAML error spans several (where, a caret under the place).
        text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        return _fail(f"config error: {text}", EXIT_CONFIG)
    return _replay(args, recorded, config, sweeps, settings)


def _replay(args: argparse.Namespace, recorded: Recorded, config: DetectorsConfig,
            sweeps: Sequence[Sweep],
            settings: Sequence[tuple[tuple[str, ...], DetectorsConfig]]) -> int:
    from collections import Counter

    from tqdm import tqdm  # type: ignore[import-untyped]

    from detectors.registry import DetectorSet
    from sidecar.tools.report import render
    from sidecar.tools.series import DetectorRun, TimeAxis

    detectors = DetectorSet(config.specs, config.digest)
    runs = [DetectorRun(spec.name, spec.type, spec.mode, hasattr(detector, "observe"))
            for spec, detector in zip(config.specs, detectors.detectors, strict=True)]
    by_name = {run.name: run for run in runs}
    variant_sets = [DetectorSet(c.specs, c.digest) for _, c in settings]
    variant_counts: list[Counter[str]] = [Counter() for _ in settings]
    times = TimeAxis()
    bar = tqdm(total=recorded.size, unit="B", unit_scale=True, desc="replay", leave=False,
               file=sys.stderr, disable=args.quiet or not sys.stderr.isatty())
    with bar:
        for index, (line, data, stamp) in enumerate(recorded.events(bar.update)):
            times.add(index, stamp)
            alerts = detectors.update(data)
            for run, seen in zip(runs, detectors.observe(data), strict=True):
                if seen is None:
                    run.skipped += 1
                else:  # (None, None) too: the curves break where there is nothing
                    run.series.add(index, *seen)
            for alert in alerts:
                by_name[alert.detector].alert(index, stamp, line, alert.statistic,
                                              alert.threshold, alert.client_id, alert.message)
            for variant, counts in zip(variant_sets, variant_counts, strict=True):
                counts.update(alert.detector for alert in variant.update(data))
    stats = recorded.stats
    if not stats.events and not stats.other_types and stats.malformed_count:
        # Nothing but malformed lines: not a recording (a YAML file, a .gz), not a quiet day.
        line, why = stats.malformed[0]
        return _fail(f"replay: events file {args.events}: no event in it ({stats.malformed_count}"
                     f" malformed lines, the first at line {line}: {why})", EXIT_CONFIG)
    summary = _summary(args, stats, config, detectors)
    headers = ("detector", "type", "mode", "alerts", "clients", "first alert (event, time)",
               "skipped")
    rows = [(r.name, r.type, r.mode, str(r.alerts), str(len(r.clients)),
             f"{r.first[0]} {r.first[1] or ''}".strip() if r.first else "-",
             str(r.skipped) if r.observable else "?") for r in runs]
    sweep_table = None
    if settings:
        swept = [s.name for s in settings[0][1].specs]
        sweep_table = ([s.key for s in sweeps] + [f"{name} alerts" for name in swept],
                       [[*setting, *(str(counts[name]) for name in swept)]
                        for (setting, _), counts in zip(settings, variant_counts, strict=True)])
    page = render(f"Detector replay: {args.events}", summary, headers, rows, runs,
                  stats.events, times, sweep_table)
    written = None
    try:
        with open(args.report, "w", encoding="utf-8") as out:
            out.write(page)
    except OSError as exc:
        written = exc.strerror or str(exc)
    try:
        print("\n".join(summary), end="\n\n")
        print(format_table(headers, rows))
        if sweep_table is not None:
            print("\nsweep: alerts per setting\n" + format_table(*sweep_table))
        if written is None:
            print(f"\nreport: {args.report}")
        sys.stdout.flush()
    except BrokenPipeError:  # ``replay ... | head``: the reader has gone, the report is there
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if written is not None:
        return _fail(f"replay: cannot write the report {args.report} ({written})", 1)
    return 0


def _summary(args: argparse.Namespace, stats: ReadStats, config: DetectorsConfig,
             detectors: DetectorSet) -> list[str]:
    lines = [f"replayed {stats.events} inference events from {args.events} "
             f"({stats.lines} lines); detectors: {config.source} ({config.digest})"]
    if stats.other_types:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.other_types.items()))
        lines.append(f"skipped {sum(stats.other_types.values())} other events: {kinds}")
    if stats.malformed_count:
        shown = ", ".join(f"{line} ({why})" for line, why in stats.malformed[:10])
        more = stats.malformed_count - min(10, len(stats.malformed))
        lines.append(f"skipped {stats.malformed_count} malformed lines: line {shown}"
                     + (f" and {more} more" if more else ""))
    lines += [f"detector {name} raised on {n} events (skipped them)"
              for name, n in detectors.errors.items() if n]
    lines += [f"detector {name}: observe raised on {n} events (not plotted)"
              for name, n in detectors.observe_errors.items() if n]
    return lines


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text, columns aligned; numbers to the right.

    >>> print(format_table(["name", "alerts"], [["a", "7"], ["long-name", "12"]]))
    name       alerts
    a               7
    long-name      12
    """
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    numeric = [all(_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w)
                         for c, w, right in zip(cells, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fail(message: str, status: int) -> int:
    print(f"inference-sidecar: {message}", file=sys.stderr)
    return status
