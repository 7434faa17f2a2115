"""Readiness: can this pod take inferences now, under its configured failure policy?

Not ready when draining, when the upstream is unreachable, or when the sidecar would
refuse requests anyway (``when_full: block`` and the event queue or log is full, or the
log's disk is failing). A sink that is down is *degraded*, not unready: the durable log
keeps every event until it returns, so taking the model out of service would only hurt.

The upstream is probed in the background (a TCP connect, or a GET of
``upstream_health_path``), so ``/readyz`` answers from memory and a slow model server
cannot make the probe itself time out. So is the Kafka bootstrap (a TCP connect to any of
its addresses; with TLS, a handshake that verifies the broker's certificate as the
producer would): a sink only learns of a broker problem when it writes, and an idle pod
would say nothing of a broker that is down, a bootstrap address that is wrong or a CA
file that does not vouch for the broker. It is reported while nothing was delivered
since it began failing: a producer that knows the cluster delivers without its bootstrap
address. SASL credentials are not tried: a wrong password shows at the first write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from sidecar.config import Settings
from sidecar.logs import get_logger
from sidecar.sinks.base import Sink, SinkError
from sidecar.sinks.kafka import probe_failures
from sidecar.sinks.kafka_config import KafkaSettings, kafka_settings_from, tls_context

log = get_logger("health")

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 1.0
FAILURE_MAX_CHARS = 300


async def _connect(host: str, port: int) -> None:
    """Open a TCP connection and close it: the probe of an address."""
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _guarded(probe: Callable[[], Awaitable[None]], what: str) -> None:
    """A probe that fails in a way it did not expect is logged, and probing goes on: a
    readiness loop that died would leave /readyz answering from its last state for ever."""
    try:
        await probe()
    except Exception as exc:
        log.error("readiness probe failed", extra={"fields": {
            "probe": what, "reason": f"{type(exc).__name__}: {exc}"[:300]}})


def _mtime(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0  # missing now: tls_context says so


class Readiness:
    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        refusal: Callable[[], str | None],
        disk_ok: Callable[[], bool],
        privacy_problem: Callable[[], str | None] = lambda: None,
        delivery_failure: Callable[[], str | None] = lambda: None,
    ) -> None:
        parts = urlsplit(settings.upstream_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._health_url = (
            settings.upstream_url + settings.upstream_health_path
            if settings.upstream_health_path else None
        )
        self._sink = sink
        self._refusal = refusal
        self._disk_ok = disk_ok
        self._privacy_problem = privacy_problem
        self._delivery_failure = delivery_failure
        self._privacy_started = False
        self._block = settings.when_full == "block"
        self.upstream_ok = False
        self.upstream_reason = "not probed yet"
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._kafka = kafka_settings_from(settings) if settings.kafka_bootstrap else None
        self._tls: tuple[tuple[float | None, ...], ssl.SSLContext] | None = None
        self.broker_problem: str | None = None  # the last bootstrap probe's failure
        self._broker_failing_since = 0.0  # time.monotonic() of the first failed probe

    def reasons(self) -> list[str]:
        """Why the sidecar is not ready; empty when it is."""
        reasons = []
        if self.draining:
            reasons.append("shutting down")
        if not self.upstream_ok:
            reasons.append(f"upstream: {self.upstream_reason}")
        refusal = self._refusal()
        if refusal is not None:
            reasons.append(f"refusing requests: {refusal} (when_full: block)")
        if self._block and not self._disk_ok():
            reasons.append("event log: disk writes failing (when_full: block)")
        if not self._privacy_started:  # once up, a failing worker only degrades
            problem = self._privacy_problem()
            if problem is None:
                self._privacy_started = True
            else:
                reasons.append(f"privacy: {problem}")
        return reasons

    def degraded(self) -> list[str]:
        """Problems that do not stop service: events wait in the log meanwhile."""
        problems = []
        if not self._sink.healthy:
            # The sink's own words (payload-free by contract: SinkError), so a refused
            # login or an unknown topic is seen where the operator looks first.
            failure = self._delivery_failure()
            why = f" ({failure[:FAILURE_MAX_CHARS]})" if failure else ""
            problems.append(f"sink {self._sink.name}: delivery failing{why}, "
                            "events kept in the log")
        elif self.broker_problem is not None and (
                self._sink.last_success is None
                or self._sink.last_success < self._broker_failing_since):
            # Only while nothing was delivered since: the bootstrap serves discovery only,
            # and a producer that knows the cluster delivers without it.
            problems.append(f"sink {self._sink.name}: {self.broker_problem}, "
                            "nothing delivered since")
        if not self._block and not self._disk_ok():
            problems.append("event log: disk writes failing")
        problem = self._privacy_problem()
        if self._privacy_started and problem is not None:
            problems.append(f"privacy: {problem}")
        return problems

    async def probe_once(self) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                if self._health_url is None:
                    await _connect(self._host, self._port)
                else:
                    if self._session is None:
                        self._session = aiohttp.ClientSession()
                    async with self._session.get(self._health_url) as response:
                        if response.status >= 400:
                            self._not_ok(f"health check answered {response.status}")
                            return
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            self._not_ok(f"unreachable ({type(exc).__name__})")
            return
        self.upstream_ok, self.upstream_reason = True, "ok"

    async def probe_brokers(self) -> None:
        """A connect to each bootstrap address until one accepts (with TLS, a handshake),
        as the sink's start-up probe does it: in a thread (OpenSSL lets go of the GIL
        during a handshake; the loop would not)."""
        assert self._kafka is not None
        failure = await asyncio.to_thread(self._probe_kafka, self._kafka)
        if failure is None:
            self.broker_problem = None
            return
        if self.broker_problem is None:
            log.warning("kafka bootstrap unreachable", extra={"fields": {"reason": failure}})
            self._broker_failing_since = time.monotonic()
        self.broker_problem = f"bootstrap unreachable ({failure})"

    def _probe_kafka(self, kafka: KafkaSettings) -> str | None:
        if "SSL" not in kafka.security_protocol:
            failures = probe_failures(kafka, None, PROBE_TIMEOUT_S)
            return "; ".join(failures) if failures else None
        # The context is built again when a file it was read from changes (a rotated CA
        # or client certificate), and only then: loading CA certificates takes milliseconds.
        stamp = tuple(_mtime(path) for path in
                      (kafka.ssl_cafile, kafka.ssl_certfile, kafka.ssl_keyfile))
        if self._tls is None or self._tls[0] != stamp:
            try:
                context = tls_context(kafka)
            except SinkError as exc:
                return str(exc)
            assert context is not None
            self._tls = (stamp, context)
        failures = probe_failures(kafka, self._tls[1], PROBE_TIMEOUT_S)
        return "; ".join(failures) if failures else None

    def _not_ok(self, reason: str) -> None:
        if self.upstream_ok:
            log.warning("upstream not ready", extra={"fields": {"reason": reason}})
        self.upstream_ok, self.upstream_reason = False, reason

    async def _loop(self) -> None:
        while True:
            await _guarded(self.probe_once, "upstream")
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _broker_loop(self) -> None:  # apart: a black-holed broker must not slow the above
        while True:
            await _guarded(self.probe_brokers, "kafka bootstrap")
            await asyncio.sleep(PROBE_INTERVAL_S)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop(), name="readiness")]
        if self._kafka is not None:
            self._tasks.append(loop.create_task(self._broker_loop(), name="readiness-kafka"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
