"""Benchmark: masked events per second per core, presidio's default vs the tuned analyzer.

    .venv/bin/python bench/privacy.py            # 5 runs x 1,000 events per configuration
    .venv/bin/python bench/privacy.py --quick    # smoke mode: 3 runs x 200 events

Four kinds of event, all under the ``strict`` profile:

- ``1 KB chat request``: one sampled inference whose event carries one 1 KiB OpenAI chat
  request body (system + user message, two planted personal values or secrets) and
  nothing else: the issue's unit, one masked 1 KB chat payload;
- ``... + 5 headers``: the same with five request headers (two of them allow-listed
  and masked, every one unique), as the sidecar records them;
- ``1 KB request + 1 KB response + 5 headers``: plus a 1 KiB chat completion (one more
  planted value): what a sampled chat inference carries;
- ``headers only``: an event that was not sampled (only its allow-listed headers are
  masked), the cost every inference pays.

All configurations run the same ``Masker`` on one thread (one core) over the same
events, fresh ones for every run (no event is seen twice); the analyzer and the batch
size differ (``sidecar/privacy/analyzer.py``):

- presidio default: presidio's default registry and context enhancer, one ``analyze``
  call per string (offline: no-op NLP engine, bundled suffix list for e-mail validation);
- tuned, one event a call: only the profile's recognizers, run by ``prefilter.Scanner``
  (no presidio engine): one anchor pass per family cuts exact windows, each recognizer
  scans its family's joined windows once, overlapping pattern scan, no context
  enhancement; no findings cache;
- tuned, batches of 32: ``Masker.mask_many`` as the masking worker calls it with the
  batch the pipeline hands it (up to 256 events; 32 KiB of text per analyzer call);
  no findings cache;
- tuned, batches of 32, cache: the same with the findings cache the sidecar runs with,
  which here only helps with the system prompt (every header value and user message is
  unique; real traffic repeats user agents, addresses and, in chat, the whole history).

Prints a markdown table: median events/s of the runs (min-max), p50/p99 per event from
the median run, and how many planted values were left raw in the events (should be 0).
"""

from __future__ import annotations

import argparse
import dataclasses
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


def run_once(masker: Masker, events: list[tuple[Captured, list[str]]], decision: Decision,
             batch: int) -> tuple[float, list[float], int]:
    """Events/s over the run, seconds per event (per call / events in it), and planted
    values left raw in the events."""
    gc.collect()
    times: list[float] = []
    leaks = 0
    start = time.perf_counter()
    for first in range(0, len(events), batch):
        chunk = events[first:first + batch]
        t0 = time.perf_counter()
        results = masker.mask_many([(captured, decision) for captured, _ in chunk])
        times += [(time.perf_counter() - t0) / len(chunk)] * len(chunk)
        if decision.captured:
            for result, (_, planted) in zip(results, chunk, strict=True):
                blob = orjson.dumps(result.payload).decode()
                leaks += sum(value in blob for value in planted)
    elapsed = time.perf_counter() - start
    return len(events) / elapsed, times, leaks


def request_only(events: list[tuple[Captured, list[str]]], headers: bool = True
                 ) -> list[tuple[Captured, list[str]]]:
    """The events without their response (and without headers unless ``headers``): one
    1 KB chat payload each, and the planted values that were in what is left."""
    out = []
    for captured, planted in events:
        kept = dataclasses.replace(captured, response_body=None, response_content_type=None,
                                   request_headers=captured.request_headers if headers else None)
        request = (kept.request_body or b"").decode()
        out.append((kept, [v for v in planted if orjson.dumps(v).decode()[1:-1] in request]))
    return out


def _as_is(events: list[tuple[Captured, list[str]]]) -> list[tuple[Captured, list[str]]]:
    return events


KINDS_OF_EVENT = (
    ("1 KB chat request", Decision(True, "sampled"), lambda e: request_only(e, headers=False)),
    ("1 KB chat request + 5 headers", Decision(True, "sampled"), request_only),
    ("1 KB request + 1 KB response + 5 headers", Decision(True, "sampled"), _as_is),
    ("headers only", Decision(False, "not_sampled"), _as_is))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 runs x 200 events")
    args = parser.parse_args()
    runs, n = (3, 200) if args.quick else (max(3, args.runs), args.events)
    profile = load_profile("strict")
    kinds = len(KINDS_OF_EVENT)
    batches = [make_events(n, seed=42 + run) for run in range(kinds * runs + 1)]  # fresh
    events = batches[0]
    sizes = [len(c.request_body or b"") for c, _ in events]
    print(f"{n} events; request body {statistics.median(sizes):.0f} B median, "
          f"response {statistics.median(len(c.response_body or b'') for c, _ in events):.0f} B; "
          f"profile strict ({len(profile.entities)} entities); {runs} runs each, one thread",
          file=sys.stderr)
    rows = []
    configurations = (("presidio default", False, 0, 1),
                      ("tuned, one event a call", True, 0, 1),
                      ("tuned, batches of 32", True, 0, 32),
                      ("tuned, batches of 32, cache", True, 8192, 32))
    for label, tuned, cache_size, batch in configurations:
        started = time.perf_counter()
        analyzer = build_analyzer(profile, tuned=tuned, cache_size=cache_size)
        build_s = time.perf_counter() - started
        masker = Masker(profile, analyzer, HASH_KEY)
        for row, (what, decision, pick) in enumerate(KINDS_OF_EVENT):
            masker.mask_many([(captured, decision) for captured, _ in pick(batches[0][:40])])
            results = [run_once(masker, pick(batches[1 + row * runs + run]), decision, batch)
                       for run in range(runs)]
            rates = sorted(r[0] for r in results)
            median_run = sorted(results, key=lambda r: r[0])[len(results) // 2]
            per_event = sorted(median_run[1])
            rows.append((label, what, statistics.median(rates), rates[0], rates[-1],
                         per_event[len(per_event) // 2] * 1e6,
                         per_event[int(len(per_event) * 0.99)] * 1e6,
                         median_run[2] if decision.captured else None, build_s))
            print(f"  {label} / {what}: {statistics.median(rates):,.0f} events/s",
                  file=sys.stderr)
    print("\n| analyzer | event | events/s per core (median, min-max) | p50 | p99 "
          "| values left raw | build |")
    print("|---|---|---|---|---|---|---|")
    for label, what, med, lo, hi, p50, p99, leaks, build_s in rows:
        print(f"| {label} | {what} | {med:,.0f} ({lo:,.0f}-{hi:,.0f}) | {p50:,.0f} us "
              f"| {p99:,.0f} us | {'n/a' if leaks is None else leaks} | {build_s:.2f} s |")
    print("\np50/p99 of a batched configuration: a call's time divided by its events.")
    for what, _, _ in KINDS_OF_EVENT[:3]:
        default = next(r[2] for r in rows if r[0] == "presidio default" and r[1] == what)
        for name in ("tuned, one event a call", "tuned, batches of 32"):
            rate = next(r[2] for r in rows if r[0] == name and r[1] == what)
            print(f"\n{what}: {name} / presidio default: {rate / default:.1f}x")
    payloads = next(r[2] for r in rows
                    if r[0] == "tuned, batches of 32" and r[1] == KINDS_OF_EVENT[0][0])
    print(f"\nMasked 1 KB chat payloads per second per core (tuned, batches of 32, no "
          f"cache): **{payloads:,.0f}** (aim: 2,000).")


if __name__ == "__main__":
    main()
