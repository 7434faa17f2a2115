"""The upstream HTTP/1.1 client (``sidecar.proxy.pool``) against hand-written servers.

Each test runs a real loopback server (``asyncio.start_server``) whose handler writes
exact response bytes, so every edge case (interim responses, a body delimited by the
close, a keep-alive connection that dies when the next request arrives ...) is
reproduced byte for byte. All waits are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from multidict import CIMultiDict

from sidecar.config import load_settings
from sidecar.errors import RequestRejected, UpstreamTimeout, UpstreamUnavailable
from sidecar.proxy.pool import HIGH_WATER, Pool, UpstreamResponse
from sidecar.proxy.upstream import Upstream, finish

WAIT = 5.0  # the bound on any wait that should succeed quickly

Handler = Callable[["Conn"], Awaitable[None]]


class Conn:
    """One accepted connection, as a handler sees it."""

    def __init__(self, index: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.index, self.reader, self.writer = index, reader, writer

    async def request(self) -> tuple[bytes, bytes]:
        """The next request's head and body (raises IncompleteReadError at EOF)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return head, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self) -> None:
        """Wait until the client closes (or resets) the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


class Server:
    """A loopback HTTP/1.1 server whose connections are handed to ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.requests: list[bytes] = []  # filled by handlers that want to record
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.handler(Conn(self.connections - 1, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        server = await Server(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


PoolFactory = Callable[..., Pool]


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    pools: list[Pool] = []

    def make(port: int, host: str = "127.0.0.1", **overrides: Any) -> Pool:
        options: dict[str, Any] = {"limit": 4, "connect_timeout": 1.0, "read_timeout": 2.0,
                                   "idle_timeout": 2.0, "total_timeout": 10.0}
        options.update(overrides)
        pool = Pool(host, port, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()
    await asyncio.sleep(0.01)  # let aborted transports finish closing


def request_head(method: str = "GET", path: str = "/", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
    if body or method not in ("GET", "HEAD"):
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode()


async def send(pool: Pool, method: str = "GET", body: bytes = b"",
               timeout: float = WAIT) -> UpstreamResponse:
    return await asyncio.wait_for(pool.request(method, request_head(method, body=body), body),
                                  timeout)


async def fetch(pool: Pool, method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    """One whole exchange: status and body, the connection released."""
    response = await send(pool, method, body)
    failed = True
    try:
        data = await asyncio.wait_for(response.read(), WAIT)
        failed = False
    finally:
        response.release(failed)
    return response.status, data


async def collect(response: UpstreamResponse, timeout: float = WAIT) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in response.chunks()])

    return await asyncio.wait_for(run(), timeout)


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        piece = data[i:i + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)


def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


async def answer_forever(conn: Conn, response: bytes) -> None:
    """Keep-alive server: the same response to every request, until the client leaves."""
    while True:
        await conn.request()
        await conn.send(response)


OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


# -- 1. Content-Length, keep-alive --------------------------------------------------------


async def test_content_length_response_and_connection_reuse(
    serve: Any, make_pool: PoolFactory
) -> None:
    server = await serve(lambda conn: answer_forever(
        conn, b"HTTP/1.1 201 Created Here\r\nContent-Length: 5\r\nX-Custom: a\r\n"
              b"x-custom: b\r\nContent-Type: text/plain\r\n\r\nhello"))
    pool = make_pool(server.port)
    response = await send(pool)
    assert (response.status, response.reason) == (201, "Created Here")
    assert isinstance(response.headers, CIMultiDict)
    assert response.headers["CONTENT-TYPE"] == "text/plain"
    assert response.headers.getall("x-CUSTOM") == ["a", "b"]
    assert response.content_length == 5
    assert await asyncio.wait_for(response.read(), WAIT) == b"hello"
    assert response.complete
    response.release(failed=False)
    assert await fetch(pool) == (201, b"hello")
    assert server.connections == 1


# -- 2. chunked, relayed as it arrives ---------------------------------------------------


async def test_chunked_response_yields_chunks_as_they_arrive(
    serve: Any, make_pool: PoolFactory
) -> None:
    gate = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await asyncio.wait_for(gate.wait(), WAIT)
        await conn.send(b"6\r\nsecond\r\n0\r\n\r\n")
        await answer_forever(conn, OK_HELLO)

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool)
    assert response.status == 200 and response.content_length is None
    chunks = response.chunks()
    first = b""
    while first != b"first":  # only the first chunk can come before the gate opens
        first += await asyncio.wait_for(anext(chunks), WAIT)
    assert not gate.is_set()
    gate.set()
    rest = b""
    async for chunk in chunks:
        rest += chunk
    assert rest == b"second"
    response.release(failed=False)
    assert await fetch(pool) == (200, b"hello")
    assert server.connections == 1


# -- 3./4. Connection: close -------------------------------------------------------------


async def test_connection_close_response_is_not_reused(
    serve: Any, make_pool: PoolFactory
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
        await conn.until_closed()  # the client must be the one that gives up on it

    server = await serve(handler)
    pool = make_pool(server.port)
    assert await fetch(pool) == (200, b"hi")
    assert await fetch(pool) == (200, b"hi")
    assert server.connections == 2


async def test_body_delimited_by_close_is_read_whole(
    serve: Any, make_pool: PoolFactory
) -> None:
    body = pattern(300_000)  # past HIGH_WATER, in several writes

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for i in range(0, len(body), 50_000):
            await conn.send(body[i:i + 50_000])
            await asyncio.sleep(0.005)

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool)
    assert response.content_length is None
    assert await asyncio.wait_for(response.read(), WAIT) == body
    response.release(failed=False)


async def test_http10_body_delimited_by_close_streams_whole(
    serve: Any, make_pool: PoolFactory
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.0 200 OK\r\n\r\nabc")
        await asyncio.sleep(0.02)
        await conn.send(b"def")

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool)
    assert await collect(response) == b"abcdef"
    response.release(failed=False)


# -- 5. premature close ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["read", "chunks"])
@pytest.mark.parametrize("framing", [b"Content-Length: 100\r\n",
                                     b"Transfer-Encoding: chunked\r\n"])
async def test_close_mid_body_is_upstream_unavailable(
    serve: Any, make_pool: PoolFactory, how: str, framing: bytes
) -> None:
    partial = b"0123456789" if b"Content" in framing else b"a\r\n0123456789\r\n"

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n" + partial)

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool)
    with pytest.raises(UpstreamUnavailable, match="closed"):
        if how == "read":
            await asyncio.wait_for(response.read(), WAIT)
        else:
            await collect(response)
    response.release(failed=True)


# -- 6. HEAD -------------------------------------------------------------------------------


async def test_head_response_ends_at_its_head(serve: Any, make_pool: PoolFactory) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await conn.until_closed()  # keeps the connection open: no close to end the body

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool, "HEAD")
    assert response.status == 200 and response.content_length == 10
    assert await asyncio.wait_for(response.read(), 1.0) == b""
    response.release(failed=False)
    response = await send(pool, "HEAD")
    assert await collect(response, 1.0) == b""
    response.release(failed=False)
    assert server.connections == 2  # documented: llhttp cannot skip the body, so closed


# -- 7./8. interim responses and 204 ------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
async def test_interim_responses_are_skipped(
    serve: Any, make_pool: PoolFactory, split: bool
) -> None:
    interim = (b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
               b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"

    async def handler(conn: Conn) -> None:
        await conn.request()
        if split:
            await conn.send(interim)
            await asyncio.sleep(0.05)
            await conn.send(final)
        else:
            await conn.send(interim + final)
        await answer_forever(conn, OK_HELLO)

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool, "POST", b"{}")
    assert (response.status, response.reason) == (200, "OK")
    assert list(response.headers.items()) == [("Content-Length", "2"), ("X-Final", "yes")]
    assert await asyncio.wait_for(response.read(), WAIT) == b"ok"
    response.release(failed=False)
    assert await fetch(pool) == (200, b"hello")
    assert server.connections == 1


async def test_204_has_no_body_and_keeps_the_connection(
    serve: Any, make_pool: PoolFactory
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
        await answer_forever(conn, OK_HELLO)

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool, "DELETE")
    assert (response.status, response.reason) == (204, "No Content")
    assert await asyncio.wait_for(response.read(), 1.0) == b""
    response.release(failed=False)
    assert await fetch(pool) == (200, b"hello")
    assert server.connections == 1


# -- 9. timeouts ---------------------------------------------------------------------------


async def test_read_timeout_when_no_answer(serve: Any, make_pool: PoolFactory) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.until_closed()

    server = await serve(handler)
    pool = make_pool(server.port, read_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="answer in time"):
        await send(pool)
    assert 0.15 <= time.monotonic() - started < 1.0


async def test_idle_timeout_after_the_head(serve: Any, make_pool: PoolFactory) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await conn.until_closed()

    server = await serve(handler)
    pool = make_pool(server.port, idle_timeout=0.2, read_timeout=2.0)
    response = await send(pool)
    started = time.monotonic()
    got = b""
    with pytest.raises(UpstreamTimeout, match="send more in time"):
        async for chunk in response.chunks():
            got += chunk
    assert got == b"abc"
    assert 0.1 <= time.monotonic() - started < 1.0
    response.release(failed=True)


def trickler(count: int, head: bytes = b"") -> Handler:
    """Head, then one 4-byte chunk every 50 ms, ``count`` times, then the end."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(head or b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(count):
            await asyncio.sleep(0.05)
            await conn.send(b"4\r\n%04d\r\n" % i)
        await conn.send(b"0\r\n\r\n")
        await conn.until_closed()

    return handler


async def test_total_timeout_cuts_a_trickling_body(serve: Any, make_pool: PoolFactory) -> None:
    server = await serve(trickler(100))
    pool = make_pool(server.port, idle_timeout=0.2, total_timeout=0.4)
    started = time.monotonic()
    response = await send(pool)
    got = b""
    with pytest.raises(UpstreamTimeout):
        async for chunk in response.chunks():
            got += chunk
    assert 0.35 <= time.monotonic() - started < 1.0
    assert len(got) >= 16  # bytes kept coming: only the total timeout can end this
    response.release(failed=True)


async def test_idle_timer_rearms_on_every_byte(serve: Any, make_pool: PoolFactory) -> None:
    server = await serve(trickler(10))  # 0.5 s in all, never 0.2 s silent
    pool = make_pool(server.port, read_timeout=0.2, idle_timeout=0.2, total_timeout=5.0)
    response = await send(pool)
    assert await collect(response) == b"".join(b"%04d" % i for i in range(10))
    response.release(failed=False)


# -- 10. connecting ------------------------------------------------------------------------


async def test_connect_refused_is_upstream_unavailable(make_pool: PoolFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    pool = make_pool(port, limit=1)
    for _ in range(2):  # the failed attempt gave its slot back
        with pytest.raises(UpstreamUnavailable, match="unavailable"):
            await send(pool)


@contextlib.contextmanager
def unaccepting_listener() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops further SYNs, so a
    connect can only time out. (10.255.255.1 is no good here: the sandbox's network
    accepts a connection to any address at once.)"""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        fillers.append(filler)
    try:
        yield listener.getsockname()[1]
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_connect_timeout(make_pool: PoolFactory) -> None:
    with unaccepting_listener() as port:
        pool = make_pool(port, limit=1, connect_timeout=0.2)
        for _ in range(2):  # the timed-out attempt gave its slot back
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="accept a connection"):
                await send(pool)
            assert 0.15 <= time.monotonic() - started < 1.0


