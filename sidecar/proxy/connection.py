"""One keep-alive connection to the model server (``Connection``, an asyncio protocol fed
by llhttp via ``httptools``) and the response it carries (``UpstreamResponse``).

``pool.py`` holds the pool of them and the design notes: timeouts on one lazily re-armed
timer per exchange, back-pressure past ``HIGH_WATER`` unread bytes, 1xx skipped, HEAD
ended at its head, a body delimited by the connection's close ended at the close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, cast

import httptools
from multidict import CIMultiDict

from sidecar.errors import UpstreamTimeout, UpstreamUnavailable

if TYPE_CHECKING:
    from sidecar.proxy.pool import Pool

HIGH_WATER: Final = 2**16


class UpstreamResponse:
    """The model server's answer: head fields at once, the body as it arrives."""

    __slots__ = ("_buffered", "_chunks", "_conn", "_error", "_head", "_waiter", "complete",
                 "content_length", "headers", "method", "reason", "status")

    def __init__(self, method: str, head: asyncio.Future[UpstreamResponse]) -> None:
        self.method = method
        self.status = 0
        self.reason: str | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content_length: int | None = None
        self.complete = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._conn: Connection | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = head  # until resolved

    def _resolve(self, error: Exception | None = None) -> None:
        """Hand the head to the waiting request, or fail it, once; then let go of the
        future. Its result is this response: kept, that reference cycle would leave every
        request's response, headers and future to the cyclic collector, whose pauses
        stop the event loop."""
        head, self._head = self._head, None
        if head is not None and not head.done():
            if error is None:
                head.set_result(self)
            else:
                head.set_exception(error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self, error: Exception | None = None) -> None:
        self.complete = True
        self._error = error
        self._wake()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _serving(self) -> Connection | None:
        """The connection, while it still carries this response (not reused since)."""
        conn = self._conn
        return conn if conn is not None and conn.response is self else None

    def _take(self) -> bytes:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        conn = self._serving()
        if conn is not None and conn.paused:
            conn.resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def read(self) -> bytes:
        """The whole body (the caller checked it is small: no back-pressure here)."""
        conn = self._serving()
        if conn is not None:
            conn.pausable = False
            if conn.paused:
                conn.resume()
        while not self.complete:
            await self._wait()
        if self._error is not None:
            raise self._error
        return self._take() if self._chunks else b""

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive: whatever came since the last wake-up, joined."""
        while True:
            if self._chunks:
                yield self._take()
            elif self.complete:
                if self._error is not None:
                    raise self._error
                return
            else:
                await self._wait()

    def release(self, failed: bool) -> None:
        """Done with it: after a failure, or before the body was read to its end, the
        connection's state is unknown and it is closed, never reused."""
        conn, self._conn = self._conn, None
        if conn is not None and conn.response is self and (failed or not self.complete):
            conn.abort()


