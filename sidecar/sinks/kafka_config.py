"""Kafka sink configuration: ``KafkaSettings``, secrets read from files, and the
``KafkaProducer`` arguments they make (a pure function, testable without a broker).

No secret is a setting: TLS and SASL material are paths to mounted files, read when a
producer is created, so rotating a secret needs no restart.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.config import ConfigError, Settings
from sidecar.sinks.base import SinkError

with warnings.catch_warnings():
    # kafka-python 3.0.12 loads its protocol schemas at import with
    # importlib.resources.read_text/open_text, deprecated in 3.11 (and un-deprecated in
    # 3.13). Import-time only and harmless; silenced here, where it happens.
    warnings.filterwarnings("ignore", r"(read|open)_text is deprecated", DeprecationWarning)
    from kafka import KafkaProducer  # type: ignore[import-untyped]
    from kafka import codec as kafka_codec
    from kafka import errors as kafka_errors
    from kafka.net.compat import KafkaNetClient  # type: ignore[import-untyped]
    from kafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
    from kafka.partitioner.default import murmur2  # type: ignore[import-untyped]

__all__ = ["DefaultPartitioner", "KafkaNetClient", "KafkaProducer", "kafka_errors", "murmur2"]

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSIONS: Final = ("none", "gzip", "lz4", "zstd", "snappy")
CLIENTS: Final = ("kafka-python", "librdkafka")

CLIENT_ID: Final = "inference-sidecar"  # kafka-python names its I/O thread after it
LINGER_MS: Final = 5
MAX_BLOCK_MS: Final = 1000  # send() waits this long at most, for the topic's metadata
BATCH_SIZE: Final = 256 * 1024  # per partition; the 16 KiB default halved throughput (measured)
MAX_REQUEST_SIZE: Final = 1024**2  # also the largest record the producer accepts
RECONNECT_BACKOFF_MAX_MS: Final = 1000
MIN_DELIVERY_TIMEOUT_S: Final = 0.1
MAX_REQUEST_TIMEOUT_S: Final = 900.0  # librdkafka's bound on request.timeout.ms
SECRET_MAX_BYTES: Final = 64 * 1024
_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def default_compression() -> str | None:
    """lz4 when its module imports (the sidecar's extra), else none."""
    return "lz4" if kafka_codec.has_lz4() else None


_CODEC_AVAILABLE: Final[dict[str, Callable[[], bool]]] = {
    "gzip": kafka_codec.has_gzip,
    "lz4": kafka_codec.has_lz4,
    "zstd": kafka_codec.has_zstd,
    "snappy": kafka_codec.has_snappy,
}


def has_librdkafka() -> bool:
    """Whether the confluent-kafka package (librdkafka's binding, the ``librdkafka``
    extra) imports."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of ``host:port[,host:port...]``; ``ValueError`` names what
    is wrong, including a host no resolver would take (``a..b``: an empty label, a label
    over 63 characters), which would otherwise fail every connection attempt later."""
    addresses = []
    for item in bootstrap.split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:9092
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bootstrap: expected host:port[,host:port...], got {bootstrap!r}")
        if not _is_host(host):
            raise ValueError(f"bootstrap: {host!r} is not a host name or an IP address")
        addresses.append((host, int(port)))
    return addresses


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:  # as the socket module encodes it before resolving
        host.rstrip(".").encode("idna")
    except UnicodeError:
        return False
    return host not in (".", "")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where and how to produce. Case is normalised: ``sasl_ssl`` and ``SASL_SSL`` both
    work; ``compression`` takes ``auto`` (the default: lz4 when installed) or ``none``.
    Invalid combinations raise ``ValueError`` naming the field. No secret is a setting:
    SASL credentials are paths to files, read when a producer is created."""

    bootstrap: str
    topic: str
    alerts_topic: str | None = None  # records of ai.detector.* types; None: to ``topic``
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sasl_mechanism: str | None = None
    sasl_username_file: str | None = None
    sasl_password_file: str | None = None
    compression: str | None = field(default_factory=default_compression)
    delivery_timeout_s: float = 30.0
    request_timeout_s: float | None = None  # None: a third of delivery_timeout_s, at most 10
    client: str = "kafka-python"  # or "librdkafka": the producer library (rdkafka.py)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        bootstrap_addresses(self.bootstrap)
        for name in ("topic", "alerts_topic"):
            value = getattr(self, name)
            if (value is not None or name == "topic") and not _TOPIC.match(value or ""):
                raise ValueError(f"{name}: expected 1-249 of [a-zA-Z0-9._-], got {value!r}")
        protocol = self.security_protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol: expected one of {SECURITY_PROTOCOLS}, "
                             f"got {self.security_protocol!r}")
        set_(self, "security_protocol", protocol)
        self._check_sasl(protocol)
        if "SSL" not in protocol:
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: set, but security_protocol {protocol} has no TLS")
        client = self.client.lower()
        if client not in CLIENTS:
            raise ValueError(f"client: expected one of {CLIENTS}, got {self.client!r}")
        if client == "librdkafka" and not has_librdkafka():
            raise ValueError("client: librdkafka needs the confluent-kafka package "
                             "(pip install 'inference-sidecar[librdkafka]')")
        set_(self, "client", client)
        compression = self.compression.lower() if self.compression is not None else None
        if compression == "auto":
            # librdkafka has every codec built in
            compression = "lz4" if client == "librdkafka" else default_compression()
        elif compression == "none":
            compression = None
        if compression is not None:
            if compression not in COMPRESSIONS:
                raise ValueError(f"compression: expected auto or one of {COMPRESSIONS}, "
                                 f"got {self.compression!r}")
            if client == "kafka-python" and not _CODEC_AVAILABLE[compression]():
                raise ValueError(f"compression: {compression} needs a module not installed")
        set_(self, "compression", compression)
        if not MIN_DELIVERY_TIMEOUT_S <= self.delivery_timeout_s <= 3600:
            # Below that, both producers refuse their own configuration (a delivery timeout
            # is more than linger plus a request timeout), at every write.
            raise ValueError(f"delivery_timeout_s: expected {MIN_DELIVERY_TIMEOUT_S:g} s to "
                             f"3600 s, got {self.delivery_timeout_s:g}")
        request = self.request_timeout_s
        if request is None:
            set_(self, "request_timeout_s", min(10.0, self.delivery_timeout_s / 3))
        elif not (0.001 <= request <= MAX_REQUEST_TIMEOUT_S
                  and request * 1000 + LINGER_MS <= self.delivery_timeout_s * 1000):
            # kafka-python refuses delivery_timeout < linger + request timeout
            raise ValueError(f"request_timeout_s: expected 1 ms to {MAX_REQUEST_TIMEOUT_S} s "
                             f"and at most delivery_timeout_s ({self.delivery_timeout_s}) - "
                             f"{LINGER_MS} ms, got {request}")

    def _check_sasl(self, protocol: str) -> None:
        mechanism = self.sasl_mechanism.upper() if self.sasl_mechanism is not None else None
        files = {"sasl_username_file": self.sasl_username_file,
                 "sasl_password_file": self.sasl_password_file}
        if protocol.startswith("SASL"):
            if mechanism not in SASL_MECHANISMS:
                raise ValueError(f"sasl_mechanism: expected one of {SASL_MECHANISMS} for "
                                 f"{protocol}, got {self.sasl_mechanism!r}")
            for name, path in files.items():
                if not path:
                    raise ValueError(f"{name}: expected a file path, since {protocol} is used")
        else:
            for name, value in {"sasl_mechanism": mechanism, **files}.items():
                if value is not None:
                    raise ValueError(f"{name}: set, but security_protocol {protocol} has no SASL")
        object.__setattr__(self, "sasl_mechanism", mechanism)

    @property
    def files(self) -> dict[str, str]:
        """Every file the settings name, by setting name."""
        names = ("ssl_cafile", "ssl_certfile", "ssl_keyfile",
                 "sasl_username_file", "sasl_password_file")
        return {name: path for name in names if (path := getattr(self, name)) is not None}


# KafkaSettings field -> the sidecar setting it comes from, for error messages.
_SETTING_NAMES: Final = {
    "topic": "kafka_events_topic",
    "alerts_topic": "kafka_alerts_topic",
    "delivery_timeout_s": "kafka_delivery_timeout",
    "request_timeout_s": "kafka_delivery_timeout",
}


def kafka_settings_from(settings: Settings, topic: str | None = None) -> KafkaSettings:
    """The sink's settings from the sidecar's; ``ConfigError`` names the sidecar setting."""
    assert settings.kafka_bootstrap is not None, "the Kafka sink needs kafka_bootstrap"
    try:
        return KafkaSettings(
            bootstrap=settings.kafka_bootstrap,
            topic=topic or settings.kafka_events_topic,
            alerts_topic=settings.kafka_alerts_topic,
            security_protocol=settings.kafka_security_protocol,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username_file=settings.kafka_sasl_username_file,
            sasl_password_file=settings.kafka_sasl_password_file,
            compression=settings.kafka_compression,
            delivery_timeout_s=settings.kafka_delivery_timeout,
            client=settings.kafka_client,
        )
    except ValueError as exc:
        field_name, _, reason = str(exc).partition(": ")
        name = _SETTING_NAMES.get(field_name, f"kafka_{field_name}")
        raise ConfigError(f"{name}: {reason}") from None


@dataclass(frozen=True, slots=True)
class SaslCredentials:
    username: str
    password: str = field(repr=False)


def _read_secret(name: str, path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(SECRET_MAX_BYTES + 1)
    except OSError as exc:
        raise SinkError(f"kafka_{name} {path}: cannot read it ({exc.strerror})") from None
    if len(data) > SECRET_MAX_BYTES:
        raise SinkError(f"kafka_{name} {path}: larger than {SECRET_MAX_BYTES} bytes")
    try:
        # Mounted secrets written with `echo` end in a newline that is not part of them.
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SinkError(f"kafka_{name} {path}: not UTF-8 text") from None
    if not value:
        raise SinkError(f"kafka_{name} {path}: empty")
    return value


def check_files(settings: KafkaSettings) -> None:
    """Start-up check: every file the settings name is readable, and the TLS files load
    (``SinkError`` names the first that does not, by its setting: a garbage CA file would
    otherwise surface as "Unable to bootstrap", retried for ever). The files are read
    again whenever a producer is created."""
    for name, path in settings.files.items():
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise SinkError(f"kafka_{name} {path}: not a readable file")
    tls_context(settings)
    read_credentials(settings)


def tls_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS client context the settings describe (``None`` without TLS), as
    kafka-python builds it: the CA file (else the system's), host names checked, the
    client certificate if any; ``SinkError`` names the file that does not load."""
    if "SSL" not in settings.security_protocol:
        return None
    context = ssl.create_default_context()
    name = "ssl_cafile"
    try:
        if settings.ssl_cafile is not None:
            context.load_verify_locations(settings.ssl_cafile)
        if settings.ssl_certfile is not None:
            name = "ssl_certfile"
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    except (ssl.SSLError, OSError) as exc:
        what = "certificate and key" if name == "ssl_certfile" else "CA certificates"
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise SinkError(f"kafka_{name} {getattr(settings, name)}: no usable {what} "
                        f"({reason})") from None
    return context


def read_credentials(settings: KafkaSettings) -> SaslCredentials | None:
    """The SASL user name and password, read from their files now (``None`` without SASL)."""
    if settings.sasl_username_file is None or settings.sasl_password_file is None:
        return None
    return SaslCredentials(
        _read_secret("sasl_username_file", settings.sasl_username_file),
        _read_secret("sasl_password_file", settings.sasl_password_file),
    )


def producer_config(
    settings: KafkaSettings, credentials: SaslCredentials | None = None
) -> dict[str, Any]:
    """The ``KafkaProducer`` keyword arguments for these settings: a pure function."""
    request_timeout_ms = int((settings.request_timeout_s or 0) * 1000)
    config: dict[str, Any] = {
        "bootstrap_servers": [item.strip() for item in settings.bootstrap.split(",")],
        "client_id": CLIENT_ID,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": settings.compression,
        "linger_ms": LINGER_MS,
        "batch_size": BATCH_SIZE,
        "max_request_size": MAX_REQUEST_SIZE,
        "max_block_ms": MAX_BLOCK_MS,
        "delivery_timeout_ms": int(settings.delivery_timeout_s * 1000),
        "request_timeout_ms": request_timeout_ms,
        "bootstrap_timeout_ms": request_timeout_ms,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "security_protocol": settings.security_protocol,
    }
    if "SSL" in settings.security_protocol:
        config.update(
            ssl_check_hostname=True,
            ssl_cafile=settings.ssl_cafile,  # None: the system's CA bundle
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
        )
    if settings.security_protocol.startswith("SASL"):
        if credentials is None:
            raise ValueError("SASL is configured: credentials are required")
        config.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=credentials.username,
            sasl_plain_password=credentials.password,
        )
    return config