async def test_cancel_while_connecting_frees_the_slot(make_pool: PoolFactory) -> None:
    with unaccepting_listener() as port:
        pool = make_pool(port, limit=1, connect_timeout=0.3)
        task = asyncio.create_task(pool.request("GET", request_head(), b""))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The slot must be free again: a new request tries (and times out) by itself,
        # instead of waiting forever for a connection that will never exist.
        with pytest.raises(UpstreamTimeout):
            await send(pool, timeout=1.5)


# -- 11. stale keep-alive connection -------------------------------------------------------


def dies_on_second_request(server_requests: list[bytes]) -> Handler:
    """First connection: one answer with keep-alive, then closed without an answer when
    the next request arrives. Later connections answer normally."""

    async def handler(conn: Conn) -> None:
        head, _ = await conn.request()
        server_requests.append(b"%d:" % conn.index + head.split(b" ", 1)[0])
        await conn.send(OK_HELLO)
        if conn.index == 0:
            head, _ = await conn.request()
            server_requests.append(b"%d:" % conn.index + head.split(b" ", 1)[0])
            return  # Server closes it
        await answer_forever(conn, OK_HELLO)

    return handler


async def test_stale_connection_is_retried_for_get(serve: Any, make_pool: PoolFactory) -> None:
    seen: list[bytes] = []
    server = await serve(dies_on_second_request(seen))
    pool = make_pool(server.port)
    assert await fetch(pool) == (200, b"hello")
    assert await fetch(pool) == (200, b"hello")
    assert seen == [b"0:GET", b"0:GET", b"1:GET"]
    assert server.connections == 2


