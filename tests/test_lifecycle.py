"""The real process: SIGTERM under load drains in-flight requests and loses no event."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

IDENTITY = {
    "SIDECAR_MODEL_NAME": "m", "SIDECAR_MODEL_VERSION": "9", "SIDECAR_POLICY_VERSION": "p",
    "SIDECAR_EVIDENCE_BUNDLE_ID": "e",
}


async def start_sidecar(
    upstream_url: str, events_file: Path, port: int, admin_port: int, **extra: str
) -> asyncio.subprocess.Process:
    env = {
        **os.environ, **IDENTITY,
        "SIDECAR_UPSTREAM_URL": upstream_url, "SIDECAR_EVENTS_FILE": str(events_file),
        "SIDECAR_WAL_DIR": str(events_file.parent / "wal"),
        "SIDECAR_LISTEN": f"127.0.0.1:{port}", "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        **{f"SIDECAR_{k.upper()}": v for k, v in extra.items()},
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{admin_port}/healthz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("sidecar did not start: " + (await proc.stderr.read()).decode()[-2000:])  # type: ignore[union-attr]


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["data"] for line in path.read_bytes().splitlines()]


@pytest.mark.slow
async def test_sigterm_under_load_loses_nothing(
    upstream: Any, tmp_path: Path, port_factory: Any
) -> None:
    events_file = tmp_path / "events.jsonl"
    port, admin_port = port_factory(), port_factory()
    proc = await start_sidecar(upstream.url, events_file, port, admin_port)
    url = f"http://127.0.0.1:{port}"
    received: dict[str, int] = {}
    failed = 0
    sigterm_sent = asyncio.Event()

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal failed
        slow = i % 5 == 0  # slow SSE streams: in flight when SIGTERM arrives
        headers = {"x-demo-chunks": "10", "x-demo-chunk-delay-ms": "40"} if slow else {}
        body = {"messages": [{"content": "x"}], "stream": slow}
        try:
            async with session.post(url + "/v1/chat/completions", json=body,
                                    headers=headers) as response:
                payload = await response.read()
                received[response.headers["x-inference-id"]] = response.status
                if slow:
                    assert payload.endswith(b"data: [DONE]\n\n"), "stream cut by drain"
        except aiohttp.ClientConnectionError:
            assert sigterm_sent.is_set(), "a request failed before SIGTERM"
            failed += 1

    async def load() -> None:
        connector = aiohttp.TCPConnector(limit=50, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(one(session, i) for i in range(600)))

    load_task = asyncio.create_task(load())
    while len(received) < 150:
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    sigterm_sent.set()
    await asyncio.wait_for(load_task, 60)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    events = read_events(events_file)
    ids = [e["inference_id"] for e in events]
    assert len(ids) == len(set(ids)), "duplicate events"
    assert set(received) <= set(ids), "a response the client got has no event"
    # Every event is either a response the client got, or a connection the client lost.
    assert len(events) <= len(received) + failed
    assert len(received) >= 150 and failed > 0  # the shutdown really happened under load


@pytest.mark.slow
async def test_drain_timeout_aborts_stragglers_with_an_event(
    upstream: Any, tmp_path: Path, port_factory: Any
) -> None:
    events_file = tmp_path / "events.jsonl"
    port, admin_port = port_factory(), port_factory()
    proc = await start_sidecar(upstream.url, events_file, port, admin_port,
                               drain_timeout="500ms")
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.get(f"http://127.0.0.1:{port}/hang"))
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(request, 10)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    (event,) = read_events(events_file)
    assert event["outcome"] == "aborted" and event["status"] == 499
