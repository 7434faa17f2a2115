"""Shared fixtures: a real upstream (the demo model server plus test routes), a real
sidecar in front of it, and a real Kafka-compatible broker, all on loopback ports.

Test modules also import helpers from ``tests/kafka_broker.py`` (``consume_all`` ...):
pytest runs with ``--import-mode=importlib``, so this folder is put on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
from aiohttp import web

from sidecar.config import Settings, load_settings
from sidecar.demo.broker import EmbeddedBroker
from sidecar.demo.model_server import build_app
from sidecar.server import Sidecar
from sidecar.sinks.memory import MemorySink

sys.path.append(str(Path(__file__).resolve().parent))

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "sidecar" / "schemas"
EVENT_SCHEMAS = {
    json.loads(p.read_text())["properties"]["type"]["const"]: json.loads(p.read_text())
    for p in SCHEMA_DIR.glob("*.json")
}

IDENTITY = {
    "SIDECAR_MODEL_NAME": "test-model",
    "SIDECAR_MODEL_VERSION": "1.2.3",
    "SIDECAR_POLICY_VERSION": "pol-9",
    "SIDECAR_EVIDENCE_BUNDLE_ID": "eb-42",
}
# The sidecars the fixtures start record metadata only, unless a test asks for a profile:
# under the default (strict) each one would start a masking worker process, about a second
# of CPU for presidio, hundreds of times over. tests/privacy runs the default profile.
# Likewise detection (a worker process with river and scipy, about 1.4 s of CPU to start):
# off unless a test asks for it; tests/detection runs the shipped default set.
TEST_DEFAULTS = {"SIDECAR_PRIVACY_PROFILE": "metadata-only", "SIDECAR_DETECTORS": "off"}


@dataclass
class TestUpstream:
    """The upstream as the tests see it: its URL, what it received, and a gate."""

    __test__ = False  # not a test class, despite the name

    url: str
    hits: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A real Kafka-compatible broker (Tansu) on a loopback port, for this test only."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def port_factory() -> Callable[[], int]:
    return free_port


@pytest.fixture
async def upstream() -> AsyncIterator[TestUpstream]:
    state = TestUpstream(url="")

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state.hits += 1
        state.seen_headers.append(dict(request.headers))
        response: web.StreamResponse = await handler(request)
        return response

    async def gated(request: web.Request) -> web.StreamResponse:
        # Sends one chunk, then waits for the test to release it: a proxy that buffers
        # the stream can never deliver the first chunk, so the test would time out.
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.wait_for(state.gate.wait(), 10)
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    async def broken_stream(request: web.Request) -> web.StreamResponse:
        # An answer cut off in the middle of an address: the connection is reset.
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: Sure, I will write to you at\n\ndata:  jane.doe@exampl\n\n")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def echo_headers(request: web.Request) -> web.Response:
        # Every value of every header, in order (a dict would keep one of a repeated one).
        seen: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            seen[key] = f"{seen[key]} | {value}" if key in seen else value
        return web.json_response(seen, headers={
            "Connection": "X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5",
            "x-model-version": "forged", "x-inference-id": "forged",
            "Content-Disposition": 'attachment; filename="caf\u00e9.txt"',
            "Proxy-Authentication-Info": "nextnonce=1",
        })

    app = build_app()
    app.middlewares.append(record)
    app.router.add_get("/gated", gated)
    app.router.add_get("/broken-stream", broken_stream)
    async def echo_json(request: web.Request) -> web.Response:  # the body, as JSON
        return web.Response(body=await request.read(), content_type="application/json")

    app.router.add_route("*", "/echo-headers", echo_headers)
    app.router.add_post("/echo-json", echo_json)
    app.router.add_route("*", "/echo-headers/{tail:.*}", echo_headers)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    state.gate.set()
    await runner.cleanup()


@dataclass
class RunningSidecar:
    sidecar: Sidecar
    sink: MemorySink | None  # None: the real JSON-lines sink, read back from its file
    url: str
    admin_url: str

    def envelopes(self) -> list[dict[str, Any]]:
        """The CloudEvents recorded so far, as JSON objects."""
        if self.sink is not None:
            return [orjson.loads(r.value) for r in self.sink.records]
        path = Path(self.settings.events_file)
        if not path.exists():
            return []
        # Only whole lines: the sink may be appending while this reads.
        lines = path.read_bytes().split(b"\n")[:-1]
        return [orjson.loads(line) for line in lines if line]

    def recorded(self) -> list[Any]:
        """The inference events recorded so far (the CloudEvents' data), as objects."""
        return [SimpleNamespace(**e["data"]) for e in self.envelopes()]

    @property
    def settings(self) -> Settings:
        return self.sidecar.settings

    async def validated_events(self, expected: int) -> list[dict[str, Any]]:
        """Wait for ``expected`` events; check each against its JSON Schema; their data."""
        await self.events(expected)
        envelopes = self.envelopes()
        for envelope in envelopes:
            jsonschema.validate(envelope, EVENT_SCHEMAS[envelope["type"]])
        return [e["data"] for e in envelopes]

    async def events(self, expected: int, timeout: float = 10.0) -> list[Any]:
        """Wait until the sink holds ``expected`` events; return them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.recorded()) < expected and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let a straggler (a duplicate, if any) show up too
        return self.recorded()


SidecarFactory = Callable[..., Awaitable[RunningSidecar]]


@pytest.fixture
async def make_sidecar(
    upstream: TestUpstream, tmp_path: Path
) -> AsyncIterator[SidecarFactory]:
    started: list[Sidecar] = []

    async def factory(
        events_file: str | None = None, real_sink: bool = False, **overrides: str
    ) -> RunningSidecar:
        """A started sidecar. By default its sink is a ``MemorySink``; with ``events_file``
        the real JSON-lines sink writes there; with ``real_sink`` the sink comes from the
        settings (Kafka when ``kafka_bootstrap`` is given)."""
        environ = {
            **IDENTITY, **TEST_DEFAULTS,
            "SIDECAR_UPSTREAM_URL": upstream.url,
            "SIDECAR_LISTEN": "127.0.0.1:0",
            "SIDECAR_ADMIN_LISTEN": "127.0.0.1:0",
            "SIDECAR_WAL_DIR": str(tmp_path / f"wal-{len(started)}"),
        }
        environ.update({f"SIDECAR_{k.upper()}": v for k, v in overrides.items()})
        if events_file is not None:
            environ["SIDECAR_EVENTS_FILE"] = events_file
        sink = MemorySink() if events_file is None and not real_sink else None
        sidecar = Sidecar(load_settings(environ=environ), sink=sink)
        await sidecar.start()
        started.append(sidecar)
        return RunningSidecar(
            sidecar, sink, f"http://127.0.0.1:{sidecar.proxy_port}",
            f"http://127.0.0.1:{sidecar.admin_port}",
        )

    yield factory
    for sidecar in started:
        await sidecar.stop()


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> RunningSidecar:
    return await make_sidecar()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@dataclass
class SidecarProcess:
    """A sidecar running as its own process (``python -m sidecar serve``)."""

    proc: asyncio.subprocess.Process
    url: str
    admin_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


@pytest.fixture
async def spawn_sidecar(
    upstream: TestUpstream, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[SidecarProcess]]]:
    """Start real sidecar processes; ``SIDECAR_*`` settings as keyword arguments."""
    spawned: list[SidecarProcess] = []

    async def spawn(**settings: str) -> SidecarProcess:
        port, admin = free_port(), free_port()
        env = {
            **os.environ, **IDENTITY, **TEST_DEFAULTS,
            "SIDECAR_UPSTREAM_URL": upstream.url,
            "SIDECAR_EVENTS_FILE": str(tmp_path / "events.jsonl"),
            "SIDECAR_WAL_DIR": str(tmp_path / "wal"),
            "SIDECAR_LISTEN": f"127.0.0.1:{port}",
            "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin}",
            **{f"SIDECAR_{k.upper()}": v for k, v in settings.items()},
        }
        log_path = tmp_path / f"sidecar-{len(spawned)}.log"
        with log_path.open("wb") as log_file:  # a file: a full pipe would stall the process
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sidecar", "serve", env=env,
                stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
            )
        running = SidecarProcess(proc, f"http://127.0.0.1:{port}",
                                 f"http://127.0.0.1:{admin}", log_path)
        spawned.append(running)
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(running.admin_url + "/healthz") as r:
                        if r.status == 200:
                            return running
                except aiohttp.ClientError:
                    pass
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        raise AssertionError("sidecar did not start:\n" + running.log())

    yield spawn
    for running in spawned:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()