async def test_stale_connection_is_not_retried_for_post(
    serve: Any, make_pool: PoolFactory
) -> None:
    seen: list[bytes] = []
    server = await serve(dies_on_second_request(seen))
    pool = make_pool(server.port)
    assert await fetch(pool, "POST", b"x") == (200, b"hello")
    with pytest.raises(UpstreamUnavailable, match="closed"):
        await send(pool, "POST", b"y")
    assert seen == [b"0:POST", b"0:POST"]
    assert server.connections == 1


# -- 12. the pool limit --------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_limit_one_serialises_requests(
    serve: Any, make_pool: PoolFactory, keep_alive: bool
) -> None:
    arrived: list[int] = []
    gate = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while True:
            await conn.request()
            arrived.append(conn.index)
            await asyncio.wait_for(gate.wait(), WAIT)
            if keep_alive:
                await conn.send(OK_HELLO)
            else:
                await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                b"Content-Length: 5\r\n\r\nhello")
                return  # the server closes first: its own count of open ones is exact

    server = await serve(handler)
    pool = make_pool(server.port, limit=1)
    first = asyncio.create_task(fetch(pool))
    second = asyncio.create_task(fetch(pool))
    await until(lambda: len(arrived) == 1)
    await asyncio.sleep(0.1)
    assert len(arrived) == 1 and not first.done() and not second.done()
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert list(results) == [(200, b"hello"), (200, b"hello")]
    assert server.max_active == 1
    assert server.connections == (1 if keep_alive else 2)


