"""The receive stage: aiohttp's low-level server, so that even requests the HTTP parser
refuses get a stamped JSON reply and an event.

aiohttp answers unparseable requests itself, in ``RequestHandler.handle_error``, before
any application code runs; we override that one method. The low-level ``web.Server``
also skips the router and middleware machinery that a single catch-all proxy never needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from sidecar.logs import get_logger

log = get_logger("proxy")

# Set on a request once the proxy handler has taken it: from then on that handler owns
# its one event, and an exception escaping it is not a parse error.
OWNED = web.RequestKey("inference_sidecar_owned", bool)

# aiohttp fills in fields a response lacks, as an origin server would: its own name and
# version as ``Server``, and ``Content-Type: application/octet-stream`` for content. A proxy
# forwards what the model server sent and names no software of its own, so the relay lists
# here the fields the model server did not send, and they are taken out again before the
# head is written. The sidecar's own responses (no entry) carry no ``Server``.
UNSENT = web.ResponseKey("inference_sidecar_unsent", tuple)
FILLED_IN = ("Server", "Content-Type")  # what aiohttp adds when absent (``Date`` is due)


def unsent(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The fields of ``FILLED_IN`` that ``headers`` (the forwarded ones) lack."""
    return tuple(name for name in FILLED_IN if name not in headers)


class ErrorResponder(Protocol):
    def __call__(self, request: web.BaseRequest, status: int, code: str) -> web.StreamResponse:
        ...


def classify_parse_error(status: int, exc: BaseException | None,
                         line_limit: int | None = None,
                         field_limit: int | None = None) -> tuple[int, str]:
    """HTTP status and error code for a request the parser refused."""
    if isinstance(exc, LineTooLong):
        # The parser names the limit it hit: the request line's or a header field's.
        limit = exc.args[1] if len(exc.args) > 1 else None
        if line_limit != field_limit and limit in (line_limit, field_limit):
            if limit == line_limit:
                return 414, "request_line_too_long"
            return 431, "header_too_large"
        # Both limits equal: the overlong text itself tells a request target (origin-form
        # "/..." or absolute-form "http...") from a header line, mostly.
        line = exc.args[0] if exc.args else b""
        if isinstance(line, str):
            line = line.encode("latin-1", "replace")
        if isinstance(line, bytes | bytearray) and bytes(line[:8]).startswith(
            (b"/", b"http://", b"https://")
        ):
            return 414, "request_line_too_long"
        return 431, "header_too_large"
    if isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower():
        return 431, "too_many_headers"
    if status == 500:
        return 500, "internal_error"
    return status, "bad_request"


class ProxyRequest(web.BaseRequest):
    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # aiohttp calls this between filling in the head and writing it (for
        # ``web.Application`` it runs ``on_response_prepare``; the low-level server has none).
        for name in response.get(UNSENT, ("Server",)):
            response.headers.popall(name, None)


class _StampedRequestHandler(RequestHandler):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A body the parser refused part-way (a bad chunk size in a later read): aiohttp
        # queues a 400 for after the request and leaves the request's body open, neither
        # ended nor failed, so its reader would wait out idle_timeout (a 408, minutes
        # later). Fail the body now; the handler answers (and records) it.
        request = self._current_request
        if (request is not None and self._messages
                and isinstance(self._messages[-1][0], _ErrInfo)
                and not request.content.is_eof() and request.content.exception() is None):
            request.content.set_exception(BadHttpMessage(self._messages[-1][0].message))

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.get(OWNED):
            # The handler let an exception out: on purpose (ConnectionResetError cuts off
            # a response whose event is not durable), or a bug. Its event is recorded; a
            # reply here would be a second answer with a second event. Cut the connection.
            if not isinstance(exc, ConnectionResetError):
                log.error("request handler failed; connection closed",
                          extra={"fields": {"reason": type(exc).__name__}})
            self.force_close()
            if self.transport is not None:
                self.transport.abort()
            return web.Response(status=status)  # never written: the transport is gone
        if request.writer.output_size > 0 or not isinstance(self._manager, ProxyServer):
            return super().handle_error(request, status, exc, message)
        manager = self._manager
        status, code = classify_parse_error(status, exc, manager.line_limit,
                                            manager.field_limit)
        response = self._manager.on_error(request, status, code)
        response.force_close()
        return response


class ProxyServer(web.Server):
    """``web.Server`` whose connections answer parse errors through ``on_error``."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        on_error: ErrorResponder,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, handler_cancellation=True,
                         request_factory=self._proxy_request, **kwargs)
        self.on_error = on_error
        self.line_limit: int | None = kwargs.get("max_line_size")
        self.field_limit: int | None = kwargs.get("max_field_size")

    def _proxy_request(self, message: RawRequestMessage, payload: StreamReader,
                       protocol: RequestHandler, writer: AbstractStreamWriter,
                       task: asyncio.Task[None]) -> web.BaseRequest:
        return ProxyRequest(message, payload, protocol, writer, task, self._loop)

    def __call__(self) -> RequestHandler:
        return _StampedRequestHandler(self, loop=self._loop, **self._kwargs)
