"""``Settings``: every setting of one sidecar process, with its parser, default and help.

The field name is the YAML key; ``SIDECAR_<NAME>`` the environment variable; ``--name``
(dashes) the flag. Secrets are never settings: Kafka credentials are *paths* to files
(mounted secrets), read when the producer is created.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.config import parsers as p

WHEN_FULL = ("block", "drop_oldest", "drop_newest")
DURABILITY = ("sync", "batch", "memory")
LOG_LEVELS = ("debug", "info", "warning", "error")
KAFKA_SECURITY = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
KAFKA_SASL = ("plain", "scram-sha-256", "scram-sha-512")
KAFKA_COMPRESSION = ("auto", "none", "gzip", "lz4", "zstd", "snappy")
KAFKA_CLIENTS = ("kafka-python", "librdkafka")

REQUIRED: Any = object()  # marker: no default; the value must come from somewhere


def _setting(default: Any, parse: Callable[[Any], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings of one sidecar process."""

    # Identity stamped on every response and event.
    model_name: str = _setting(REQUIRED, p.text, "Name of the model behind this sidecar.")
    model_version: str = _setting(REQUIRED, p.text, "Version stamped on every response.")
    policy_version: str = _setting(REQUIRED, p.text, "Policy version stamped on responses.")
    evidence_bundle_id: str = _setting(REQUIRED, p.text, "Evidence bundle stamped on responses.")

    # Listeners and upstream.
    upstream_url: str = _setting("http://127.0.0.1:8000", p.http_url, "Model server base URL.")
    listen: tuple[str, int] = _setting(("0.0.0.0", 8080), p.host_port, "Proxy listener.")
    admin_listen: tuple[str, int] = _setting(("127.0.0.1", 9090), p.host_port, "Admin listener.")
    upstream_max_connections: int = _setting(1000, p.positive_int, "Upstream connection pool.")
    upstream_health_path: str | None = _setting(
        None, p.optional_url_path, "Path probed for readiness; default: a TCP connect."
    )
    routes: tuple[str, ...] = _setting((), p.route_list, "Extra route templates for labels.")

    # Limits and timeouts of the request path.
    max_body_bytes: int = _setting(10 * 1024**2, p.size, "Largest request body (413 above).")
    max_header_bytes: int = _setting(
        8190, p.size_upto(1024**2, "1MiB"), "Largest header line (431 above).")
    max_headers: int = _setting(100, p.positive_int, "Most request headers (431 above).")
    max_request_line_bytes: int = _setting(
        8190, p.size_upto(1024**2, "1MiB"), "Longest request line (414 above).")
    connect_timeout: float = _setting(5.0, p.duration, "Upstream connect timeout.")
    read_timeout: float = _setting(120.0, p.duration, "Wait for upstream response headers.")
    idle_timeout: float = _setting(120.0, p.duration, "Longest silence between body chunks.")
    total_timeout: float = _setting(600.0, p.duration, "Whole exchange with the upstream.")
    drain_timeout: float = _setting(30.0, p.duration, "On SIGTERM, time in-flight requests get.")
    buffer_response_bytes: int = _setting(
        1024**2, p.size, "Responses with a known length up to this are buffered, others streamed."
    )

    # Response handling.
    replace_upstream_errors: bool = _setting(
        False, p.boolean, "Replace upstream 5xx bodies with the sidecar's own JSON error."
    )
    stamp_body: bool = _setting(False, p.boolean, "Add the stamp object to JSON object bodies.")
    stamp_body_key: str = _setting("compliance", p.text, "Key of the stamp object in bodies.")

    # Event pipeline and durability.
    events_file: str = _setting("events.jsonl", p.text, "JSON-lines sink when Kafka is unset.")
    event_queue_size: int = _setting(65536, p.positive_int, "Events held in memory before the log.")
    raw_hold_bytes: int = _setting(
        256 * 1024**2, p.size,
        "Raw bodies events may hold for the detection and masking stages; past it, new "
        "events go without (counted).")
    durability: str = _setting(
        "sync", p.choice(*DURABILITY),
        "sync: a response completes only after its event is fsynced; batch: fsync every "
        "durability_interval; memory: no disk.",
    )
    durability_interval: float = _setting(0.05, p.duration, "fsync period in batch mode.")
    durability_timeout: float = _setting(
        5.0, p.duration, "Longest a response waits for its event's fsync in sync mode."
    )
    wal_dir: str = _setting("sidecar-wal", p.text, "Directory of the write-ahead log.")
    wal_max_bytes: int = _setting(1024**3, p.size, "Largest size of the write-ahead log.")
    wal_segment_bytes: int = _setting(8 * 1024**2, p.size, "Size of one log segment file.")
    when_full: str = _setting(
        "block", p.choice(*WHEN_FULL),
        "Log or queue full: block (503, fail closed), drop_oldest or drop_newest.",
    )

    # Kafka sink (used when kafka_bootstrap is set).
    kafka_bootstrap: str | None = _setting(None, p.optional_text, "Kafka bootstrap servers.")
    kafka_events_topic: str = _setting("inference.events", p.text, "Topic of inference events.")
    kafka_alerts_topic: str = _setting("inference.alerts", p.text, "Topic of detector alerts.")
    kafka_security_protocol: str = _setting(
        "plaintext", p.choice(*KAFKA_SECURITY), "Kafka security protocol."
    )
    kafka_ssl_cafile: str | None = _setting(None, p.optional_text, "CA bundle file for TLS.")
    kafka_ssl_certfile: str | None = _setting(None, p.optional_text, "Client cert file (mTLS).")
    kafka_ssl_keyfile: str | None = _setting(None, p.optional_text, "Client key file (mTLS).")
    kafka_sasl_mechanism: str | None = _setting(
        None, lambda raw: None if raw in (None, "") else p.choice(*KAFKA_SASL)(raw),
        "SASL mechanism: plain, scram-sha-256, scram-sha-512.",
    )
    kafka_sasl_username_file: str | None = _setting(
        None, p.optional_text, "File holding the SASL user name (a mounted secret)."
    )
    kafka_sasl_password_file: str | None = _setting(
        None, p.optional_text, "File holding the SASL password (a mounted secret)."
    )
    kafka_compression: str = _setting(
        "auto", p.choice(*KAFKA_COMPRESSION), "Compression; auto: lz4 when installed."
    )
    kafka_client: str = _setting(
        "kafka-python", p.choice(*KAFKA_CLIENTS),
        "Kafka producer: kafka-python, or librdkafka (confluent-kafka: a quarter of the CPU).",
    )
    kafka_delivery_timeout: float = _setting(
        30.0, p.duration, "Time a batch may take to be acknowledged before it is retried."
    )

    # Privacy (sidecar/privacy/): what events may say about the people behind requests.
    privacy_profile: str = _setting(
        "strict", p.text,
        "Privacy profile: a shipped one (strict, standard, metadata-only) or a YAML file.",
    )
    privacy_profile_routes: tuple[tuple[str, str], ...] = _setting(
        (), p.route_map, "Per-route profiles: route template = profile name or file."
    )
    client_id_source: str | None = _setting(
        None, p.identity_source,
        "Who the client is, pseudonymised: header:<name>, api_key or client_address.",
    )
    client_id_key_file: str | None = _setting(
        None, p.optional_text, "File with the HMAC key for client ids (a mounted secret)."
    )
    privacy_hash_key_file: str | None = _setting(
        None, p.optional_text,
        "File with the key of the profiles' hash operator; unset: a random key per start.",
    )

    # Detectors (detectors/, sidecar/detection/): reloaded on SIGHUP and when the file changes.
    detectors: str | None = _setting(
        None, p.detectors_file,
        "Detectors file (YAML); unset: the shipped default set; off: no detection.",
    )

    log_level: str = _setting("info", p.choice(*LOG_LEVELS), "Level of the sidecar's own logs.")

    @property
    def identity(self) -> dict[str, str]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "policy_version": self.policy_version,
            "evidence_bundle_id": self.evidence_bundle_id,
        }