class Connection(asyncio.Protocol):
    """One keep-alive connection; httptools calls the ``on_*`` methods from ``feed_data``."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.received = False  # any byte of the current response yet
        self.paused = False
        self.pausable = True
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = self._head_deadline = 0.0
        self._last_byte = 0.0
        self._interim = False
        # A response ended in this read and the connection may serve another: handed on
        # only once the whole read is parsed, so bytes after the response (which the
        # parser then refuses, closing it) can never reach the next request in line.
        self._reusable = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: the stream is out of step
            self.abort()
            return
        self.received = True
        self._last_byte = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
            self._reusable = False
            self._fail(UpstreamUnavailable(f"upstream sent a malformed response: {cause}"))
            return
        except httptools.HttpParserUpgrade:  # not an HttpParserError: a 101
            # Upgrade is hop-by-hop and never forwarded, so nothing asked for a switch.
            self._reusable = False
            self._fail(UpstreamUnavailable(
                "upstream sent a malformed response: it switched protocols (101), which "
                "no request asked for"))
            return
        if self._reusable:
            self._reusable = False
            if self.paused:  # the read that crossed HIGH_WATER also held the body's end
                self.resume()
            self.pool.put_back(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self.response
        if response is None:
            return
        if (exc is None and response.status and response.content_length is None
                and not self._chunked()):
            self._done(None)  # a body delimited by the close (a reset is no such end)
        else:
            self._fail(UpstreamUnavailable("upstream closed the connection"))

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.response is None:  # a second response in the read that ended the first
            raise ValueError("bytes after the response")  # data_received closes it

    def on_status(self, status: bytes) -> None:
        assert self.response is not None
        self.response.reason = (self.response.reason or "") + _text(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        if self.response.status:  # a trailer field: never merged into the header section
            return  # (RFC 9110 §6.5.1); the relay has sent the headers already, or will
        self.response.headers.add(_text(name), _text(value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): skip it
            self._interim = True
            response.headers, response.reason = CIMultiDict(), None
            return
        if not 200 <= status <= 599:  # RFC 9110 §15: three digits, 1xx to 5xx
            raise ValueError(f"status {status}")  # the parser stops; data_received fails it
        codings = ",".join(response.headers.getall("transfer-encoding", ())).lower()
        if codings and any(c.strip() not in ("chunked", "") for c in codings.split(",")):
            # httptools removes the chunked framing only: the rest would reach the client
            # undecoded, with the header that names it dropped as hop-by-hop (RFC 9112 §7)
            raise ValueError(f"transfer coding {codings!r} is not supported")
        response.status = status
        length = response.headers.get("content-length")
        if length is not None and length.isdigit():
            response.content_length = int(length)
        self._arm()  # from now on: idle and total
        response._resolve()
        if response.method == "HEAD":
            self._done(None, reuse=False)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is None:
            return
        response._chunks.append(body)
        response._buffered += len(body)
        if response._buffered > HIGH_WATER and self.pausable and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        response._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._done(None, reuse=self.parser.should_keep_alive())

    # -- the exchange ------------------------------------------------------------------

    def send(self, head: bytes, body: bytes, response: UpstreamResponse,
             deadline: float | None = None) -> None:
        """Write the request; ``deadline`` (loop time) bounds the whole exchange, by
        default ``total_timeout`` from now."""
        assert self.transport is not None
        self.response = response
        response._conn = self
        self.received = self.paused = self._interim = False
        self.pausable = True
        now = self.loop.time()
        self._deadline = now + self.pool.total_timeout if deadline is None else deadline
        self._head_deadline = now + self.pool.read_timeout
        self._last_byte = now
        self._arm()
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)

    def resume(self) -> None:
        self.paused = False
        self._last_byte = self.loop.time()  # the silence was ours, not the upstream's
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        if self.response is not None:
            self._arm()  # paused, the timer was set for the total deadline only

    def abort(self) -> None:
        self._cancel_timer()
        self.response = None
        if self.transport is not None:
            self.transport.abort()

    def _chunked(self) -> bool:
        response = self.response
        return response is not None and "chunked" in response.headers.get(
            "transfer-encoding", "").lower()

    def _done(self, error: Exception | None, reuse: bool = False) -> None:
        response, self.response = self.response, None
        self._cancel_timer()
        if response is None:
            return
        if error is None and not response.status:
            error = UpstreamUnavailable("upstream closed the connection")
        response._end(error)
        if reuse and error is None and not self.closed:
            self._reusable = True  # data_received hands it on once the read is parsed
        elif not self.closed and self.transport is not None:
            self.transport.close()

    def _fail(self, error: Exception) -> None:
        response = self.response
        self._done(error)
        if response is not None:
            response._resolve(error)
        if self.transport is not None:
            self.transport.abort()

    # -- timeouts: one timer, re-armed only when it fires early ------------------------

    def _next_deadline(self) -> float:
        response = self.response
        if response is None or not response.status:
            return min(self._deadline, self._head_deadline)
        if self.paused:  # waiting for our consumer: only the total timeout applies
            return self._deadline
        return min(self._deadline, self._last_byte + self.pool.idle_timeout)

    def _arm(self) -> None:
        """Have the timer fire by the next deadline (a later one only re-arms it)."""
        deadline = self._next_deadline()
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.response is None:
            return
        if self.loop.time() < self._next_deadline():
            self._arm()  # bytes came meanwhile: not idle
            return
        phase = "answer in time" if not self.response.status else "send more in time"
        self._fail(UpstreamTimeout(f"upstream did not {phase}"))


def _text(raw: bytes) -> str:
    """Header bytes as aiohttp's writer wants them: it encodes ``str`` as UTF-8 (strict),
    so UTF-8 gives the client the very bytes the upstream sent. Bytes that are not UTF-8
    (a legacy Latin-1 value) are taken as Latin-1: changed on the way, but never a crash."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
