"""Benchmark: masked events per second per core, presidio's default vs the tuned analyzer.

    .venv/bin/python bench/privacy.py            # 5 runs x 1,000 events per configuration
    .venv/bin/python bench/privacy.py --quick    # smoke mode: 3 runs x 200 events

One event is what the pipeline masks for one sampled inference under the ``strict``
profile: a 1 KiB OpenAI chat request (system + user message, two planted personal values
or secrets), a 1 KiB chat completion (one planted value), five request headers (two of
them allow-listed and masked) and no query string. Also measured: an event that was not
sampled (only its allow-listed headers are masked), the cost every inference pays.

All configurations run the same ``Masker`` on one thread (one core) over the same
events, fresh ones for every run (no event is seen twice); only the analyzer differs
(``sidecar/privacy/analyzer.py``):

- presidio default: presidio's default registry and context enhancer, one ``analyze``
  call per string (offline: no-op NLP engine, bundled suffix list for e-mail validation);
- tuned, no cache: only the profile's recognizers, run by ``prefilter.Scanner`` (no
  presidio engine): one anchor pass per family cuts exact windows, each recognizer scans
  its family's joined windows once, overlapping pattern scan, no context enhancement;
- tuned: the same plus the findings cache, which here only helps with the system prompt
  (every header value and user message is unique; real traffic repeats user agents and
  addresses, so the headers-only figure is a floor).

Prints a markdown table: median events/s of the runs (min-max), p50/p99 per event from
the median run, and how many planted values were left raw in the events (should be 0).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "privacy"))

from corpus import FILLER
from pii_values import GENERATORS, HASH_KEY

from sidecar.privacy.analyzer import build_analyzer
from sidecar.privacy.masker import Captured, Masker
from sidecar.privacy.profile import load_profile
from sidecar.privacy.sampling import Decision

TARGET = 1024
KINDS = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "API_KEY",
         "IP_ADDRESS", "UK_NHS", "JWT"]


def _text(rng: random.Random, planted: list[str], n_values: int, size: int) -> str:
    values = [GENERATORS[rng.choice(KINDS)](rng) for _ in range(n_values)]
    planted.extend(values)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(FILLER))
        if values and rng.random() < 0.3:
            words.append(f"My details: {values.pop()}.")
    words += [f"Also {v}." for v in values]
    return " ".join(words)


def make_events(n: int, seed: int) -> list[tuple[Captured, list[str]]]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        planted: list[str] = []
        user = _text(rng, planted, 2, TARGET - 200)
        request = {"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
            {"role": "system", "content": "You are a helpful assistant for a bank."},
            {"role": "user", "content": user}]}
        answer = _text(rng, planted, 1, TARGET - 260)
        response = {"id": f"chatcmpl-{i}", "object": "chat.completion", "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 250, "completion_tokens": 200}}
        headers = [("Content-Type", "application/json"), ("Accept", "application/json"),
                   ("Authorization", "Bearer " + GENERATORS["API_KEY"](rng)),
                   ("User-Agent", f"acme-app/2.3 (+{GENERATORS['EMAIL_ADDRESS'](rng)})"),
                   ("X-Forwarded-For", GENERATORS["IP_ADDRESS"](rng))]
        captured = Captured(f"0190a1b2-{i:04x}-7000-8000-000000000000", status=200,
                            request_body=orjson.dumps(request),
                            request_content_type="application/json",
                            response_body=orjson.dumps(response),
                            response_content_type="application/json", request_headers=headers)
        events.append((captured, planted))
    return events


def run_once(masker: Masker, events: list[tuple[Captured, list[str]]],
             decision: Decision) -> tuple[float, list[float], int]:
    """Events/s over the batch, per-event seconds, and planted values left raw."""
    gc.collect()
    times: list[float] = []
    leaks = 0
    start = time.perf_counter()
    for captured, planted in events:
        t0 = time.perf_counter()
        result = masker.mask(captured, decision)
        times.append(time.perf_counter() - t0)
        if decision.captured:
            blob = orjson.dumps(result.payload).decode()
            leaks += sum(value in blob for value in planted)
    elapsed = time.perf_counter() - start
    return len(events) / elapsed, times, leaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 runs x 200 events")
    args = parser.parse_args()
    runs, n = (3, 200) if args.quick else (max(3, args.runs), args.events)
    profile = load_profile("strict")
    batches = [make_events(n, seed=42 + run) for run in range(2 * runs + 1)]  # fresh per run
    events = batches[0]
    sizes = [len(c.request_body or b"") for c, _ in events]
    print(f"{n} events; request body {statistics.median(sizes):.0f} B median, "
          f"response {statistics.median(len(c.response_body or b'') for c, _ in events):.0f} B; "
          f"profile strict ({len(profile.entities)} entities); {runs} runs each, one thread",
          file=sys.stderr)
    rows = []
    configurations = (("presidio default", False, 0), ("tuned, no cache", True, 0),
                      ("tuned", True, 8192))
    for label, tuned, cache_size in configurations:
        started = time.perf_counter()
        analyzer = build_analyzer(profile, tuned=tuned, cache_size=cache_size)
        build_s = time.perf_counter() - started
        masker = Masker(profile, analyzer, HASH_KEY)
        for row, (what, decision) in enumerate((
                ("sampled: bodies + headers", Decision(True, "sampled")),
                ("not sampled: headers only", Decision(False, "not_sampled")))):
            for captured, _ in batches[0][:20]:
                masker.mask(captured, decision)  # warm up
            results = [run_once(masker, batches[1 + row * runs + run], decision)
                       for run in range(runs)]
            rates = sorted(r[0] for r in results)
            median_run = sorted(results, key=lambda r: r[0])[len(results) // 2]
            per_event = sorted(median_run[1])
            rows.append((label, what, statistics.median(rates), rates[0], rates[-1],
                         per_event[len(per_event) // 2] * 1e6,
                         per_event[int(len(per_event) * 0.99)] * 1e6,
                         median_run[2], build_s))
            print(f"  {label} / {what}: {statistics.median(rates):,.0f} events/s", file=sys.stderr)
    print("\n| analyzer | event | events/s per core (median, min-max) | p50 | p99 "
          "| values left raw | build |")
    print("|---|---|---|---|---|---|---|")
    for label, what, med, lo, hi, p50, p99, leaks, build_s in rows:
        left = str(leaks) if what.startswith("sampled") else "n/a"
        print(f"| {label} | {what} | {med:,.0f} ({lo:,.0f}-{hi:,.0f}) | {p50:,.0f} us "
              f"| {p99:,.0f} us | {left} | {build_s:.2f} s |")
    default = next(r[2] for r in rows if r[0] == "presidio default" and r[1].startswith("sampled"))
    for name in ("tuned, no cache", "tuned"):
        rate = next(r[2] for r in rows if r[0] == name and r[1].startswith("sampled"))
        print(f"\n{name} / default, sampled events: {rate / default:.1f}x")


if __name__ == "__main__":
    main()
