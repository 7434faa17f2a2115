"""The request path, top to bottom: receive → filters → upstream → relay → stamp → event.

``ProxyHandler.__call__`` is the aiohttp handler for every request on the proxy port.
It creates the inference's event on arrival and enqueues it in ``finally``: errors,
timeouts, rejections and client disconnects (which cancel the handler at whatever
``await`` it is in) all produce exactly one event. The only thing it does with the
event is ``EventQueue.put``, which never blocks.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from aiohttp import web

from sidecar.config import Settings
from sidecar.errors import (
    OUTCOME_ABORTED,
    OUTCOME_CLIENT_DISCONNECTED,
    OUTCOME_OK,
    OUTCOME_REJECTED,
    SidecarError,
)
from sidecar.events.model import InferenceEvent
from sidecar.events.queue import EventQueue
from sidecar.ids import new_inference_id
from sidecar.logs import get_logger
from sidecar.proxy.filters import read_request_body
from sidecar.proxy.relay import Relay, error_body
from sidecar.proxy.routes import RouteTable
from sidecar.proxy.stamp import Stamp
from sidecar.proxy.upstream import Upstream, request_headers
from sidecar.telemetry import Metrics

log = get_logger("proxy")

# nginx's convention: the client (or a shutdown) ended the exchange before any response.
STATUS_NO_RESPONSE = 499


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, if it is well formed.

    >>> trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    '4bf92f3577b34da6a3ce929d0e0e4736'
    >>> trace_id("garbage") is None
    True
    """
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    return parts[1]


class ProxyHandler:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        queue: EventQueue,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._identity = settings.identity
        self._upstream = upstream
        self._queue = queue
        self._metrics = metrics
        self._stamp = Stamp(settings)
        self._relay = Relay(settings, self._stamp)
        self._routes = RouteTable(settings.routes)
        self._max_body = settings.max_body_bytes
        self.shutting_down = False

    def _new_event(self, request: web.BaseRequest) -> InferenceEvent:
        headers = request.headers
        path = request.path
        return InferenceEvent(
            inference_id=new_inference_id(),
            timestamp=datetime.now(UTC).isoformat(timespec="microseconds"),
            method=request.method,
            route=self._routes.classify(path),
            path=path,
            client_address=request.remote,
            trace_id=trace_id(headers.get("traceparent")),
            request_id=headers.get("x-request-id"),
            model_name=self._identity["model_name"],
            model_version=self._identity["model_version"],
            policy_version=self._identity["policy_version"],
            evidence_bundle_id=self._identity["evidence_bundle_id"],
        )

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        event = self._new_event(request)
        self._metrics.in_flight.inc()
        try:
            return await self._proxy(request, event, started)
        except SidecarError as exc:
            event.outcome, event.error = exc.outcome, exc.code
            return await self._reply_error(request, event, exc.status, exc.code, exc.message)
        except (ConnectionResetError, asyncio.CancelledError):
            event.outcome = OUTCOME_ABORTED if self.shutting_down else OUTCOME_CLIENT_DISCONNECTED
            raise
        except Exception as exc:
            log.error("unexpected error in the request path", exc_info=True,
                      extra={"fields": {"inference_id": event.inference_id}})
            event.outcome, event.error = "upstream_error", "internal_error"
            return await self._reply_error(request, event, 500, "internal_error",
                                           f"sidecar error: {type(exc).__name__}")
        finally:
            self._metrics.in_flight.dec()
            self._finish(event, started)

    async def _proxy(
        self, request: web.BaseRequest, event: InferenceEvent, started: float
    ) -> web.StreamResponse:
        body = await read_request_body(request, self._max_body)
        event.request_bytes = len(body)
        headers = request_headers(
            request.headers, event.inference_id, request.remote, request.scheme
        )
        async with self._upstream.request(
            request.method, request.raw_path, headers, body
        ) as upstream:
            event.upstream_latency_ms = (time.perf_counter() - started) * 1000.0
            response = await self._relay.send(request, upstream, event, started)
        event.outcome = OUTCOME_OK if upstream.status < 400 else "upstream_error"
        return response

    async def _reply_error(
        self, request: web.BaseRequest, event: InferenceEvent, status: int, code: str,
        message: str,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionResetError("response already started")  # relay aborted it
        response = self.error_response(event.inference_id, status, code, message)
        event.status = status
        event.response_bytes = response.content_length or 0
        await response.prepare(request)
        await response.write_eof()
        return response

    def error_response(
        self, inference_id: str, status: int, code: str, message: str
    ) -> web.Response:
        response = web.Response(
            status=status, body=error_body(code, message, inference_id),
            content_type="application/json",
        )
        self._stamp.headers(response.headers, inference_id)
        if status in (413, 414, 431):
            response.force_close()  # the rest of the request was not read
        return response

    def on_parse_error(
        self, request: web.BaseRequest, status: int, code: str
    ) -> web.StreamResponse:
        """Stamped reply and event for a request the HTTP parser refused."""
        started = time.perf_counter()
        event = self._new_event(request)
        event.outcome = OUTCOME_REJECTED if status < 500 else "upstream_error"
        event.error, event.status = code, status
        response = self.error_response(event.inference_id, status, code, "malformed request")
        event.response_bytes = response.content_length or 0
        self._finish(event, started)
        return response

    def _finish(self, event: InferenceEvent, started: float) -> None:
        elapsed = time.perf_counter() - started
        event.latency_ms = elapsed * 1000.0
        if not event.outcome:
            event.outcome = OUTCOME_CLIENT_DISCONNECTED
        if event.status == 0:
            event.status = STATUS_NO_RESPONSE
        metrics = self._metrics
        metrics.observe_request(event.route, event.status, elapsed)
        metrics.outcomes.labels(event.outcome).inc()
        if event.upstream_latency_ms is not None:
            metrics.upstream_duration.labels(event.route).observe(
                event.upstream_latency_ms / 1000.0)
        if event.ttfb_ms is not None:
            metrics.ttfb.labels(event.route).observe(event.ttfb_ms / 1000.0)
        self._queue.put(event)
