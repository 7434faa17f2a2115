"""Events written ahead, with the real stages: a sidecar process on its defaults (strict
masking, the shipped detectors, ``durability: sync``), the demo-style test upstream, the
JSON-lines sink.

With both worker processes stopped (SIGSTOP: alive, answering nothing) responses still
complete, since they wait only for their event's ahead record; SIGKILL then loses no
event: the restarted sidecar sends each one from its ahead record, marked
``lost_in_crash``. Without stopping anything, every event arrives once, completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
from conftest import EVENT_SCHEMAS, SidecarProcess

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Write to ann@example.com"}]}
DEFAULT_SET = str(resources.files("detectors").joinpath("default.yaml"))
DEFAULTS = {"privacy_profile": "strict", "detectors": DEFAULT_SET, "durability": "sync",
            "durability_timeout": "30s"}


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # Only whole lines: the sidecar may be appending while this reads.
    return [orjson.loads(line) for line in path.read_bytes().split(b"\n")[:-1] if line]


async def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def load(url: str, count: int, concurrency: int = 10) -> list[str]:
    answered: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def one() -> None:
            while len(answered) < count:
                async with session.post(url + "/v1/chat/completions", json=CHAT) as r:
                    await r.read()
                    assert r.status == 200
                    answered.append(r.headers["x-inference-id"])

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return answered


async def workers_started(sc: SidecarProcess) -> list[int]:
    """Both worker processes, once they are up (they start with the pipeline)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            async with session.get(sc.admin_url + "/readyz") as r:
                if r.status == 200 and len(children(sc.proc.pid)) >= 2:
                    return children(sc.proc.pid)
            await asyncio.sleep(0.05)
    raise AssertionError("workers did not start:\n" + sc.log())


async def test_sigkill_with_the_stages_stopped_loses_no_answered_event(
    spawn_sidecar: Callable[..., Awaitable[SidecarProcess]], tmp_path: Path,
) -> None:
    events_file = tmp_path / "events.jsonl"
    first = await spawn_sidecar(**DEFAULTS)
    workers = await workers_started(first)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        # Every one of these responses completes with both stages stopped: each waited
        # only for its ahead record's fsync.
        answered = await asyncio.wait_for(load(first.url, 200), 60)
        assert events(events_file) == []  # nothing complete yet, so nothing sent
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    second = await spawn_sidecar(**DEFAULTS)
    await wait_for(lambda: len(events(events_file)) >= len(answered))
    got = events(events_file)
    by_id = {e["id"]: e for e in got}
    assert set(answered) <= set(by_id), "answered events lost"
    assert len(got) == len(by_id) == len(answered)  # each once
    for inference in answered:
        envelope = by_id[inference]
        data = envelope["data"]
        assert data["privacy"]["failure"] == "lost_in_crash"
        assert data["payload"] is None and data["features"] is None
        jsonschema.validate(envelope, EVENT_SCHEMAS[envelope["type"]])
    async with aiohttp.ClientSession() as session, session.get(
            second.admin_url + "/metrics") as r:
        text = await r.text()
    assert (f'inference_sidecar_events_incomplete_total{{reason="lost_in_crash"}} '
            f"{float(len(answered))}") in text
    second.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(second.proc.wait(), 30) == 0


async def test_on_its_defaults_every_event_arrives_once_completed(
    spawn_sidecar: Callable[..., Awaitable[SidecarProcess]], tmp_path: Path,
) -> None:
    events_file = tmp_path / "events.jsonl"
    sc = await spawn_sidecar(**DEFAULTS)
    answered = await asyncio.wait_for(load(sc.url, 300, concurrency=20), 60)
    sc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(sc.proc.wait(), 30) == 0
    everything = events(events_file)
    got = [e for e in everything if e["type"] == "ai.inference.completed"]
    assert sorted(e["id"] for e in got) == sorted(answered)
    # Alerts (the load trips the request-rate burst detector) follow their inference.
    position = {e["id"]: i for i, e in enumerate(everything)}
    alerts = [e for e in everything if e["type"] == "ai.detector.alert"]
    assert alerts
    for alert in alerts:
        assert position[alert["id"]] > position[alert["data"]["inference_id"]]
    for envelope in got:
        data = envelope["data"]
        assert data["features"]["prompt_chars"] > 0  # completed by the detection stage
        assert isinstance(data["detections"], list)
        assert data["privacy"]["failure"] is None
        jsonschema.validate(envelope, EVENT_SCHEMAS[envelope["type"]])
    assert b"ann@example.com" not in events_file.read_bytes()

