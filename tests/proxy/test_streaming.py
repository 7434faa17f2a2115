"""Streams are relayed chunk by chunk, never buffered, and always yield one event."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest


async def test_first_chunk_arrives_before_the_upstream_finishes(
    sidecar: Any, upstream: Any, client: aiohttp.ClientSession
) -> None:
    # /gated sends one chunk, then waits for the gate: only a proxy that relays the
    # first chunk on its own lets this test read it and open the gate.
    async with client.get(sidecar.url + "/gated") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["x-inference-id"]
        first = await asyncio.wait_for(response.content.readline(), 5)
        assert first == b"data: first\n"
        upstream.gate.set()
        rest = await asyncio.wait_for(response.content.read(), 5)
    assert rest == b"\ndata: second\n\n"
    (event,) = await sidecar.events(1)
    assert event.stream is True and event.chunks == 2 and event.outcome == "ok"
    assert event.ttfb_ms is not None and event.ttfb_ms <= event.latency_ms


async def test_sse_bytes_are_relayed_exactly(
    sidecar: Any, upstream: Any, client: aiohttp.ClientSession
) -> None:
    body = {"messages": [{"content": "x"}], "stream": True}
    async with client.post(upstream.url + "/v1/chat/completions", json=body,
                           headers={"x-demo-chunks": "20"}) as response:
        expected = await response.read()
    async with client.post(sidecar.url + "/v1/chat/completions", json=body,
                           headers={"x-demo-chunks": "20"}) as response:
        relayed = await response.read()
    # Chunk ids embed a timestamp in the demo server; compare the token payloads.
    assert relayed.count(b"data: ") == expected.count(b"data: ") == 21
    assert relayed.endswith(b"data: [DONE]\n\n")
    (event,) = await sidecar.events(1)
    assert event.response_bytes == len(relayed) and event.chunks >= 1


async def test_large_response_is_streamed_not_buffered(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(buffer_response_bytes="64KiB")
    async with client.get(sc.url + "/big/3000000") as response:
        data = await response.read()
    assert len(data) == 3_000_000
    (event,) = await sc.events(1)
    assert event.stream is True and event.response_bytes == 3_000_000


async def test_idle_timeout_mid_stream_aborts_and_records_timeout(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(idle_timeout="300ms")
    async with client.get(sc.url + "/stall") as response:
        assert response.status == 200  # headers were already out
        assert response.headers["x-inference-id"]
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), 5)
    (event,) = await sc.events(1)
    assert event.outcome == "timeout" and event.error == "upstream_timeout"
    assert event.chunks == 1


async def test_client_disconnect_mid_stream_yields_one_event(
    sidecar: Any, upstream: Any
) -> None:
    port = int(sidecar.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /gated HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"data: first\n\n"), 5)
    assert b"x-inference-id" in head.lower()
    writer.transport.abort()  # the client goes away mid-stream
    events = await sidecar.events(1)
    upstream.gate.set()
    events = await sidecar.events(2, timeout=1.0)
    assert len(events) == 1
    assert events[0].outcome == "client_disconnected" and events[0].stream is True


async def test_client_disconnect_while_waiting_for_upstream_yields_one_event(
    sidecar: Any,
) -> None:
    port = int(sidecar.url.rsplit(":", 1)[1])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    (event,) = await sidecar.events(1)
    assert event.outcome == "client_disconnected"
    assert event.status == 499
