"""Naming spec for everything the sidecar emits: metric names, event types, stamp headers.

Metrics: ``inference_sidecar_<name>_<unit>[_total]``; label values come from small fixed
sets (route templates, status codes, outcomes, reasons), never from raw paths or clients.
Events: ``ai.<subject>.<verb>`` types with a schema version per type.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.admin.request_stats import RequestStats

NAMESPACE: Final = "inference_sidecar"

EVENT_TYPE_INFERENCE: Final = "ai.inference.completed"
EVENT_TYPE_ALERT: Final = "ai.detector.alert"
# Why an event was lost (``..._events_dropped_total{reason}``).
DROP_REASONS: Final = ("queue_full", "log_full_oldest", "log_full_newest", "lost_on_crash",
                       "corrupt", "shutdown", "log_full_at_shutdown", "disk_error_at_shutdown")
# Why a detector alert was lost (``..._alerts_dropped_total``).
NOTICE_DROP_REASONS: Final = ("queue_full", "log_full_oldest", "log_full_newest",
                              "log_full_at_shutdown", "disk_error_at_shutdown")
EVENT_TYPE_POLICY_CHANGED: Final = "ai.detector.policy_changed"
# Types under this prefix go to the alerts topic (kafka_alerts_topic), the rest to events.
ALERTS_TYPE_PREFIX: Final = "ai.detector."
EVENT_SCHEMA_VERSION: Final = "1.2"
NOTICE_SCHEMA_VERSION: Final = "1.0"  # ai.detector.alert and ai.detector.policy_changed
EVENT_SOURCE_PREFIX: Final = "urn:inference-sidecar:"
CLOUDEVENTS_CONTENT_TYPE: Final = b"application/cloudevents+json; charset=utf-8"

HEADER_MODEL_VERSION: Final = "x-model-version"
HEADER_POLICY_VERSION: Final = "x-policy-version"
HEADER_EVIDENCE_BUNDLE: Final = "x-evidence-bundle-id"
HEADER_INFERENCE_ID: Final = "x-inference-id"
STAMP_HEADERS: Final = (
    HEADER_MODEL_VERSION,
    HEADER_POLICY_VERSION,
    HEADER_EVIDENCE_BUNDLE,
    HEADER_INFERENCE_ID,
)

# Proxy latencies are dominated by the model; the low buckets resolve the sidecar's own cost.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0,
)


DRIFT_HOLD_S: Final = 600.0


class DriftStatus(Collector):
    """``<name>{detector, feature}``: 1 while a drift detector alerted within the last
    ``DRIFT_HOLD_S`` seconds, else 0; one series per drift detector configured."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.features: dict[str, str] = {}  # detector -> feature, set on (re)load
        self.last: dict[str, float] = {}  # detector -> monotonic time of its last alert

    def configure(self, features: dict[str, str]) -> None:
        self.features = dict(features)
        self.last = {d: t for d, t in self.last.items() if d in features}

    def alerted(self, detector: str) -> None:
        self.last[detector] = time.monotonic()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            self.name, f"1 while the drift detector alerted within {DRIFT_HOLD_S:g} s, else 0.",
            labels=["detector", "feature"])
        now = time.monotonic()
        for detector, feature in sorted(self.features.items()):
            last = self.last.get(detector)
            drifting = last is not None and now - last < DRIFT_HOLD_S
            family.add_metric([detector, feature], 1.0 if drifting else 0.0)
        yield family


class LogStatsLike(Protocol):
    @property
    def bytes_used(self) -> int: ...
    @property
    def records_pending(self) -> int: ...
    @property
    def events_pending(self) -> int: ...


