"""Limits and timeouts: each refusal is local, stamped, and recorded as one event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from sidecar.durability.wal import WriteAheadLog


async def test_declared_body_over_limit_is_refused_without_calling_upstream(
    make_sidecar: Any, upstream: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(max_body_bytes="10KiB")
    async with client.post(sc.url + "/text", data=b"y" * 20_000) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "body_too_large"
    assert upstream.hits == 0
    (event,) = await sc.events(1)
    assert (event.outcome, event.status, event.error) == ("rejected", 413, "body_too_large")


async def test_chunked_body_over_limit_is_refused(
    make_sidecar: Any, upstream: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(max_body_bytes="10KiB")

    async def body() -> Any:
        for _ in range(10):
            yield b"z" * 4096

    async with client.post(sc.url + "/text", data=body()) as response:
        assert response.status == 413
    assert upstream.hits == 0


async def test_body_at_the_limit_is_forwarded(
    make_sidecar: Any, upstream: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(max_body_bytes="10KiB")
    async with client.post(sc.url + "/text", data=b"q" * 10240) as response:
        assert response.status == 200
        assert await response.read() == b"Q" * 10240
    (event,) = await sc.events(1)
    assert event.request_bytes == 10240 and event.response_bytes == 10240


async def test_header_limits_are_configurable(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(max_header_bytes="1KiB", max_headers="10")
    async with client.get(sc.url + "/v1/models", headers={"X-Long": "v" * 2000}) as response:
        assert response.status == 431
        assert response.headers["x-model-version"] == "1.2.3"
    many = {f"X-N{i}": "1" for i in range(20)}
    async with client.get(sc.url + "/v1/models", headers=many) as response:
        assert response.status == 431
    async with client.get(sc.url + "/v1/models", headers={"X-Ok": "v" * 500}) as response:
        assert response.status == 200
    events = await sc.events(3)
    assert [e.status for e in events] == [431, 431, 200]


async def test_read_timeout_gives_504(make_sidecar: Any, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(read_timeout="200ms")
    async with client.get(sc.url + "/hang") as response:
        assert response.status == 504
    (event,) = await sc.events(1)
    assert event.outcome == "timeout" and event.upstream_status is None


async def test_total_timeout_gives_504(make_sidecar: Any, client: aiohttp.ClientSession) -> None:
    sc = await make_sidecar(total_timeout="250ms")
    async with client.get(sc.url + "/hang") as response:
        assert response.status == 504


async def test_connect_timeout_gives_504(make_sidecar: Any, client: aiohttp.ClientSession) -> None:
    # A loopback listener that never accepts, with its accept queue already full: the
    # kernel drops further SYNs, so the sidecar's connect can only time out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        sc = await make_sidecar(upstream_url=f"http://127.0.0.1:{port}", connect_timeout="300ms")
        async with client.get(sc.url + "/v1/models") as response:
            assert response.status == 504
            assert (await response.json())["error"] == "upstream_timeout"
        (event,) = await sc.events(1)
        assert event.outcome == "timeout"
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_a_response_cut_off_for_durability_is_one_event_and_no_reply(
    make_sidecar: Any, client: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    """The handler cuts the connection (ConnectionResetError) when the event is not
    durable in time; aiohttp would hand that exception to its error path, which must not
    answer with a second, stamped 500 and record a second event."""
    real_sync = WriteAheadLog.sync

    def slow_sync(self: WriteAheadLog) -> None:
        time.sleep(0.6)
        real_sync(self)
    monkeypatch.setattr(WriteAheadLog, "sync", slow_sync)
    sc = await make_sidecar(durability="sync", durability_timeout="200ms")
    with pytest.raises(aiohttp.ClientConnectionError):  # POST: the client does not retry
        async with client.post(sc.url + "/text", data=b"hello") as response:
            await response.read()
    events = await sc.events(2, timeout=3.0)
    assert [(e.status, e.outcome) for e in events] == [(200, "ok")]


async def _raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port)


async def _exchange(url: str, data: bytes, later: bytes = b"", *, whole: bool = False,
                    timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection (``later`` 0.1 s after, once the handler is
    reading the body); the reply's head, or with ``whole`` all until the sidecar closes."""
    reader, writer = await _raw(url)
    try:
        writer.write(data)
        if later:
            await asyncio.sleep(0.1)
            writer.write(later)
        reply = reader.read() if whole else reader.readuntil(b"\r\n\r\n")
        return await asyncio.wait_for(reply, timeout)
    finally:
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body(
    make_sidecar: Any, upstream: Any
) -> None:
    sc = await make_sidecar()
    reader, writer = await _raw(sc.url)
    try:
        writer.write(b"POST /text HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"x-inference-id" in head.lower()
    finally:
        writer.close()
    (event,) = await sc.events(1)
    assert (event.status, event.request_bytes) == (200, 5)


async def test_a_body_over_the_limit_gets_413_instead_of_100_continue(
    make_sidecar: Any, upstream: Any
) -> None:
    sc = await make_sidecar(max_body_bytes="1KiB")
    head = await _exchange(sc.url, b"POST /text HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert upstream.hits == 0


async def test_a_body_that_stops_coming_gets_408_within_idle_timeout(
    make_sidecar: Any, upstream: Any
) -> None:
    sc = await make_sidecar(idle_timeout="300ms")
    started = time.monotonic()
    head = await _exchange(sc.url, b"POST /text HTTP/1.1\r\nHost: x\r\n"  # stalls mid-body
                           b"Content-Length: 100\r\n\r\n" + b"x" * 10, timeout=10)
    assert time.monotonic() - started < 5
    assert head.startswith(b"HTTP/1.1 408") and b"x-inference-id" in head.lower()
    (event,) = await sc.events(1)
    assert (event.outcome, event.status) == ("rejected", 408)
    assert upstream.hits == 0


async def test_a_chunk_refused_part_way_through_the_body_gets_400_at_once(
    make_sidecar: Any, upstream: Any
) -> None:
    # aiohttp's parser refuses the chunk, queues its 400 for after the request and
    # leaves the body open: the reader used to wait out idle_timeout for a 408.
    sc = await make_sidecar(idle_timeout="60s")
    started = time.monotonic()
    reply = await _exchange(  # answered, then closed
        sc.url, b"POST /text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n", b"zz\r\n", whole=True, timeout=10)
    assert time.monotonic() - started < 5
    assert reply.startswith(b"HTTP/1.1 400") and b'"error":"bad_framing"' in reply, reply
    assert reply.lower().count(b"x-inference-id:") == 1  # the queued 400 is not sent too
    (event,) = await sc.events(1)
    assert (event.outcome, event.status) == ("rejected", 400)
    assert upstream.hits == 0


@pytest.mark.parametrize(("held", "code"), [
    # the writer holds a round the log refused
    (lambda p: setattr(p.writer, "blocked", True), "event_log_full"),
    # the writer's round fails on the disk (ENOSPC, EIO): such requests used to reach the
    # model, wait their durability timeout and be cut off
    (lambda p: setattr(p, "disk_ok", False), "event_log_disk_error"),
])
async def test_a_held_event_log_makes_new_requests_fail_fast(
    make_sidecar: Any, upstream: Any, client: aiohttp.ClientSession, held: Any, code: str
) -> None:
    """``when_full: block``: while the log cannot keep events, a new request gets a stamped
    503 at once, not a wait for its durability timeout; service resumes after."""
    sc = await make_sidecar(durability="sync", when_full="block")
    pipeline = sc.sidecar.pipeline
    held(pipeline)
    started = time.monotonic()
    async with client.post(sc.url + "/text", data=b"hello") as response:
        assert response.status == 503
        assert (await response.json())["error"] == code
        assert "x-inference-id" in response.headers
    assert time.monotonic() - started < 1.0 and upstream.hits == 0
    pipeline.writer.blocked, pipeline.disk_ok = False, True  # the writer's next success
    async with client.post(sc.url + "/text", data=b"hello") as response:
        assert response.status == 200


async def test_a_log_disk_failing_for_real_refuses_new_requests_until_it_recovers(
    make_sidecar: Any, upstream: Any, client: aiohttp.ClientSession
) -> None:
    """The writer's own retry path: appends fail (ENOSPC), the request whose event is
    in that round cannot complete; the ones after it are refused at once; once the disk
    takes the round again, service resumes."""
    import errno

    sc = await make_sidecar(durability="sync", when_full="block", durability_timeout="1s")
    log = sc.sidecar.log
    real_append, failing = log.append, [True]

    def append(records: Any) -> None:
        if failing[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(records)

    log.append = append
    with contextlib.suppress(aiohttp.ClientError):  # its event is not durable: cut off
        async with client.post(sc.url + "/text", data=b"first") as response:
            await response.read()
    async with client.post(sc.url + "/text", data=b"second") as response:
        assert response.status == 503
        assert (await response.json())["error"] == "event_log_disk_error"
    hits = upstream.hits
    failing[0] = False
    deadline = time.monotonic() + 10
    while not sc.sidecar.pipeline.disk_ok and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    async with client.post(sc.url + "/text", data=b"third") as response:
        assert response.status == 200
    assert upstream.hits == hits + 1


async def test_absolute_form_targets_are_accepted_and_asterisk_is_a_400(
    make_sidecar: Any, upstream: Any
) -> None:
    """RFC 9112, 3.2.2: a server must accept the absolute form; "*" is not for a proxy
    of one model server, and is the client's error (rejected), not the upstream's."""
    sc = await make_sidecar()
    for target, status in ((b"http://public.example/v1/models?x=1", b"200"), (b"*", b"400")):
        method = b"OPTIONS " if target == b"*" else b"GET "
        head = await _exchange(sc.url, method + target
                               + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert head.split(b" ")[1] == status and b"x-inference-id" in head.lower()
    events = await sc.events(2)
    assert [(e.status, e.outcome) for e in events] == [(200, "ok"), (400, "rejected")]
    assert events[0].path == "/v1/models" and events[0].route == "/v1/models"


async def test_a_transfer_coding_other_than_chunked_gets_501_unforwarded(
    make_sidecar: Any, upstream: Any
) -> None:
    # RFC 9112 §6.1: the parser removes the chunked framing only; the gzip bytes must not
    # reach the model as if they were the body
    sc = await make_sidecar()
    head = await _exchange(sc.url, b"POST /text HTTP/1.1\r\nHost: x\r\n"
                           b"Transfer-Encoding: gzip, chunked\r\n"
                           b"\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501") and b"x-inference-id" in head.lower()
    (event,) = await sc.events(1)
    assert (event.status, event.outcome) == (501, "rejected")
    assert upstream.hits == 0


async def test_transfer_encoding_in_http_1_0_is_refused_and_the_connection_closed(
    make_sidecar: Any, upstream: Any
) -> None:
    # RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding; a front proxy may have framed the
    # body otherwise, so what follows on the connection (here a pipelined request) must
    # not be read as a request (a desync).
    sc = await make_sidecar()
    reply = await _exchange(sc.url, b"POST /text HTTP/1.0\r\nHost: x\r\n"
                            b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5\r\nhello\r\n0\r\n\r\nGET /text HTTP/1.1\r\nHost: x\r\n\r\n",
                            whole=True)  # until the sidecar closes
    assert reply.startswith(b"HTTP/1.0 400") and b'"error":"bad_framing"' in reply, reply
    assert reply.lower().count(b"x-inference-id:") == 1  # the pipelined one: unanswered
    (event,) = await sc.events(1)
    assert (event.status, event.outcome) == (400, "rejected")
    assert upstream.hits == 0


async def test_an_absolute_form_target_s_authority_is_the_forwarded_host(
    make_sidecar: Any, upstream: Any
) -> None:
    # RFC 9112 §3.2.2: the Host header is ignored for the target's authority
    sc = await make_sidecar()
    response = await _exchange(sc.url, b"GET http://target.example/echo-headers HTTP/1.1\r\n"
                               b"Host: header.example\r\nConnection: close\r\n\r\n",
                               whole=True)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["x-forwarded-host"] == "target.example"
