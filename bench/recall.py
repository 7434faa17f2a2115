"""Recall per entity on the test corpus: presidio's default recognizers vs the tuned analyzer.

    .venv/bin/python bench/recall.py              # 1,200 samples (the corpus's default)
    .venv/bin/python bench/recall.py --samples 200
    .venv/bin/python bench/recall.py --written "full-width digits"   # or --written all

The corpus is ``tests/privacy/corpus.py``: generated chat, completion, KServe and text
traffic with every pattern entity planted in bodies, query strings and headers, each
value labelled with its type and place. Each analyzer is built for the ``strict``
profile and run on every string a sample's event would hold (the bodies as sent, the
query string decoded, each header value) at the profile's score threshold.

A planted value is *found* when one finding covers all of it (whatever its type: the
value is masked either way), *found as its type* when a finding of its own entity type
does. Recall = found / planted, per entity. Prints a markdown table.

``--written`` rewrites the whole corpus, planted values included, as numbers get written
outside ASCII (``corpus.WRITINGS``: full-width or Arabic-Indic digits, no-break spaces,
Unicode hyphens, prolonged sound marks); ``all`` prints one table per writing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote_plus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "privacy"))

from corpus import WRITINGS, Sample, build_corpus, written
from pii_values import HASH_KEY

from sidecar.privacy.analyzer import Analyzer, Finding, build_analyzer
from sidecar.privacy.masker import Masker
from sidecar.privacy.profile import PrivacyProfile, load_profile


def places(sample: Sample) -> dict[str, str]:
    """Each place a value was planted in, and the text there."""
    captured = sample.captured
    texts = {"request": (captured.request_body or b"").decode(),
             "response": (captured.response_body or b"").decode(),
             "query": unquote_plus(captured.query or "")}
    for name, value in captured.request_headers or []:  # type: ignore[misc]
        texts[f"header:{name.lower()}"] = value
    return texts


def score(analyzer: Analyzer, profile: PrivacyProfile, corpus: list[Sample],
          writing: dict[int, str]
          ) -> tuple[Counter[str], Counter[str], Counter[str], float, int]:
    """Planted, found and found-as-its-type values per entity, seconds taken, and the
    samples on which the analyzer raised (nothing found in them: counted as missed)."""
    floor = Masker(profile, analyzer, HASH_KEY)._floor
    planted: Counter[str] = Counter()
    found: Counter[str] = Counter()
    typed: Counter[str] = Counter()
    raised = 0
    started = time.perf_counter()
    for sample in corpus:
        sample = written(sample, writing)
        texts = places(sample)
        names = list(texts)
        try:
            found_in = analyzer.analyze([texts[n] for n in names], profile.entities, floor)
        except Exception:  # the masker fails closed on it: the payload is dropped
            found_in = [[] for _ in names]
            raised += 1
        findings = dict(zip(names, found_in, strict=True))
        for entity, value, where in sample.labels:
            planted[entity] += 1
            start = texts[where].find(value)
            if start < 0:
                raise SystemExit(f"corpus: {entity} value not found in {where}")
            covering: list[Finding] = [f for f in findings[where]
                                       if f.start <= start and start + len(value) <= f.end]
            found[entity] += bool(covering)
            typed[entity] += any(f.entity_type == entity for f in covering)
    return planted, found, typed, time.perf_counter() - started, raised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--written", choices=["ascii", "all", *WRITINGS], default="ascii",
                        help="How the corpus's numbers are written (default: as generated).")
    args = parser.parse_args()
    profile = load_profile("strict")
    corpus = build_corpus(args.samples, seed=args.seed)
    analyzers = build_analyzer(profile, tuned=False), \
        build_analyzer(profile, tuned=True, cache_size=0)
    writings = list(WRITINGS) if args.written == "all" else [args.written]
    for name in writings:
        table(analyzers, profile, corpus, name, args.seed)


def table(analyzers: tuple[Analyzer, Analyzer], profile: PrivacyProfile,
          corpus: list[Sample], written: str, seed: int) -> None:
    writing = WRITINGS.get(written, {})
    default = score(analyzers[0], profile, corpus, writing)
    tuned = score(analyzers[1], profile, corpus, writing)
    planted = default[0]
    print(f"{len(corpus):,} samples (seed {seed}), {sum(planted.values()):,} planted values, "
          f"written: {written}; profile strict; presidio default {default[3]:.1f} s, "
          f"tuned {tuned[3]:.1f} s\n")
    print("| entity | planted | presidio default: found | as its type "
          "| tuned: found | as its type |")
    print("|---|---:|---:|---:|---:|---:|")

    def pct(part: int, whole: int) -> str:
        return f"{100 * part / whole:.1f}%"

    lower = []
    for entity in sorted(planted):
        n = planted[entity]
        print(f"| {entity} | {n:,} | {pct(default[1][entity], n)} | {pct(default[2][entity], n)} "
              f"| {pct(tuned[1][entity], n)} | {pct(tuned[2][entity], n)} |")
        if tuned[1][entity] < default[1][entity] or tuned[2][entity] < default[2][entity]:
            lower.append(entity)
    total = sum(planted.values())
    print(f"| all | {total:,} | {pct(sum(default[1].values()), total)} "
          f"| {pct(sum(default[2].values()), total)} | {pct(sum(tuned[1].values()), total)} "
          f"| {pct(sum(tuned[2].values()), total)} |")
    print("\nTuned recall below presidio default's for: " + (", ".join(lower) or "no entity"))
    for name, result in (("presidio default", default), ("tuned", tuned)):
        if result[4]:
            print(f"\n{name} raised on {result[4]:,} samples (their values counted as missed; "
                  "the masker drops such a payload)")
    print()


if __name__ == "__main__":
    main()
