"""The relay stage: upstream response → client, buffered or streamed, then stamped.

Small responses with a known length are read whole (so a JSON body can be stamped and
one write sends it); anything else — SSE, chunked, large — is relayed chunk by chunk as
it arrives, never buffered. After the headers of a stream are sent, a failure cannot
become an error reply any more: the client connection is aborted so the truncation is
visible, and the event records what happened (uvicorn and Envoy do the same).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from sidecar.config import Settings
from sidecar.detection.observed import Observed
from sidecar.errors import SidecarError
from sidecar.privacy.context import Capture
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.pool import UpstreamResponse
from sidecar.proxy.protocol import UNSENT, unsent
from sidecar.proxy.stamp import Stamp
from sidecar.proxy.upstream import response_headers


def error_body(code: str, message: str, inference_id: str) -> bytes:
    return orjson.dumps({"error": code, "message": message, "inference_id": inference_id})


def _held(capture: Capture | None, observed: Observed | None) -> Any:
    """The event's share of the raw-body budget (None: it keeps no bodies)."""
    if capture is not None:
        return capture.held
    return observed.held if observed is not None else None


def _within_budget(capture: Capture | None, observed: Observed | None, body: bytes) -> bool:
    """Whether the event may keep the response body: its share of the raw-body budget
    grows by it (``sidecar/proxy/held.py``); an event over budget keeps none."""
    if not body or (capture is None and observed is None):
        return True
    held = _held(capture, observed)
    return held is not None and bool(held.grow(len(body)))


def wants_stream(upstream: UpstreamResponse, buffer_limit: int) -> bool:
    length = upstream.content_length
    if length is None or length > buffer_limit:
        return upstream.status not in (204, 304) and upstream.method != "HEAD"
    return "text/event-stream" in upstream.headers.get("content-type", "")


class Relay:
    def __init__(self, settings: Settings, stamp: Stamp,
                 on_body_skipped: Callable[[], None] = lambda: None) -> None:
        self._buffer_limit = settings.buffer_response_bytes
        self._replace_errors = settings.replace_upstream_errors
        self._stamp = stamp
        self._on_body_skipped = on_body_skipped  # a response the raw-body budget refused

    async def send(
        self, request: web.BaseRequest, upstream: UpstreamResponse, exchange: Exchange
    ) -> web.StreamResponse:
        exchange.event.upstream_status = upstream.status
        if wants_stream(upstream, self._buffer_limit):
            return await self._stream(request, upstream, exchange)
        return await self._buffered(request, upstream, exchange)

    async def _buffered(
        self, request: web.BaseRequest, upstream: UpstreamResponse, exchange: Exchange
    ) -> web.StreamResponse:
        event = exchange.event
        body = await upstream.read()
        event.ttfb_ms = (time.perf_counter() - exchange.started) * 1000.0
        headers = response_headers(upstream.headers)
        iid = event.inference_id
        replaced = self._replace_errors and upstream.status >= 500
        if replaced:
            body = error_body("upstream_error", f"upstream answered {upstream.status}", iid)
            headers["Content-Type"] = "application/json"
            headers.popall("Content-Encoding", None)
        elif (
            self._stamp.body_enabled and upstream.status < 400
            and "content-encoding" not in headers
        ):  # error bodies pass through unchanged (or are replaced, above)
            stamped = self._stamp.body(body, headers.get("content-type"), iid)
            if stamped is not None:
                body = stamped
        capture: Capture | None = getattr(event, "capture", None)
        observed: Observed | None = getattr(event, "observed", None)
        had = _held(capture, observed) is not None  # else counted at the request already
        kept = _within_budget(capture, observed, body)
        if had and not kept:  # no payload, and no token usage for the detectors: counted
            self._on_body_skipped()
        if capture is not None:  # references only: masked later, in the privacy stage
            capture.response(list(upstream.headers.items()), body if kept else None)
            capture.over_budget |= not kept
        if observed is not None and kept:  # the detectors read the token usage from it
            observed.response_body = body
        response = web.Response(
            status=upstream.status, reason=upstream.reason, body=body, headers=headers
        )
        response[UNSENT] = unsent(headers)
        if upstream.method == "HEAD" and upstream.content_length is not None and not replaced:
            # RFC 9110 §9.3.2: the size a GET would have sent, not the empty body's
            response.headers["Content-Length"] = str(upstream.content_length)
        self._stamp.headers(response.headers, iid)
        event.status = upstream.status
        event.response_bytes = len(body)
        await exchange.commit()
        await response.prepare(request)
        await response.write_eof()
        return response

    async def _stream(
        self, request: web.BaseRequest, upstream: UpstreamResponse, exchange: Exchange
    ) -> web.StreamResponse:
        event = exchange.event
        length = upstream.content_length
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason,
            headers=response_headers(upstream.headers),
        )
        if length is not None:
            response.content_length = length
        response[UNSENT] = unsent(response.headers)
        self._stamp.headers(response.headers, event.inference_id)
        event.stream = True
        event.status = upstream.status
        copy = None  # a bounded copy of the stream, when the privacy profile samples it
        capture: Capture | None = getattr(event, "capture", None)
        if capture is not None:
            capture.response(list(upstream.headers.items()), None)
            before = capture.over_budget
            copy = capture.stream_if_sampled(event.inference_id, upstream.status)
            if capture.over_budget and not before:
                self._on_body_skipped()
        await response.prepare(request)
        sent = 0
        chunks = 0
        held = b""  # with a Content-Length, the final byte is the completion signal
        try:
            async for chunk in upstream.chunks():
                if chunks == 0:
                    event.ttfb_ms = (time.perf_counter() - exchange.started) * 1000.0
                chunks += 1
                sent += len(chunk)
                if copy is not None:
                    copy.feed(chunk)
                if length is not None and sent >= length:
                    chunk, held = chunk[:-1], chunk[-1:]
                await response.write(chunk)
            if copy is not None:
                copy.complete = True
            event.chunks, event.response_bytes = chunks, sent
            await exchange.commit()
            if held:
                await response.write(held)
            await response.write_eof()
        except SidecarError:
            # Headers are out: the only honest signal left is to cut the connection.
            if request.transport is not None:
                request.transport.abort()
            raise
        finally:
            if not exchange.committed:
                event.chunks, event.response_bytes = chunks, sent
        return response
