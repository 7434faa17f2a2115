"""``Detection``: the detectors of one sidecar — the configuration in force, what the
request path keeps for them (``Plan``), the enforce-mode ``Gate`` — and hot reload.

Hot reload: SIGHUP, or a change of the detectors file (its size, mtime or inode, polled
every ``POLL_S``; a Kubernetes ConfigMap update swaps a symlink, which this sees). The
file is read and validated off the loop. A valid new configuration is swapped in as a
whole: the gate and plan on the loop (one assignment each, between two requests), the
worker's monitor-mode set in one call (detectors whose spec did not change keep their
state), and an ``ai.detector.policy_changed`` event with the new digest goes on the
queue. An invalid one is refused with one log line naming file, key and reason, counted
in ``detector_reloads_total{result="rejected"}``; the old configuration stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import json
import os
import re
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from detectors.config import DetectorConfigError, DetectorsConfig, load_config
from detectors.features import DERIVED
from detectors.registry import TYPES, DetectorSpec
from sidecar.config import ConfigError, Settings
from sidecar.detection.gate import Gate
from sidecar.detection.observed import Plan
from sidecar.events.model import InferenceEvent
from sidecar.events.notices import policy_changed_event
from sidecar.logs import get_logger
from sidecar.proxy.handler import utc_timestamp
from sidecar.telemetry import EVENT_TYPE_INFERENCE, Metrics
from sidecar.workers.child import WorkerError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sidecar.events.queue import EventQueue
    from sidecar.pipeline.detection import DetectionStage

log = get_logger("detection")

OFF: Final = "off"
POLL_S: Final = 1.0


def detectors_config(settings: Settings) -> DetectorsConfig | None:
    """The configured detectors (the shipped default when unset), None when ``off``;
    ``ConfigError`` naming file, key and reason when the file does not validate."""
    if settings.detectors == OFF:
        return None
    try:
        return load_checked(settings.detectors)
    except DetectorConfigError as exc:
        raise ConfigError(f"detectors: {exc}") from None


def load_checked(path: str | None) -> DetectorsConfig:
    """``load_config``, and every feature a field inference events have: a typo loads,
    and its detector never sees a value (a drift monitor that never fires)."""
    config = load_config(path)
    for i, spec in enumerate(config.specs):
        unknown = None if spec.feature is None else unknown_field(spec.feature)
        if unknown is not None:
            close = difflib.get_close_matches(unknown, event_fields(), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise DetectorConfigError(config.source, f"detectors[{i}].feature",
                                      f"no event field {unknown!r}{hint}")
    return config


@functools.cache
def _event_data_schema() -> dict[str, Any]:
    name = f"{EVENT_TYPE_INFERENCE}.v1.json"
    text = resources.files("sidecar").joinpath("schemas", name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)["properties"]["data"]
    return schema


def event_fields() -> list[str]:
    """The top-level fields of an inference event's data, and the derived features."""
    return sorted({*_event_data_schema()["properties"], *DERIVED})


def unknown_field(feature: str) -> str | None:
    """The key of ``feature``'s path that no inference event can have (where the event
    schema lists its fields, as at the top level), else None; ``payload``, ``headers``
    and open objects are not checked (what the client and model sent).

    >>> unknown_field("latency_ms"), unknown_field("latncy_ms"), unknown_field("status_class")
    (None, 'latncy_ms', None)
    >>> unknown_field("payload.response.choices[0].finish_reason"), unknown_field("privacy.x")
    (None, 'x')
    """
    if feature in DERIVED:
        return None
    node: Any = _event_data_schema()
    for key in re.sub(r"\[\d+\]", "", feature).split("."):
        properties = node.get("properties") if isinstance(node, dict) else None
        if not isinstance(properties, dict):
            return None
        if key not in properties:
            return key if node.get("additionalProperties") is False else None
        node = properties[key]
    return None


class Detection:
    def __init__(self, settings: Settings, config: DetectorsConfig, metrics: Metrics) -> None:
        self.path = settings.detectors
        self._identity = settings.identity
        self._metrics = metrics
        self.stage: DetectionStage | None = None  # set once the pipeline built it
        self.queue: EventQueue | None = None
        self._use(config)
        self._seen = self._stat()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _use(self, config: DetectorsConfig) -> None:
        self.config = config
        self.plan = Plan.of(config)
        metrics = self._metrics
        self.gate = Gate(config, getattr(self, "gate", None),
                         on_error=lambda name: metrics.detector_errors.labels(name).inc(),
                         on_evict=lambda name, n: metrics.detector_evictions.labels(name).inc(n))
        self._metrics.detectors_info.clear()
        self._metrics.detectors_info.labels(config.digest, config.source).set(1)
        self._metrics.drift.configure(
            {s.name: s.feature or "" for s in config.specs
             if TYPES[s.type].kind == "drift" and s.feature})

    def observe(self, event: InferenceEvent, body: bytes, headers: Mapping[str, str],
                held: Any = None, keep: bool = True) -> None:
        """Request path: keep what the detectors read (the body only if ``keep``: within
        the raw-body budget, ``held``); the gate reads it in any case and may refuse the
        request (``RequestRejected``)."""
        observed = event.observed = self.plan.observe(body, headers)
        gate = self.gate
        try:
            if gate.active:
                gate.check(event, observed)
        finally:  # a refused request's event goes on too: its body is bounded the same
            if not keep:
                observed.request_body = None
            observed.held = held

    # Hot reload ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="detectors")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def request_reload(self) -> None:
        """SIGHUP: re-read the file now."""
        self._wake.set()

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None or self.path == OFF:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Not asyncio.wait_for: on Python 3.11 it loses a cancel that lands as the wait
            # ends (a SIGHUP's wake-up just before stop()), and stop() then waited for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
            forced = self._wake.is_set()
            self._wake.clear()
            seen = await loop.run_in_executor(None, self._stat)
            if not forced and seen == self._seen:
                continue
            self._seen = seen
            try:
                await self.reload()
            except Exception:  # a bug of ours must not end the watch
                log.error("detectors reload failed", exc_info=True)

    async def reload(self) -> str:
        """Re-read the detectors file; ``applied``, ``unchanged`` or ``rejected``."""
        loop = asyncio.get_running_loop()
        try:
            config = await loop.run_in_executor(None, load_checked, self.path)
        except DetectorConfigError as exc:
            log.error("detectors file refused; the previous configuration stays",
                      extra={"fields": {"file": exc.source, "key": exc.key,
                                        "reason": exc.reason, "digest": self.config.digest}})
            return self._count("rejected")
        if config.digest == self.config.digest:
            return self._count("unchanged")
        if self.stage is not None:
            try:
                await self.stage.reload(config)
            except WorkerError as exc:  # it restarts with the new set: still applied
                log.warning("detection worker restarted for the reload",
                            extra={"fields": {"reason": str(exc)}})
        previous = self.config.digest
        self._use(config)
        if self.queue is not None:
            self.queue.put(policy_changed_event(
                self._identity, utc_timestamp(), source=config.source, digest=config.digest,
                previous_digest=previous, detectors=[_described(s) for s in config.specs]))
        log.info("detectors reloaded", extra={"fields": {
            "file": config.source, "digest": config.digest, "previous_digest": previous,
            "detectors": len(config.specs)}})
        return self._count("applied")

    def _count(self, result: str) -> str:
        self._metrics.detector_reloads.labels(result).inc()
        return result


def _described(spec: DetectorSpec) -> dict[str, Any]:
    return {"name": spec.name, "type": spec.type, "mode": spec.mode,
            "severity": spec.severity, "digest": spec.digest}
