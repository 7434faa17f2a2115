"""The real process: SIGTERM under load drains in-flight requests and loses no event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import IDENTITY, free_port


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["data"] for line in path.read_bytes().splitlines()]


@pytest.mark.slow
async def test_sigterm_under_load_loses_nothing(spawn_sidecar: Any, tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    sidecar = await spawn_sidecar()
    proc, url = sidecar.proc, sidecar.url
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
    deadline = asyncio.get_running_loop().time() + 60
    while len(received) < 150:
        if load_task.done():
            await load_task  # its error, not a wait for ever
        assert asyncio.get_running_loop().time() < deadline, "too few responses in time"
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
    spawn_sidecar: Any, tmp_path: Path
) -> None:
    events_file = tmp_path / "events.jsonl"
    sidecar = await spawn_sidecar(drain_timeout="500ms")
    proc = sidecar.proc
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.get(sidecar.url + "/hang"))
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(request, 10)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    (event,) = read_events(events_file)
    assert event["outcome"] == "aborted" and event["status"] == 499


async def test_a_second_signal_while_draining_cuts_nothing_short(
    spawn_sidecar: Any, tmp_path: Path
) -> None:
    events_file = tmp_path / "events.jsonl"
    sidecar = await spawn_sidecar(drain_timeout="10s")
    proc = sidecar.proc
    headers = {"x-demo-chunks": "8", "x-demo-chunk-delay-ms": "100"}
    body = {"messages": [{"content": "x"}], "stream": True}
    async with aiohttp.ClientSession() as session, session.post(
            sidecar.url + "/v1/chat/completions", json=body, headers=headers) as response:
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # an operator's Ctrl-C, or a second SIGTERM
        proc.send_signal(signal.SIGTERM)
        payload = await response.read()
    assert payload.endswith(b"data: [DONE]\n\n"), "stream cut by the second signal"
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    (event,) = read_events(events_file)
    assert event["outcome"] == "ok" and event["stream"] and event["chunks"] >= 8, event
    warned = [json.loads(line) for line in sidecar.log().splitlines()
              if "signal received while draining" in line]
    assert sorted(w["signal"] for w in warned) == ["SIGINT", "SIGTERM"], sidecar.log()


async def test_sighup_without_detectors_does_not_end_the_process(
    spawn_sidecar: Any, tmp_path: Path
) -> None:
    # SIGHUP reloads the detectors; with none, its default action (end the process, no
    # drain) would cut requests in flight and lose their events
    events_file = tmp_path / "events.jsonl"
    sidecar = await spawn_sidecar(detectors="off")
    proc = sidecar.proc
    async with aiohttp.ClientSession() as session:
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert proc.returncode is None
        async with session.post(sidecar.url + "/text", data=b"hi") as response:
            assert response.status == 200
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert len(read_events(events_file)) == 1


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


async def start_loading(upstream: Any, tmp_path: Path, admin: int) -> tuple[Any, Path]:
    """A sidecar process (strict profile: its settings take seconds to load), returned
    once it has set up its early signal handlers, while it is still loading."""
    env = {**os.environ, **IDENTITY, "SIDECAR_UPSTREAM_URL": upstream.url,
           "SIDECAR_PRIVACY_PROFILE": "strict", "SIDECAR_WAL_DIR": str(tmp_path / "wal"),
           "SIDECAR_EVENTS_FILE": str(tmp_path / "events.jsonl"),
           "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
           "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin}"}
    log_path = tmp_path / "sidecar.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + 30
    while not _catches_sigterm(proc.pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return proc, log_path


async def test_sigterm_while_the_settings_load_is_a_clean_stop(
    upstream: Any, tmp_path: Path
) -> None:
    # Validating the settings loads presidio (seconds, under the strict profile): a
    # SIGTERM then must stop the process cleanly (0), not by its default action (143)
    proc, log_path = await start_loading(upstream, tmp_path, free_port())
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert b"sidecar started" not in log_path.read_bytes()  # stopped before serving


async def test_sighup_never_ends_the_process_before_or_after_the_event_loop(
    upstream: Any, tmp_path: Path
) -> None:
    # The loop handles SIGHUP (a detectors reload) only while it runs: before it (the
    # settings load, seconds) and after it (the interpreter's exit), the default action
    # ended the process (129).
    admin = free_port()
    proc, log_path = await start_loading(upstream, tmp_path, admin)
    proc.send_signal(signal.SIGHUP)  # while the settings load
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            assert proc.returncode is None, log_path.read_text()[-2000:]
            try:
                async with session.get(f"http://127.0.0.1:{admin}/healthz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("sidecar did not start:\n" + log_path.read_text()[-2000:])
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while proc.returncode is None and time.monotonic() < deadline:  # through the drain
        # os.kill, not proc.send_signal: Popen.send_signal polls first, and that poll can
        # reap the exited child before asyncio's watcher thread does, which then reports 255
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGHUP)
        await asyncio.sleep(0.005)
    assert await asyncio.wait_for(proc.wait(), 5) == 0, log_path.read_text()[-2000:]
