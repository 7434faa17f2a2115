"""Exactly one event per inference under concurrency, through the real JSON-lines sink."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "sidecar/schemas/ai.inference.completed.v1.json").read_text()
)
N = 1000
CONCURRENCY = 100


async def test_exactly_n_events_for_n_concurrent_requests(
    make_sidecar: Any, tmp_path: Path
) -> None:
    events_file = tmp_path / "events.jsonl"
    sc = await make_sidecar(events_file=str(events_file))
    semaphore = asyncio.Semaphore(CONCURRENCY)
    ids: list[str] = []
    paths = ["/v1/chat/completions", "/error/500", "/v2/models/m/infer", "/text"]
    bodies: list[Any] = [
        {"messages": [{"content": "hi"}]}, None,
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, None,
    ]

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with semaphore:
            k = i % len(paths)
            stream = i % 10 == 0
            body = {"messages": [{"content": "s"}], "stream": True} if stream else bodies[k]
            path = "/v1/chat/completions" if stream else paths[k]
            async with session.post(sc.url + path, json=body) as response:
                await response.read()
                ids.append(response.headers["x-inference-id"])

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.wait_for(asyncio.gather(*(one(session, i) for i in range(N))), 60)
    await sc.sidecar.stop()  # drains the queue into the file
    lines = events_file.read_bytes().splitlines()
    envelopes = [json.loads(line) for line in lines]
    for envelope in envelopes[:50]:
        jsonschema.validate(envelope, SCHEMA)
    events = [e["data"] for e in envelopes]
    assert len(events) == N
    assert len({e["inference_id"] for e in events}) == N
    assert {e["inference_id"] for e in events} == set(ids)
    # UUIDv7 ids are time-ordered: sorting by id sorts by arrival timestamp.
    by_id = sorted(events, key=lambda e: e["inference_id"])
    stamps = [e["timestamp"] for e in by_id]
    assert stamps[0] <= stamps[N // 2] <= stamps[-1]
    assert sum(1 for e in events if e["stream"]) == N // 10
