"""Lifecycle of one sidecar process: build every component once, start, drain, stop.

Order matters on shutdown (SIGTERM / SIGINT): readiness goes red first, the proxy
stops accepting and gives in-flight requests ``drain_timeout`` to finish, then the
event queue is drained into the log and the log into the sink (what the sink cannot
take in time stays in the on-disk log for the next start), and only then do the admin
port and the upstream pool close. A clean shutdown loses no event.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

from aiohttp import web

from sidecar.admin.app import build_admin_app
from sidecar.admin.health import Readiness
from sidecar.admin.looplag import LoopLagMonitor
from sidecar.config import Settings
from sidecar.detection.runtime import Detection, detectors_config
from sidecar.events.queue import EventQueue
from sidecar.logs import get_logger
from sidecar.pipeline.detection import detection_worker
from sidecar.pipeline.runner import Pipeline
from sidecar.privacy.context import build_privacy, masking_worker
from sidecar.proxy.handler import ProxyHandler
from sidecar.proxy.protocol import ProxyServer
from sidecar.proxy.upstream import Upstream
from sidecar.sinks.base import Sink
from sidecar.sinks.registry import build_log, build_sink
from sidecar.telemetry import Metrics

log = get_logger("server")

SWITCH_INTERVAL_S = 0.001


def _bound_port(runner: web.BaseRunner) -> int:
    for site_addr in runner.addresses:
        if isinstance(site_addr, tuple):
            return int(site_addr[1])
    raise RuntimeError("listener has no TCP address")


class ListenError(OSError):
    """A listener could not bind; the message names the setting and the address."""


async def _listen(site: web.TCPSite, key: str) -> None:
    try:
        await site.start()
    except OSError as exc:
        raise ListenError(exc.errno, f"{key} {site.name}: {exc.strerror}") from None


class Sidecar:
    """All components of one sidecar, built from ``Settings``."""

    def __init__(self, settings: Settings, sink: Sink | None = None) -> None:
        self.settings = settings
        self.metrics = metrics = Metrics(settings.identity)
        self.sink: Sink = sink if sink is not None else build_sink(settings)
        self.log = build_log(settings)
        recovered = self.log.stats()  # what the previous run could not keep, counted once
        if recovered.lost_on_crash:
            self._count_drop("lost_on_crash", recovered.lost_on_crash)
        if recovered.corrupt_skipped:
            self._count_drop("corrupt", recovered.corrupt_skipped)
        self.queue = EventQueue(
            settings.event_queue_size,
            settings.when_full,
            on_drop=self._count_drop,
            first_seq=self.log.next_seq,
            on_accept=self.log.note_accepted,
            on_alerts_dropped=lambda reason, n: metrics.alerts_dropped.labels(reason).inc(n),
        )
        self.privacy = build_privacy(settings)
        config = detectors_config(settings)
        self.detection = None if config is None else Detection(settings, config, metrics)
        self.pipeline = Pipeline(
            self.queue, self.log, self.sink, metrics,
            mode=settings.durability, interval=settings.durability_interval,
            durability_timeout=settings.durability_timeout,
            masking=masking_worker(self.privacy, settings.log_level),
            detection=None if config is None else (
                detection_worker(config, settings.log_level, self.privacy.hash_key), config,
                self.privacy.hash_key),
        )
        if self.detection is not None:
            self.detection.stage, self.detection.queue = self.pipeline.detection, self.queue
        self.upstream = Upstream(settings)
        self.handler = ProxyHandler(
            settings, self.upstream, self.queue, metrics,
            durability=self.pipeline.durability, refusal=self.refusal_reason,
            privacy=self.privacy, detection=self.detection,
        )
        self.readiness = Readiness(settings, self.sink, self.refusal_reason,
                                   lambda: self.pipeline.disk_ok, self._privacy_problem,
                                   lambda: self.pipeline.delivery.failure)
        self.loop_lag = LoopLagMonitor(metrics.loop_lag, metrics.loop_lag_max)
        self._proxy_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self.proxy_port = 0
        self.admin_port = 0
        self._started = self._stopped = False

    def _privacy_problem(self) -> str | None:
        stage = self.pipeline.privacy
        return None if stage is None else stage.problem

    def _count_drop(self, reason: str, n: int) -> None:
        self.metrics.events_dropped.labels(reason).inc(n)

    def refusal_reason(self) -> str | None:
        """Why a new request must be refused now (fail closed), or None. O(1)."""
        if self.settings.when_full != "block":
            return None
        if not self.queue.accepting:
            return "event_queue_full"
        if self.log.full or self.pipeline.writer.blocked:
            return "event_log_full"
        if not self.pipeline.disk_ok:  # the writer retries its round; the next success clears it
            return "event_log_disk_error"
        return None

    async def start(self) -> None:
        s = self.settings
        await self.upstream.start()
        self.pipeline.start()
        if self.detection is not None:
            self.detection.start()
        self.readiness.start()
        self.loop_lag.start()
        server = ProxyServer(
            self.handler,
            on_error=self.handler.on_parse_error,
            # The parser reports which limit a line broke, the only way to tell a long
            # request line (414) from a long header (431); equal limits (the defaults)
            # would not say, so the request line's is one byte more then.
            max_line_size=s.max_request_line_bytes + (
                s.max_request_line_bytes == s.max_header_bytes),
            max_field_size=s.max_header_bytes,
            max_headers=s.max_headers,
            auto_decompress=False,  # forward request bodies byte for byte
            access_log=None,  # the event stream is the access log
        )
        # aiohttp gives a request still in flight the shutdown timeout twice (a wait, then a
        # wait after cancelling its body read, which a handler waiting on the model does
        # not notice): half of drain_timeout each keeps the total to drain_timeout.
        self._proxy_runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=s.drain_timeout / 2
        )
        await self._proxy_runner.setup()
        await _listen(web.TCPSite(
            self._proxy_runner, s.listen[0], s.listen[1], backlog=1024, reuse_address=True
        ), "listen")
        self.proxy_port = _bound_port(self._proxy_runner)

        admin = build_admin_app(self.metrics, self.readiness)
        self._admin_runner = web.AppRunner(admin, handle_signals=False, access_log=None)
        await self._admin_runner.setup()
        await _listen(
            web.TCPSite(self._admin_runner, s.admin_listen[0], s.admin_listen[1]), "admin_listen"
        )
        self.admin_port = _bound_port(self._admin_runner)
        self._started = True
        log.info("sidecar started", extra={"fields": {
            "listen": f"{s.listen[0]}:{self.proxy_port}",
            "admin_listen": f"{s.admin_listen[0]}:{self.admin_port}",
            "upstream": s.upstream_url, **s.identity,
            # what an operator checks first when events do not arrive where expected
            "sink": (f"kafka ({s.kafka_client}) {s.kafka_bootstrap}" if s.kafka_bootstrap
                     else f"jsonl {s.events_file}"),
            "durability": s.durability,
        }})

    async def stop(self) -> None:
        """Drain and close everything; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.readiness.draining = True
        self.handler.shutting_down = True
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
        if self.detection is not None:
            await self.detection.stop()  # no reload (and no notice) once the queue closes
        drained = await self.pipeline.stop(drain_s=self.settings.drain_timeout)
        await self.upstream.close()
        await self.readiness.stop()
        await self.loop_lag.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if not self._started:
            return  # a failed start: the caller reports why, nothing was served
        log.info("sidecar stopped", extra={"fields": {
            "events_delivered": self.pipeline.delivery.delivered,
            "events_dropped_by_queue": self.queue.dropped, "delivered_all": drained,
        }})


