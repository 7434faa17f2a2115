"""Zero raw values end to end: the labelled corpus as real HTTP through a real sidecar.

``test_corpus.py`` checks the masker directly. Here the same generated corpus (1,000
inferences, ``build_corpus``) goes over the wire: each sample's body, query string and
headers (``Authorization``, ``Cookie``, ``X-Api-Key`` included) through a sidecar process
(``python -m sidecar serve``) running the shipped ``strict`` profile with ``sample_rate``
raised to 1.0, so every event carries its masked payload, and the masking runs in the
real worker process. The upstream echoes the last chat message, so planted values come
back in the response bodies too. Durability is the default (``sync``): every event goes
through the write-ahead log before the events file.

After SIGTERM and a clean exit: one schema-valid event per request, entity counts and a
sampled capture on every event, and no planted value of an entity ``strict`` masks (as
is, or URL-encoded), nor any credential header value, in the events file, the sidecar's
own log (its stderr, the masking worker's included) or any byte of the write-ahead log.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import jsonschema
import orjson
import pytest
from corpus import Sample, build_corpus

from sidecar.privacy.profile import PrivacyProfile, load_profile

N_SAMPLES = 1000
CONCURRENCY = 20
CREDENTIAL_HEADERS = {"authorization", "cookie", "x-api-key"}
SCHEMAS = {schema["properties"]["type"]["const"]: schema for schema in (
    orjson.loads(p.read_bytes())
    for p in (Path(__file__).resolve().parents[2] / "sidecar" / "schemas").glob("*.json"))}
# An ITIN (9XX-7X-XXXX) has the shape of an SSN: it is redacted, but counted as US_SSN.
COUNTED_AS = {"US_ITIN": "US_SSN"}
KSERVE_PATH = "/error/503"  # the demo kserve route takes numbers only: an error route


def strict_sampling_everything(tmp_path: Path) -> Path:
    """The shipped ``strict`` profile, ``sample_rate`` line changed to 1.0."""
    text = Path(load_profile("strict").source).read_text()
    lines = text.splitlines()
    assert sum(line.startswith("sample_rate:") for line in lines) == 1
    path = tmp_path / "strict-sampled.yaml"
    path.write_text("\n".join("sample_rate: 1.0" if line.startswith("sample_rate:") else line
                              for line in lines) + "\n")
    assert load_profile(path).sample_rate == 1.0
    return path


def route(sample: Sample) -> str:
    """The path a sample goes to: the one the demo server answers for its shape."""
    body = sample.captured.request_body or b""
    if "text/plain" in (sample.captured.request_content_type or ""):
        return "/text"
    request = orjson.loads(body)
    if "messages" in request:
        return "/v1/chat/completions"
    if "prompt" in request:
        return "/v1/completions"
    return KSERVE_PATH


def masked_values(profile: PrivacyProfile, samples: list[Sample]
                  ) -> list[tuple[str, str, str, str]]:
    """(piece, entity, value, where) for every planted value the profile masks: the value
    as is, URL-encoded (test_corpus.py's rule) and upper-cased."""
    pieces = []
    for sample in samples:
        for entity, value, where in sample.labels:
            rule = profile.rule(entity)
            if rule is None or rule.operator == "keep":
                continue
            # The demo's /text endpoint answers in upper case: that copy must go too.
            for piece in dict.fromkeys([value, quote_plus(value), value.upper()]):
                pieces.append((piece, entity, value, where))
    return pieces


def credential_values(samples: list[Sample]) -> set[str]:
    """Every credential header value, whole and its secret part after the scheme/name."""
    values: set[str] = set()
    for sample in samples:
        for name, value in sample.captured.request_headers:
            if name.lower() in CREDENTIAL_HEADERS:
                values.add(value)
                values.add(re.split(r"[ =]", value, maxsplit=1)[-1])
    return values


async def send_all(url: str, samples: list[Sample]) -> tuple[dict[str, int], Counter[int]]:
    """Each sample once, ``CONCURRENCY`` at a time: inference id -> status."""
    received: dict[str, int] = {}
    statuses: Counter[int] = Counter()
    queue: asyncio.Queue[Sample] = asyncio.Queue()
    for sample in samples:
        queue.put_nowait(sample)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            sample = queue.get_nowait()
            captured = sample.captured
            path = route(sample) + (f"?{captured.query}" if captured.query else "")
            async with session.post(url + path, data=captured.request_body,
                                    headers=captured.request_headers) as r:
                await r.read()
                inference_id = r.headers["x-inference-id"]
                assert inference_id not in received, inference_id
                received[inference_id] = r.status
                statuses[r.status] += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.wait_for(
            asyncio.gather(*(worker(session) for _ in range(CONCURRENCY))), 90)
    return received, statuses


async def wait_ready(admin_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(400):  # 20 s: the masking worker imports presidio first
            async with session.get(admin_url + "/readyz") as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("the sidecar never became ready (masking worker)")


def find(haystack: bytes, needles: list[tuple[str, str, str, str]]
         ) -> list[tuple[str, str, str, str]]:
    return [needle for needle in needles if needle[0].encode() in haystack]


def describe(place: str, leaks: list[tuple[str, str, str, str]], limit: int = 15) -> str:
    shapes = Counter((entity, where.split(":")[0] if not where.startswith("header") else where)
                     for _, entity, _, where in leaks)
    sample = "\n".join(f"  {entity} planted in {where}: {value!r} (found as {piece!r})"
                       for piece, entity, value, where in leaks[:limit])
    return (f"{len(leaks)} raw planted value(s) in {place}; by (entity, place): "
            f"{dict(shapes)}\n{sample}")


@pytest.mark.slow
async def test_the_corpus_over_http_leaves_no_raw_value_anywhere(
        spawn_sidecar: Any, tmp_path: Path) -> None:
    corpus = build_corpus(N_SAMPLES, seed=4)
    assert len(corpus) >= 1000
    profile_path = strict_sampling_everything(tmp_path)
    profile = load_profile(profile_path)
    sidecar = await spawn_sidecar(privacy_profile=str(profile_path), log_level="debug")
    await wait_ready(sidecar.admin_url)

    received, statuses = await send_all(sidecar.url, corpus)
    assert len(received) == len(corpus)
    assert set(statuses) == {200, 503}, statuses
    sidecar.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(sidecar.proc.wait(), 60) == 0, sidecar.log()

    events_file = tmp_path / "events.jsonl"
    events_raw = events_file.read_bytes()
    log_raw = sidecar.log_path.read_bytes()
    wal_files = sorted(p for p in (tmp_path / "wal").rglob("*") if p.is_file())
    wal_raw = b"".join(p.read_bytes() for p in wal_files)
    assert SCHEMAS and wal_files, "the write-ahead log left no file to search"

    # 1. One schema-valid event per request, with the id the client was given.
    envelopes = [orjson.loads(line) for line in events_raw.splitlines()]
    for envelope in envelopes:
        jsonschema.validate(envelope, SCHEMAS[envelope["type"]])
    events = [e["data"] for e in envelopes]
    ids = [e["inference_id"] for e in events]
    assert len(ids) == len(set(ids)) == len(received), "duplicate or missing events"
    assert set(ids) == set(received)
    status_of = {e["inference_id"]: e["status"] for e in events}
    assert status_of == received

    # 4. Every event was masked and captured; the entities planted were counted.
    for event in events:
        privacy = event["privacy"]
        assert privacy["failure"] is None, privacy
        assert privacy["payload_captured"] is True, privacy
        expected = "sampled" if event["status"] < 400 else "always_capture:errors"
        assert privacy["capture_reason"] == expected, (event["status"], privacy)
        assert event["payload"] is not None and event["headers"] is not None
        assert not set(event["headers"]["request"]) & CREDENTIAL_HEADERS
    counted: Counter[str] = Counter()
    for event in events:
        counted.update(event["privacy"]["entity_counts"])
    planted = {entity for s in corpus for entity, _, where in s.labels if where == "request"}
    missing = {entity for entity in planted
               if counted[entity] <= 0 and counted[COUNTED_AS.get(entity, entity)] <= 0}
    assert not missing, f"planted in request bodies, never counted: {sorted(missing)}"

    # 2. No raw planted value of a masked entity in the events, the log or the WAL.
    needles = masked_values(profile, corpus)
    assert len(needles) > 5000
    problems = [describe(place, leaks) for place, blob in (
        ("the events file", events_raw), ("the sidecar's log (stderr)", log_raw),
        ("the write-ahead log", wal_raw)) if (leaks := find(blob, needles))]

    # 3. No credential header value at all, whatever it holds.
    secrets = credential_values(corpus)
    assert len(secrets) > 1000
    for place, blob in (("the events file", events_raw), ("the sidecar's log", log_raw),
                        ("the write-ahead log", wal_raw)):
        found = sorted(s for s in secrets if s.encode() in blob)
        if found:
            problems.append(f"{len(found)} credential header value(s) in {place}: {found[:5]}")
    assert not problems, "\n\n".join(problems)