class Metrics:
    """Every metric of one sidecar, in its own registry (so tests can run several)."""

    def __init__(self, identity: dict[str, str]) -> None:
        self.registry = registry = CollectorRegistry()
        n = NAMESPACE
        self.info = Gauge(
            f"{n}_build_info",
            "Identity stamped on every response (value is always 1).",
            ["model_name", "model_version", "policy_version", "evidence_bundle_id"],
            registry=registry,
        )
        self.info.labels(**identity).set(1)
        # Per-request metrics (requests, durations, outcomes, upstream time, time to first
        # byte, in flight) are plain numbers on the loop, exported at scrape time.
        self.requests = RequestStats({
            "requests": (f"{n}_requests", "Requests answered, by route and status."),
            "duration": (f"{n}_request_duration_seconds",
                         "Time from request received to response completed (with "
                         "durability sync, its event's fsync included)."),
            "outcomes": (f"{n}_outcomes", "Inferences by outcome (as the client saw it)."),
            "upstream": (f"{n}_upstream_duration_seconds",
                         "Time until the upstream's response headers."),
            "ttfb": (f"{n}_time_to_first_byte_seconds",
                     "Time until the first body byte was relayed."),
            "in_flight": (f"{n}_requests_in_flight", "Requests being handled now."),
        }, identity["model_version"], LATENCY_BUCKETS)
        registry.register(self.requests)
        self.events_emitted = Counter(
            f"{n}_events_emitted_total", "Events accepted into the pipeline (one per inference).",
            registry=registry,
        )
        self.events_queued = Gauge(
            f"{n}_events_queued", "Events in memory, waiting for the log writer.",
            registry=registry,
        )
        self.raw_bodies_skipped = Counter(
            f"{n}_raw_bodies_skipped_total",
            "Requests that lost a body (theirs, the response, a sampled stream's copy) "
            "kept for detection and masking: the raw-body budget (raw_hold_bytes) was spent; "
            "their events go without prompt features, token usage or payload.",
            registry=registry,
        )
        self.events_dropped = Counter(
            f"{n}_events_dropped_total",
            "Events lost, by reason: " + ", ".join(DROP_REASONS) + ".",
            ["reason"], registry=registry,
        )
        self.events_incomplete = Counter(
            f"{n}_events_incomplete_total",
            "Events sent from their ahead record alone (metadata, no payload, features or "
            "detector results), by reason: lost_in_crash, log_full.",
            ["reason"], registry=registry,
        )
        # Every known reason exported from the start, at 0: a dashboard's rate() or an
        # alert on increase() sees a series before the first loss, not an absent one.
        for reason in DROP_REASONS:
            self.events_dropped.labels(reason)
        for reason in ("lost_in_crash", "log_full"):
            self.events_incomplete.labels(reason)
        self.events_delivered = Counter(
            f"{n}_events_delivered_total", "Events acknowledged by the sink.", ["sink"],
            registry=registry,
        )
        self.delivery_failures = Counter(
            f"{n}_delivery_failures_total", "Events in batches the sink failed to take.",
            ["sink"], registry=registry,
        )
        self.events_retried = Counter(
            f"{n}_events_retried_total", "Events sent to the sink again after a failure.",
            ["sink"], registry=registry,
        )
        self.log_write_errors = Counter(
            f"{n}_log_write_errors_total", "Failed appends to the event log (disk errors).",
            registry=registry,
        )
        self.log_read_errors = Counter(
            f"{n}_log_read_errors_total",
            "Failed reads of the event log by delivery (disk errors); retried.",
            registry=registry,
        )
        self.log_bytes = Gauge(
            f"{n}_log_bytes",
            "Bytes the event log holds (delivered records too, until their segment is "
            "trimmed): what counts toward wal_max_bytes.", registry=registry,
        )
        self.log_events = Gauge(
            f"{n}_log_events", "Events in the event log not yet delivered.", registry=registry,
        )
        self.log_records = Gauge(
            f"{n}_log_records",
            "Records in the event log not yet delivered: an event written ahead of its "
            "privacy and detection stages is two until the first is delivered.",
            registry=registry,
        )
        self.delivery_lag = Gauge(
            f"{n}_delivery_lag_seconds", "Age of the oldest undelivered event.",
            registry=registry,
        )
        self.privacy_failures = Counter(
            f"{n}_privacy_failures_total",
            "Events whose payload was dropped because masking failed (fail closed), by stage.",
            ["stage"], registry=registry,
        )
        self.alerts = Counter(
            f"{n}_alerts_total", "Detector alerts, by detector and severity.",
            ["detector", "severity"], registry=registry,
        )
        self.alerts_dropped = Counter(
            f"{n}_alerts_dropped_total",
            "Detector alerts (ai.detector.alert events) lost before delivery, by reason: "
            + ", ".join(NOTICE_DROP_REASONS) + ".",
            ["reason"], registry=registry,
        )
        for reason in NOTICE_DROP_REASONS:
            self.alerts_dropped.labels(reason)
        self.detection_failures = Counter(
            f"{n}_detection_failures_total",
            "Events that went on without detection (worker_unavailable, worker_refused, "
            "stage_error).",
            ["reason"], registry=registry,
        )
        self.detector_errors = Counter(
            f"{n}_detector_errors_total", "Events a detector raised on (skipped for it).",
            ["detector"], registry=registry,
        )
        self.detector_evictions = Counter(
            f"{n}_detector_evictions_total",
            "Client states a per-client detector dropped to stay within its max_clients (the "
            "client starts again from nothing).",
            ["detector"], registry=registry,
        )
        self.detector_reloads = Counter(
            f"{n}_detector_reloads_total",
            "Detectors file reloads: applied, unchanged, or rejected (the old one stays).",
            ["result"], registry=registry,
        )
        self.detectors_info = Gauge(
            f"{n}_detectors_info", "The detectors configuration in force (value is always 1).",
            ["digest", "source"], registry=registry,
        )
        self.drift = DriftStatus(f"{n}_drift_status")
        registry.register(self.drift)
        self.overloaded = Counter(
            f"{n}_requests_refused_total",
            "Requests refused before the upstream, or cut after it (event_not_durable).",
            ["reason"], registry=registry,
        )
        self.loop_lag = Histogram(
            f"{n}_event_loop_lag_seconds", "How late a 50 ms timer on the event loop fires.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=registry,
        )
        self.loop_lag_max = Gauge(
            f"{n}_event_loop_lag_max_seconds", "Largest event-loop lag in the last 10 s.",
            registry=registry,
        )

    def bind_pipeline(
        self,
        queue_depth: Callable[[], int],
        log_stats: Callable[[], LogStatsLike],
        lag: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time, so the hot path never updates them."""
        self.events_queued.set_function(lambda: float(queue_depth()))
        self.log_bytes.set_function(lambda: float(log_stats().bytes_used))
        self.log_events.set_function(lambda: float(log_stats().events_pending))
        self.log_records.set_function(lambda: float(log_stats().records_pending))
        self.delivery_lag.set_function(lag)
