"""Shared fixtures: a real upstream (the demo model server plus test routes) and a real
sidecar in front of it, both on loopback ports chosen by the OS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from sidecar.config import Settings, load_settings
from sidecar.demo.model_server import build_app
from sidecar.server import Sidecar
from sidecar.sinks.memory import MemorySink

IDENTITY = {
    "SIDECAR_MODEL_NAME": "test-model",
    "SIDECAR_MODEL_VERSION": "1.2.3",
    "SIDECAR_POLICY_VERSION": "pol-9",
    "SIDECAR_EVIDENCE_BUNDLE_ID": "eb-42",
}


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

    async def echo_headers(request: web.Request) -> web.Response:
        return web.json_response(dict(request.headers), headers={
            "Connection": "X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5",
            "x-model-version": "forged", "x-inference-id": "forged",
        })

    app = build_app()
    app.middlewares.append(record)
    app.router.add_get("/gated", gated)
    app.router.add_route("*", "/echo-headers", echo_headers)
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

    def recorded(self) -> list[Any]:
        if self.sink is not None:
            return list(self.sink.events)
        path = Path(self.settings.events_file)
        if not path.exists():
            return []
        return [SimpleNamespace(**orjson.loads(line)) for line in path.read_bytes().splitlines()]

    @property
    def settings(self) -> Settings:
        return self.sidecar.settings

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
async def make_sidecar(upstream: TestUpstream) -> AsyncIterator[SidecarFactory]:
    started: list[Sidecar] = []

    async def factory(events_file: str | None = None, **overrides: str) -> RunningSidecar:
        """A started sidecar; with ``events_file``, the real JSON-lines sink writes there."""
        environ = {
            **IDENTITY,
            "SIDECAR_UPSTREAM_URL": upstream.url,
            "SIDECAR_LISTEN": "127.0.0.1:0",
            "SIDECAR_ADMIN_LISTEN": "127.0.0.1:0",
        }
        environ.update({f"SIDECAR_{k.upper()}": v for k, v in overrides.items()})
        if events_file is not None:
            environ["SIDECAR_EVENTS_FILE"] = events_file
        sink = MemorySink() if events_file is None else None
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
