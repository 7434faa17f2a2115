"""The request path, top to bottom: receive → filters → upstream → relay → stamp → event.

``ProxyHandler.__call__`` is the aiohttp handler for every request on the proxy port.
It creates the inference's event on arrival and enqueues it in ``finally``: errors,
timeouts, rejections and client disconnects (which cancel the handler at whatever
``await`` it is in) all produce exactly one event. The only thing it does with the
event is ``EventQueue.put``, which never blocks; with ``durability: sync`` it then waits
for the event's fsync before the response's last byte goes out (``Exchange.commit``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.config import Settings
from sidecar.errors import (
    OUTCOME_ABORTED,
    OUTCOME_CLIENT_DISCONNECTED,
    OUTCOME_OK,
    OUTCOME_REJECTED,
    OUTCOME_UPSTREAM_ERROR,
    Overloaded,
    SidecarError,
)
from sidecar.events.model import InferenceEvent
from sidecar.events.queue import EventQueue
from sidecar.ids import new_inference_id
from sidecar.logs import get_logger
from sidecar.pipeline.waiters import Durability
from sidecar.privacy.context import Capture, PrivacyContext
from sidecar.proxy.exchange import Exchange
from sidecar.proxy.filters import read_request_body
from sidecar.proxy.held import RawBudget
from sidecar.proxy.protocol import OWNED
from sidecar.proxy.recorded import request_id, safe_path, trace_id
from sidecar.proxy.relay import Relay, error_body
from sidecar.proxy.routes import RouteTable
from sidecar.proxy.stamp import Stamp
from sidecar.proxy.upstream import Upstream, finish, request_headers
from sidecar.telemetry import Metrics

if TYPE_CHECKING:
    from sidecar.detection.runtime import Detection

log = get_logger("proxy")

# nginx's convention: the client (or a shutdown) ended the exchange before any response.
STATUS_NO_RESPONSE = 499
# Rejections after which the connection cannot be trusted to be in step with the client.
CLOSING_CODES = frozenset({"bad_framing", "incomplete_body"})


_second_cache: tuple[int, str] = (0, "")


def utc_timestamp() -> str:
    """RFC 3339 UTC with microseconds, like ``datetime.isoformat`` but a third of the cost
    (the date part is formatted once per second).

    >>> len(utc_timestamp()), utc_timestamp()[-6:]
    (32, '+00:00')
    """
    global _second_cache
    now_us = time.time_ns() // 1000
    second, micros = divmod(now_us, 1_000_000)
    if _second_cache[0] != second:
        _second_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_cache[1]}.{micros:06d}+00:00"


class ProxyHandler:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        queue: EventQueue,
        metrics: Metrics,
        durability: Durability,
        refusal: Callable[[], str | None],
        privacy: PrivacyContext | None = None,
        detection: Detection | None = None,
    ) -> None:
        self._settings = settings
        self._privacy = privacy
        self._detection = detection
        self._identity = settings.identity
        self._upstream = upstream
        self._queue = queue
        self._metrics = metrics
        self._durability = durability
        self._sync = settings.durability == "sync"
        self._durability_timeout = settings.durability_timeout
        self._refusal = refusal
        self._emitted = metrics.events_emitted
        self._stats = metrics.requests
        self._stamp = Stamp(settings)
        self._raw_skipped = metrics.raw_bodies_skipped
        self._relay = Relay(settings, self._stamp, on_body_skipped=self._raw_skipped.inc)
        self._routes = RouteTable(settings.routes)
        self._max_body = settings.max_body_bytes
        self._raw = RawBudget(settings.raw_hold_bytes)
        self.shutting_down = False

    def _new_event(self, request: web.BaseRequest) -> InferenceEvent:
        headers = request.headers
        path = request.path
        event = InferenceEvent(
            inference_id=new_inference_id(),
            timestamp=utc_timestamp(),
            method=request.method,
            route=self._routes.classify(path),
            path=safe_path(request.raw_path),
            client_address=request.remote,
            trace_id=trace_id(headers.get("traceparent")),
            request_id=request_id(headers.get("x-request-id")),
            model_name=self._identity["model_name"],
            model_version=self._identity["model_version"],
            policy_version=self._identity["policy_version"],
            evidence_bundle_id=self._identity["evidence_bundle_id"],
        )
        if self._privacy is not None:
            self._privacy.apply(event, headers)
        return event

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        request[OWNED] = True  # see protocol.py: this handler records the one event
        exchange = Exchange(self, self._new_event(request), time.perf_counter())
        event = exchange.event
        self._stats.in_flight += 1
        try:
            return await self._proxy(request, exchange)
        except Overloaded as exc:
            # Refused before the upstream: no model output to prove, and waiting for a log
            # that is full would turn a fast 503 into a hang.
            event.outcome, event.error, event.status = exc.outcome, exc.code, exc.status
            exchange.committed = True
            if self._queue.accepting:
                self.record(event, exchange.started)
            else:  # never admitted; counted by requests_refused_total, not queued
                self._stats.observe(event.route, exc.status, exc.outcome, 0.0)
            return await self._reply_error(request, exchange, exc.status, exc.code, exc.message)
        except SidecarError as exc:
            event.outcome, event.error = exc.outcome, exc.code
            return await self._reply_error(request, exchange, exc.status, exc.code, exc.message)
        except (ConnectionResetError, asyncio.CancelledError):
            if not exchange.committed:
                event.outcome = (
                    OUTCOME_ABORTED if self.shutting_down else OUTCOME_CLIENT_DISCONNECTED
                )
            raise
        except Exception as exc:
            log.error("unexpected error in the request path", exc_info=True,
                      extra={"fields": {"inference_id": event.inference_id}})
            event.outcome, event.error = OUTCOME_UPSTREAM_ERROR, "internal_error"
            return await self._reply_error(request, exchange, 500, "internal_error",
                                           f"sidecar error: {type(exc).__name__}")
        finally:
            self._stats.in_flight -= 1
            if not exchange.committed:
                self.record(event, exchange.started)

    async def _proxy(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        refusal = self._refusal()
        if refusal is not None:  # fail closed: no inference whose event cannot be kept
            self._metrics.overloaded.labels(refusal).inc()
            raise Overloaded("the sidecar cannot record more events right now", code=refusal)
        event = exchange.event
        body = await read_request_body(request, self._max_body, self._settings.idle_timeout)
        event.request_bytes = len(body)
        capture: Capture | None = getattr(event, "capture", None)
        held = None
        if capture is not None or self._detection is not None:
            held = self._raw.hold(len(body))  # bounded: see sidecar/proxy/held.py
            if held is None:
                self._raw_skipped.inc()
        if capture is not None:
            capture.request(body if held is not None else None,
                            request.headers.get("content-type"), request.query_string)
            capture.held, capture.over_budget = held, held is None
        if self._detection is not None:  # keeps references; the gate may refuse (429/403)
            self._detection.observe(event, body, request.headers, held, held is not None)
        # The sidecar serves plain HTTP only (TLS ends before it, or at the mesh):
        # x-forwarded-proto is always http.
        headers = request_headers(request.headers, event.inference_id, request.remote,
                                  request.raw_path, request.version)
        upstream = await self._upstream.send(request.method, request.raw_path, headers, body)
        failed = True
        try:
            event.upstream_latency_ms = (time.perf_counter() - exchange.started) * 1000.0
            event.outcome = OUTCOME_OK if upstream.status < 400 else OUTCOME_UPSTREAM_ERROR
            response = await self._relay.send(request, upstream, exchange)
            failed = False
            return response
        finally:
            finish(upstream, failed)

    async def _reply_error(
        self, request: web.BaseRequest, exchange: Exchange, status: int, code: str,
        message: str,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionResetError("response already started")  # relay aborted it
        event = exchange.event
        response = self.error_response(event.inference_id, status, code, message)
        if not exchange.committed:
            event.status = status
            event.response_bytes = response.content_length or 0
            await exchange.commit()
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
        if status in (408, 413, 414, 431) or code in CLOSING_CODES:
            response.force_close()  # the rest of the request was not read, or its framing
            # is in doubt
        return response

    def on_parse_error(
        self, request: web.BaseRequest, status: int, code: str
    ) -> web.StreamResponse:
        """Stamped reply and event for a request the HTTP parser refused.

        aiohttp calls this synchronously, so it cannot wait for durability: the event is
        enqueued, and the reply carries no model output that would need proof.
        """
        started = time.perf_counter()
        event = self._new_event(request)
        event.outcome = OUTCOME_REJECTED if status < 500 else OUTCOME_UPSTREAM_ERROR
        event.error, event.status = code, status
        response = self.error_response(event.inference_id, status, code, "malformed request")
        event.response_bytes = response.content_length or 0
        self.record(event, started)
        return response

    def record(self, event: InferenceEvent, started: float, then_wait: bool = False) -> int:
        """Complete the event's timings and enqueue it; its sequence number. The request
        metrics follow at once, or, when the caller will wait for the event's fsync
        (``then_wait``, ``Exchange.commit``), after ``wait_durable``: that wait is part of
        the response's time."""
        elapsed = time.perf_counter() - started
        event.latency_ms = elapsed * 1000.0
        if not event.outcome:
            event.outcome = OUTCOME_CLIENT_DISCONNECTED
        if event.status == 0:
            event.status = STATUS_NO_RESPONSE
        seq = self._queue.put(event)
        self._emitted.inc()  # every inference: one the full queue dropped is counted dropped too
        if not (then_wait and self._sync and seq):
            self._observe(event, event.status, event.outcome, elapsed)
        return seq

    def _observe(self, event: InferenceEvent, status: int, outcome: str, seconds: float) -> None:
        upstream_ms, ttfb_ms = event.upstream_latency_ms, event.ttfb_ms
        self._stats.observe(
            event.route, status, outcome, seconds,
            None if upstream_ms is None else upstream_ms / 1000.0,
            None if ttfb_ms is None else ttfb_ms / 1000.0,
        )

    async def wait_durable(self, seq: int, event: InferenceEvent, started: float) -> None:
        """With ``durability: sync``, return once the event ``record(then_wait=True)``
        enqueued as ``seq`` is fsynced; then (or when the wait fails) the request metrics.
        Only reads the event: it belongs to the pipeline now."""
        if not self._sync or not seq:
            return
        status, outcome = event.status, event.outcome
        future = self._durability.wait(seq)
        try:
            if future is not None:
                await future  # the Durability watchdog fails it after durability_timeout
        except asyncio.CancelledError:
            status, outcome = STATUS_NO_RESPONSE, OUTCOME_CLIENT_DISCONNECTED
            raise
        except TimeoutError:
            # The answer must not reach the client without its evidence: cut it off. The
            # metrics say what the client got; the event (already committed) cannot.
            status, outcome = STATUS_NO_RESPONSE, OUTCOME_ABORTED
            self._metrics.overloaded.labels("event_not_durable").inc()
            log.error("event not durable in time; response withheld",
                      extra={"fields": {"seq": seq, "timeout_s": self._durability_timeout}})
            raise ConnectionResetError("event not durable in time") from None
        finally:
            self._observe(event, status, outcome, time.perf_counter() - started)