async def test_cancelled_waiter_passes_its_wakeup_on(serve: Any, make_pool: PoolFactory) -> None:
    gate = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await asyncio.wait_for(gate.wait(), WAIT)
        await conn.send(OK_HELLO)
        await answer_forever(conn, OK_HELLO)

    server = await serve(handler)
    pool = make_pool(server.port, limit=1)
    first = asyncio.create_task(fetch(pool))
    await until(lambda: server.connections == 1)
    # Not through wait_for, whose inner task would run on regardless of the cancel.
    second = asyncio.create_task(pool.request("GET", request_head(), b""))
    third = asyncio.create_task(fetch(pool))
    await until(lambda: len(pool._slots) == 2)
    original = pool.put_back

    def put_back(conn: Any) -> None:  # the second one is cancelled in the same loop turn
        original(conn)
        second.cancel()

    pool.put_back = put_back  # type: ignore[method-assign]
    gate.set()
    assert await asyncio.wait_for(first, WAIT) == (200, b"hello")
    with pytest.raises(asyncio.CancelledError):
        await second
    pool.put_back = original  # type: ignore[method-assign]
    assert await asyncio.wait_for(third, 1.0) == (200, b"hello")


def first_waits(gate: asyncio.Event, served: list[bytes], reply: bytes,
                keep_alive: bool = True) -> Handler:
    """Answers ``reply`` to each request, recording its path; ``/first`` waits for
    ``gate`` before its answer."""
    async def handler(conn: Conn) -> None:
        while True:
            head, _ = await conn.request()
            served.append(head.split(b" ")[1])
            if head.startswith(b"GET /first "):
                await asyncio.wait_for(gate.wait(), WAIT)
            await conn.send(reply)
            if not keep_alive:
                return

    return handler


async def get_path(pool: Pool, path: str) -> bytes:
    response = await pool.request("GET", request_head(path=path), b"")
    body = await collect(response)
    response.release(failed=False)
    return body


async def test_waiters_are_served_in_arrival_order(serve: Any, make_pool: PoolFactory) -> None:
    """A request arriving while others wait queues behind them: a connection put back
    goes to the first in line, not to whoever runs first. (Before, a newcomer that ran
    between the release and the waiter's turn took it, and the waiter went to the back of
    the line, again at each lost race, until total_timeout.)"""
    gate = asyncio.Event()
    served: list[bytes] = []
    server = await serve(first_waits(gate, served, OK_HELLO))
    pool = make_pool(server.port, limit=1)
    get = functools.partial(get_path, pool)
    first = asyncio.create_task(get("/first"))
    await until(lambda: served == [b"/first"])
    waiting = [asyncio.create_task(get(f"/waiting-{i}")) for i in range(3)]
    await until(lambda: len(pool._slots) == 3)
    newcomers: list[asyncio.Task[bytes]] = []
    original = pool.put_back

    def put_back(conn: Any) -> None:  # a newcomer arrives in the same loop turn, first
        newcomers.append(asyncio.create_task(get("/newcomer")))
        original(conn)

    pool.put_back = put_back  # type: ignore[method-assign]
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), WAIT)
    pool.put_back = original  # type: ignore[method-assign]
    await asyncio.wait_for(asyncio.gather(*newcomers), WAIT)
    assert served[:4] == [b"/first", b"/waiting-0", b"/waiting-1", b"/waiting-2"], served
    assert server.max_active == 1