async def serve(settings: Settings, early: list[int] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (at once if ``early`` holds
    one caught before the loop ran)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            # No forced exit on a second signal (a habit from servers that hold nothing):
            # cutting the drain short would cut streams and lose the events not yet
            # flushed. Say so, so an operator pressing Ctrl-C again knows what it waits for.
            log.warning("signal received while draining; the drain goes on", extra={
                "fields": {"signal": sig.name, "drain_timeout_s": settings.drain_timeout}})
        stop.set()

    # Before the components are built (seconds, with presidio): a SIGTERM meanwhile is a
    # clean stop, not the default action's exit 143.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    # SIGHUP reloads the detectors; without them it must still not end the process (its
    # default action), which would cut requests in flight and lose their events.
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: nothing to reload"))
    if early:
        stop.set()
    sidecar = Sidecar(settings)
    if sidecar.detection is not None:
        loop.add_signal_handler(signal.SIGHUP, sidecar.detection.request_reload)
    try:
        await sidecar.start()
        # Everything built so far lives as long as the process: keep it out of the
        # collector's generations, so full collections (which stop the event loop) stay
        # shorter.
        gc.freeze()
        # The pipeline's threads (log writer, delivery, kafka-python's network thread)
        # share the GIL with the event loop; with the default 5 ms switch interval, a busy
        # one made the loop wait tens of ms for the GIL during a broker outage. 1 ms bounds
        # that wait at a measured cost of under 1% throughput.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        await stop.wait()
        log.info("shutdown requested; draining")
    finally:
        await sidecar.stop()
        # Closing the loop would give SIGHUP back its default action (end the process):
        # the process is ending with nothing lost and must not be ended by a reload.
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

