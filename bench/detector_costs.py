"""Benchmark: per-event cost of each default detector and of the whole default set.

    .venv/bin/python bench/detector_costs.py            # 5 runs x 20,000 events
    .venv/bin/python bench/detector_costs.py --quick    # 3 runs x 5,000 events
    .venv/bin/python bench/detector_costs.py --scan-only  # the signature scan table alone

Events are benign traffic from tests/detectors/attacks.py (scenarios.py's traffic with
realistic arrival times, 2,000 Zipf clients and prompt ``features``; built before timing).
Each detector is built fresh per run and warmed on 3,000 events first (windows full, so
the tests run at their steady-state rate). Two more rows: ``prompt_features`` of the
bench's 1 KB chat prompt (bench/loadgen.py), and the sidecar's detection worker as a
whole (``DetectionService.batch``: decode the event, parse the body, prompt features,
token usage, the default set; batches of 256), which is what one inference costs the
worker process. Prints a markdown table of the median per-event cost (min-max over runs).

A second table: what the enforce gate's signature scan costs the event loop per 1 KB
prompt by script (``SignatureSet.scan``, as ``sidecar/detection/gate.py`` calls it), with
the part the look-alike skeleton adds (``detectors/confusables.py``: ``normalise`` +
``match`` without it, measured in the same run), and each as a ratio to the ASCII
prompt's scan.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "detectors"))
sys.path.append(str(Path(__file__).resolve().parent))  # loadgen; after the package root

import orjson
from attacks import benign
from loadgen import chat_body

from detectors.config import load_config
from detectors.registry import DetectorSet
from detectors.text import normalise, prompt_features, signatures
from sidecar.detection.extract import parse_request
from sidecar.detection.service import DetectionService, Item

WARM = 3_000


def per_event_us(make: object, events: list[dict[str, object]]) -> float:
    target = make()  # type: ignore[operator]
    for event in events[:WARM]:
        target.update(event)
    timed = events[WARM:]
    gc.disable()
    start = time.perf_counter()
    for event in timed:
        target.update(event)
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed / len(timed) * 1e6


RESPONSE = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 230, "completion_tokens": 40}})


def prompt_us(n: int) -> float:
    _, text = parse_request(chat_body(False), "application/json")
    gc.disable()
    start = time.perf_counter()
    for _ in range(n):
        prompt_features(text)
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed / n * 1e6


def worker_us(events: list[dict[str, object]]) -> float:
    """DetectionService.batch per event, with the 1 KB chat body on every event."""
    config, body = load_config(), chat_body(False)
    headers = {"content-type": "application/json"}
    items: list[Item] = [
        (orjson.dumps({k: v for k, v in e.items() if k not in ("features", "_t")}),
         body, "application/json", RESPONSE, headers) for e in events]
    service = DetectionService(config)
    for i in range(0, WARM, 256):
        service.batch(items[i:min(i + 256, WARM)])
    timed = items[WARM:]
    gc.disable()
    start = time.perf_counter()
    for i in range(0, len(timed), 256):
        service.batch(timed[i:i + 256])
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed / len(timed) * 1e6


# About 1 KB of ordinary text per script (the scan's cost depends on the script only).
SCRIPTS = {
    "ASCII (English)": "Hello, how are you? Tell me about the weather in Paris and London. ",
    "accented Latin": "Bonjour, ça va ? Décris-moi la météo à Genève et à Zürich, s'il te plaît. ",
    "Cyrillic": "Привет, как дела? Расскажи мне о погоде в Москве и Санкт-Петербурге. ",
    "Greek": "Γεια σου, τι κάνεις; Πες μου για τον καιρό στην Αθήνα και τη Θεσσαλονίκη. ",
    "CJK": "今日の天気はどうですか。東京と大阪について教えてください。",
}


def scan_us(text: str, n: int, skeletons: bool) -> float:
    rules = signatures()
    gc.disable()
    start = time.perf_counter()
    for _ in range(n):
        if skeletons:
            rules.scan(text)  # what the gate runs
        else:
            rules.match(normalise(text))  # the same without the skeleton
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed / n * 1e6


def scan_table(runs: int, n: int) -> None:
    texts = {name: (line * (1 + 1024 // len(line.encode())))[:1024] for name, line in
             SCRIPTS.items()}
    costs = {name: ([scan_us(t, n, True) for _ in range(runs)],
                    [scan_us(t, n, False) for _ in range(runs)]) for name, t in texts.items()}
    base = statistics.median(costs["ASCII (English)"][0])
    print(f"\nSignature scan per 1 KB prompt (SignatureSet.scan), {runs} runs x {n:,}; µs\n")
    print("| script | median µs | min-max | of which skeletons | vs ASCII |")
    print("|---|---:|---:|---:|---:|")
    for name, (with_, without) in costs.items():
        median = statistics.median(with_)
        print(f"| {name} | {median:.1f} | {min(with_):.1f}-{max(with_):.1f} | "
              f"{median - statistics.median(without):.1f} | {median / base:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scan-only", action="store_true",
                        help="Only the signature scan table (about a minute).")
    args = parser.parse_args()
    runs, n = (3, 5_000) if args.quick else (args.runs, args.events)
    if args.scan_only:
        scan_table(runs, n // 4)
        return
    config = load_config()
    events = list(benign(WARM + n, seed=1))
    rows: list[tuple[str, str, list[float]]] = []
    for spec in config.specs:
        costs = [per_event_us(lambda s=spec: DetectorSet([s]), events) for _ in range(runs)]
        rows.append((spec.name, spec.type, costs))
    whole = [
        per_event_us(lambda: DetectorSet(config.specs, config.digest), events)
        for _ in range(runs)
    ]
    rows.append(("**default set**", f"{len(config.specs)} detectors", whole))
    rows.append(("prompt_features, 1 KB chat prompt", "text.py",
                 [prompt_us(n) for _ in range(runs)]))
    rows.append(("**detection worker, per inference**", "service.py",
                 [worker_us(events) for _ in range(runs)]))
    print(f"{runs} runs x {n:,} events, after {WARM:,} warm-up events; µs per event\n")
    print("| detector | type | median µs/event | min-max |")
    print("|---|---|---:|---:|")
    for name, kind, costs in rows:
        print(f"| {name} | {kind} | {statistics.median(costs):.2f} | "
              f"{min(costs):.2f}-{max(costs):.2f} |")
    scan_table(runs, n // 4)


if __name__ == "__main__":
    main()