async def test_room_freed_by_a_closed_connection_goes_to_the_first_in_line(
    serve: Any, make_pool: PoolFactory
) -> None:
    """A connection that closes leaves room for a new one: the first waiter opens it,
    and a newcomer in the same loop turn does not open one more than the limit."""
    gate = asyncio.Event()
    served: list[bytes] = []
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    server = await serve(first_waits(gate, served, closing, keep_alive=False))
    pool = make_pool(server.port, limit=1)
    get = functools.partial(get_path, pool)
    first = asyncio.create_task(get("/first"))
    await until(lambda: served == [b"/first"])
    waiter = asyncio.create_task(get("/waiter"))
    await until(lambda: len(pool._slots) == 1)
    newcomers: list[asyncio.Task[bytes]] = []
    original = pool.forget

    def forget(conn: Any) -> None:
        newcomers.append(asyncio.create_task(get("/newcomer")))
        original(conn)

    pool.forget = forget  # type: ignore[method-assign]
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, waiter), WAIT)
    pool.forget = original  # type: ignore[method-assign]
    await asyncio.wait_for(asyncio.gather(*newcomers), WAIT)
    assert served[:2] == [b"/first", b"/waiter"], served
    assert server.max_active == 1


# -- 13. back-pressure ---------------------------------------------------------------------


def big_chunked(body: bytes, progress: list[int]) -> Handler:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in chunked(body):
            await conn.send(piece)
            progress[0] += len(piece)
        await conn.send(b"0\r\n\r\n")
        progress[0] = -1  # all sent
        await answer_forever(conn, OK_HELLO)

    return handler


async def test_slow_consumer_pauses_the_socket(serve: Any, make_pool: PoolFactory) -> None:
    body = pattern(16 * 2**20)  # more than the kernel's socket buffers can hold
    progress = [0]
    server = await serve(big_chunked(body, progress))
    pool = make_pool(server.port)
    response = await send(pool)
    conn = response._conn
    assert conn is not None
    await until(lambda: conn.paused)
    await asyncio.sleep(0.2)  # a slow consumer: the server must be stuck meanwhile
    assert conn.paused
    assert response._buffered < HIGH_WATER + 2**20  # bounded, not the whole stream
    assert 0 <= progress[0] < len(body)  # the server's writes block
    assert await collect(response) == body
    response.release(failed=False)
    assert await fetch(pool) == (200, b"hello")
    assert server.connections == 1


async def test_paused_socket_is_not_an_idle_upstream(serve: Any, make_pool: PoolFactory) -> None:
    body = pattern(2**20)
    server = await serve(big_chunked(body, [0]))
    pool = make_pool(server.port, idle_timeout=0.2)
    response = await send(pool)
    conn = response._conn
    assert conn is not None
    await until(lambda: conn.paused)
    await asyncio.sleep(0.4)  # the consumer is slower than idle_timeout, the server is not
    assert await collect(response) == body
    response.release(failed=False)


async def test_late_read_does_not_touch_a_reused_connection(
    serve: Any, make_pool: PoolFactory
) -> None:
    body = pattern(4 * 2**20)

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(OK_HELLO)
        await big_chunked(body, [0])(conn)

    server = await serve(handler)
    pool = make_pool(server.port, limit=1)
    first = await send(pool)
    await until(lambda: first.complete)  # its connection is back in the pool
    second = await send(pool)
    assert second._conn is first._conn  # reused: only one connection allowed
    assert await asyncio.wait_for(first.read(), WAIT) == b"hello"  # read late
    first.release(failed=False)
    conn = second._conn
    assert conn is not None
    await asyncio.sleep(0.2)
    assert conn.paused  # the second exchange is still flow-controlled
    assert await collect(second) == body
    second.release(failed=False)


async def test_connection_is_not_put_back_paused(serve: Any, make_pool: PoolFactory) -> None:
    body = pattern(HIGH_WATER + 4096)

    async def handler(conn: Conn) -> None:
        await conn.request()  # the whole response in one write: it is parsed in one go
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + b"".join(chunked(body)) + b"0\r\n\r\n")
        await answer_forever(conn, OK_HELLO)

    server = await serve(handler)
    pool = make_pool(server.port, limit=1, read_timeout=0.5)
    first = await send(pool)
    # Complete, though more than HIGH_WATER arrived in the one read that also held its
    # end: reading was paused on the way, and never resumed since nothing was taken.
    await until(lambda: first.complete, timeout=2.0)
    # Relay._stream awaits response.prepare() before its first chunks() step: meanwhile
    # the connection, complete and back in the pool, serves the next request.
    assert await fetch(pool) == (200, b"hello")
    assert server.connections == 1
    assert await collect(first) == body
    first.release(failed=False)


# -- 14. release and cancel ----------------------------------------------------------------


@pytest.mark.parametrize("failed", [True, False])
async def test_release_mid_body_closes_the_connection(
    serve: Any, make_pool: PoolFactory, failed: bool
) -> None:
    closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        if conn.index == 0:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await conn.until_closed()
            closed.set()
        else:
            await conn.send(OK_HELLO)
            await answer_forever(conn, OK_HELLO)

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool)
    await until(lambda: response._buffered == 10)
    response.release(failed=failed)
    await asyncio.wait_for(closed.wait(), WAIT)
    assert await fetch(pool) == (200, b"hello")
    assert server.connections == 2


async def test_release_after_complete_keeps_the_connection(
    serve: Any, make_pool: PoolFactory
) -> None:
    server = await serve(lambda conn: answer_forever(conn, OK_HELLO))
    pool = make_pool(server.port)
    response = await send(pool)
    assert await asyncio.wait_for(response.read(), WAIT) == b"hello"
    response.release(failed=True)  # the exchange is over: its connection is not touched
    assert await fetch(pool) == (200, b"hello")
    assert server.connections == 1


async def test_cancelled_request_closes_the_connection(
    serve: Any, make_pool: PoolFactory
) -> None:
    received = asyncio.Event()
    closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        if conn.index == 0:
            received.set()
            await conn.until_closed()
            closed.set()
        else:
            await conn.send(OK_HELLO)
            await answer_forever(conn, OK_HELLO)

    server = await serve(handler)
    pool = make_pool(server.port, limit=1)
    task = asyncio.create_task(pool.request("GET", request_head(), b""))
    await asyncio.wait_for(received.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(closed.wait(), WAIT)
    assert await fetch(pool) == (200, b"hello")  # and its slot is free (limit=1)
    assert server.connections == 2


# -- 15. malformed responses ---------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 abc\r\n",
    b"HTTP/1.1 abc\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 799 Weird\r\nContent-Length: 2\r\n\r\nok",  # RFC 9110: 1xx to 5xx only
    b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n",
])
async def test_malformed_head_is_upstream_unavailable(
    serve: Any, make_pool: PoolFactory, data: bytes
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(data)
        await conn.until_closed()

    server = await serve(handler)
    pool = make_pool(server.port)
    with pytest.raises(UpstreamUnavailable, match="malformed") as caught:
        await send(pool)
    assert "callback" not in str(caught.value)


async def test_malformed_chunk_is_upstream_unavailable(
    serve: Any, make_pool: PoolFactory
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\nzz\r\n")
        await conn.until_closed()

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool)
    with pytest.raises(UpstreamUnavailable, match="malformed"):
        await collect(response)
    response.release(failed=True)


async def test_unsolicited_bytes_on_an_idle_connection_drop_it(
    serve: Any, make_pool: PoolFactory
) -> None:
    async def handler(conn: Conn) -> None:
        if conn.index > 0:
            await answer_forever(conn, OK_HELLO)
        await conn.request()
        await conn.send(OK_HELLO + b"HTTP/1.1 200 OK\r\n")  # one response too many
        await conn.until_closed()

    server = await serve(handler)
    pool = make_pool(server.port)
    assert await fetch(pool) == (200, b"hello")
    assert await fetch(pool) == (200, b"hello")
    assert server.connections == 2


# -- 16. Upstream: the request head --------------------------------------------------------

IDENTITY = {
    "SIDECAR_MODEL_NAME": "test-model",
    "SIDECAR_MODEL_VERSION": "1.2.3",
    "SIDECAR_POLICY_VERSION": "pol-9",
    "SIDECAR_EVIDENCE_BUNDLE_ID": "eb-42",
}


def upstream_for(url: str) -> Upstream:
    return Upstream(load_settings(environ={**IDENTITY, "SIDECAR_UPSTREAM_URL": url}))


def test_upstream_head_prefix_host_and_content_length() -> None:
    upstream = upstream_for("http://127.0.0.1:1/prefix/")
    headers = CIMultiDict([("X-A", "1"), ("x-a", "2")])
    get = upstream.head("GET", "/v1/x?q=1", headers, b"")
    assert get == (b"GET /prefix/v1/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"
                   b"X-A: 1\r\nx-a: 2\r\n\r\n")
    post = upstream.head("POST", "/v1/x", CIMultiDict(), b"")
    assert post == b"POST /prefix/v1/x HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Length: 0\r\n\r\n"
    delete = upstream.head("DELETE", "/d", CIMultiDict(), b"abc")
    assert delete.endswith(b"\r\nContent-Length: 3\r\n\r\n")
    bare = upstream_for("http://model.local")
    assert bare.head("GET", "/", CIMultiDict(), b"") == (
        b"GET / HTTP/1.1\r\nHost: model.local\r\n\r\n")


async def test_upstream_sends_through_the_pool(serve: Any) -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(conn: Conn) -> None:
        while True:
            seen.append(await conn.request())
            await conn.send(OK_HELLO)

    server = await serve(handler)
    upstream = upstream_for(f"http://127.0.0.1:{server.port}/base")
    await upstream.start()
    try:
        with pytest.raises(RequestRejected) as info:  # absolute form is accepted (a path)
            await upstream.send("OPTIONS", "*", CIMultiDict(), b"")
        assert info.value.status == 400
        # A fragment is no part of an origin-form target (RFC 9112 §3.2): never sent on.
        for target in ("/v1/x?q=1", "/v1/x?q=1#frag", "http://h/v1/x?q=1#frag"):
            response = await asyncio.wait_for(
                upstream.send("POST", target, CIMultiDict([("X-T", "t")]), b"body"), WAIT)
            assert await asyncio.wait_for(response.read(), WAIT) == b"hello"
            finish(response, failed=False)
    finally:
        await upstream.close()
    assert len(seen) == 3
    for head, body in seen:
        assert head == (f"POST /base/v1/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                        f"X-T: t\r\nContent-Length: 4\r\n\r\n").encode()
        assert body == b"body"


# -- no reference cycles ------------------------------------------------------------------


async def test_an_exchange_leaves_no_garbage_for_the_cyclic_collector(
    serve: Any, make_pool: PoolFactory
) -> None:
    # Every object of a request must be freed by reference counting: cyclic garbage per
    # request (the head future held the response it resolves to) made the collector run
    # ever more often, and its pauses stop the event loop (p99 at load). Failures may
    # leave some (an exception's traceback holds its frames): they are rare.
    import gc

    chunks = b"".join(chunked(b"0123456789" * 10, 25)) + b"0\r\n\r\n"
    answers = [OK_HELLO, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks]

    async def alternate(conn: Conn) -> None:
        for n in range(10_000):
            await conn.request()
            await conn.send(answers[n % 2])

    server = await serve(alternate)
    pool = make_pool(server.port, limit=1)
    for _ in range(2):  # warm: connection made, lazy imports done
        await fetch(pool)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for n in range(60):
            if n % 2:
                response = await send(pool)
                assert await collect(response) == b"0123456789" * 10
                response.release(failed=False)
            else:
                assert await fetch(pool) == (200, b"hello")
        gc.collect()
        found = [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == []


async def test_an_upstream_silent_after_a_pause_is_cut_at_idle_timeout(
    serve: Any, make_pool: PoolFactory
) -> None:
    """The timer a pause set for the total deadline must be brought back to the idle one
    when reading resumes: a stalled upstream is cut after idle_timeout, not total."""
    body = pattern(4 * 2**20)

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in chunked(body):
            await conn.send(piece)
        await conn.until_closed()  # then nothing: no terminating chunk

    server = await serve(handler)
    pool = make_pool(server.port, idle_timeout=0.3, total_timeout=30.0)
    response = await send(pool)
    conn = response._conn
    assert conn is not None
    await until(lambda: conn.paused)
    await asyncio.sleep(0.6)  # a consumer slower than idle_timeout: not the upstream's fault
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(collect(response), 10)
    assert time.monotonic() - started < 5  # idle_timeout after the last byte, not 30 s
    response.release(failed=True)


async def test_a_reset_is_not_the_end_of_a_body_delimited_by_the_close(
    serve: Any, make_pool: PoolFactory
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial-")
        await asyncio.sleep(0.05)
        sock = conn.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.writer.transport.abort()  # RST, not FIN

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool)
    with pytest.raises(UpstreamUnavailable):
        await asyncio.wait_for(collect(response), WAIT)
    response.release(failed=True)


async def test_the_wait_for_a_free_connection_counts_against_total_timeout(
    serve: Any, make_pool: PoolFactory
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.until_closed()  # never answers

    server = await serve(handler)
    pool = make_pool(server.port, limit=1, read_timeout=0.3, total_timeout=0.3)
    started = time.monotonic()

    async def timed() -> tuple[BaseException | None, float]:
        try:
            await send(pool)
        except UpstreamTimeout as exc:
            return exc, time.monotonic() - started
        return None, time.monotonic() - started
    results = await asyncio.gather(*(timed() for _ in range(3)))
    assert all(isinstance(exc, UpstreamTimeout) for exc, _ in results), results
    # Each within total_timeout of its start, queued or not (before: 0.3, 0.6, 0.9 s).
    assert max(elapsed for _, elapsed in results) < 0.55


# -- trailers and transfer codings ------------------------------------------------------


async def test_trailer_fields_never_join_the_header_section(
    serve: Any, make_pool: PoolFactory
) -> None:
    # RFC 9110 §6.5.1: the whole response in one write, so the trailers are parsed before
    # anyone reads the headers
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Transfer-Encoding: chunked\r\nTrailer: X-Usage\r\n\r\n"
                        b"2\r\n{}\r\n0\r\nX-Usage: 42\r\nContent-Type: text/html\r\n"
                        b"Set-Cookie: from-trailer=1\r\n\r\n")
        await answer_forever(conn, OK_HELLO)

    server = await serve(handler)
    pool = make_pool(server.port)
    response = await send(pool)
    assert await collect(response) == b"{}"
    assert response.headers.getall("content-type") == ["application/json"]
    assert "x-usage" not in response.headers and "set-cookie" not in response.headers
    response.release(failed=False)
    assert await fetch(pool) == (200, b"hello")  # the connection is still in step


async def test_a_transfer_coding_other_than_chunked_is_refused(
    serve: Any, make_pool: PoolFactory
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                        b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n")
        await conn.until_closed()

    server = await serve(handler)
    with pytest.raises(UpstreamUnavailable, match="transfer coding 'gzip, chunked'"):
        await send(make_pool(server.port))


async def test_bytes_after_a_response_never_reach_the_next_request_in_line(
    serve: Any, make_pool: PoolFactory
) -> None:
    """The connection is handed on only once its whole read was parsed: extra bytes in
    the read that ended the response close it first, so the request waiting for it gets a
    fresh connection, not one about to be aborted (a POST, not retried, would get a 502
    without ever having been sent)."""
    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        if conn.index > 0:
            await answer_forever(conn, OK_HELLO)
        await conn.request()
        await release.wait()
        await conn.send(OK_HELLO + b"HTTP/1.1 200 OK\r\n")  # one response too many
        await conn.until_closed()

    server = await serve(handler)
    pool = make_pool(server.port, limit=1)
    first = asyncio.create_task(fetch(pool))
    await until(lambda: server.connections == 1)
    second = asyncio.create_task(fetch(pool, "POST", b"x"))
    await until(lambda: len(pool._slots) == 1)  # waiting for the only connection
    release.set()
    assert await first == (200, b"hello")
    assert await second == (200, b"hello")
    assert server.connections == 2


async def test_a_101_from_the_upstream_is_a_malformed_response(
    serve: Any, make_pool: PoolFactory
) -> None:
    # The sidecar relays no protocol switch (Upgrade is hop-by-hop and not forwarded), so
    # a 101 answers a request that did not ask for one.
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: upgrade\r\n\r\n")
        await conn.until_closed()

    server = await serve(handler)
    pool = make_pool(server.port)
    with pytest.raises(UpstreamUnavailable, match="malformed response: it switched protocols"):
        await send(pool)
