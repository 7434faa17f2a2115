"""Configuration: one typed, frozen ``Settings`` object, validated once at start-up.

Every setting comes from, in order of precedence: a CLI flag (``--upstream-url``), an
environment variable (``SIDECAR_UPSTREAM_URL``), the YAML file given by ``--config``
(key ``upstream_url``), then the default below. A bad value raises ``ConfigError``
whose message names the key, where it came from and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "SIDECAR_"
QUEUE_POLICIES = ("drop_newest", "drop_oldest")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is meant for the operator as is."""


# --- value parsers: each takes the raw value (str from env/flags, any YAML scalar) ---

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
_INT_MAX = 2**31 - 1
_NUM_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def _text(raw: Any) -> str:
    if not isinstance(raw, str | int | float) or isinstance(raw, bool) or str(raw).strip() == "":
        raise ValueError("a non-empty string")
    return str(raw).strip()


def _optional_text(raw: Any) -> str | None:
    return None if raw is None or raw == "" else _text(raw)


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _positive_int(raw: Any) -> int:
    expected = f"a positive integer up to {_INT_MAX}"
    if isinstance(raw, bool):
        raise ValueError(expected)
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(expected) from None
    if not 0 < value <= _INT_MAX:
        raise ValueError(expected)
    return value


def _with_unit(raw: Any, units: Mapping[str, float], expected: str) -> float:
    if isinstance(raw, bool):
        raise ValueError(expected)
    try:
        if isinstance(raw, int | float):
            value, unit = float(raw), ""
        else:
            match = _NUM_UNIT.match(str(raw))
            if match is None or match.group(2).lower() not in units:
                raise ValueError(expected)
            value, unit = float(match.group(1)), match.group(2).lower()
    except OverflowError:  # a YAML integer too large for a float
        raise ValueError(expected) from None
    result = value * units[unit]
    if not math.isfinite(result) or result <= 0:
        raise ValueError(expected)
    return result


def _size(raw: Any) -> int:
    expected = "a positive size such as 10MiB, 8KiB or 65536"
    size = int(_with_unit(raw, _SIZE_UNITS, expected))
    if size <= 0:  # e.g. 0.5 bytes
        raise ValueError(expected)
    return size


def _duration(raw: Any) -> float:
    return _with_unit(raw, _DURATION_UNITS, "a positive duration such as 30s, 250ms or 2.5")


def _host_port(raw: Any) -> tuple[str, int]:
    text = _text(raw)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    valid_port = port.isascii() and port.isdigit() and 0 <= int(port) <= 65535
    if not sep or not host or not valid_port:
        raise ValueError("host:port, such as 0.0.0.0:8080")
    return host, int(port)


def _http_url(raw: Any) -> str:
    text = _text(raw).rstrip("/")
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        raise ValueError("an http:// or https:// URL, such as http://127.0.0.1:8000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL, such as http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("an http:// or https:// URL with a valid port") from None
    return text


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return value

    return parse


def _route_list(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("a list of route templates such as /v1/{name}/predict")
    routes = tuple(i.strip() for i in items if i.strip())
    if any(not r.startswith("/") for r in routes):
        raise ValueError("route templates that start with '/'")
    return routes


def _setting(default: Any, parse: Callable[[Any], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


REQUIRED: Any = object()  # marker: no default; the value must come from somewhere


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings of one sidecar process."""

    model_name: str = _setting(REQUIRED, _text, "Name of the model behind this sidecar.")
    model_version: str = _setting(REQUIRED, _text, "Version stamped on every response.")
    policy_version: str = _setting(REQUIRED, _text, "Policy version stamped on every response.")
    evidence_bundle_id: str = _setting(REQUIRED, _text, "Evidence bundle stamped on responses.")
    upstream_url: str = _setting("http://127.0.0.1:8000", _http_url, "Model server base URL.")
    listen: tuple[str, int] = _setting(("0.0.0.0", 8080), _host_port, "Proxy listener.")
    admin_listen: tuple[str, int] = _setting(("127.0.0.1", 9090), _host_port, "Admin listener.")
    events_file: str = _setting("events.jsonl", _text, "JSON-lines file the events go to.")
    max_body_bytes: int = _setting(10 * 1024**2, _size, "Largest request body (413 above).")
    max_header_bytes: int = _setting(8190, _size, "Largest header line (431 above).")
    max_headers: int = _setting(100, _positive_int, "Most request headers (431 above).")
    max_request_line_bytes: int = _setting(8190, _size, "Longest request line (414 above).")
    connect_timeout: float = _setting(5.0, _duration, "Upstream connect timeout.")
    read_timeout: float = _setting(120.0, _duration, "Wait for upstream response headers.")
    idle_timeout: float = _setting(60.0, _duration, "Longest silence between body chunks.")
    total_timeout: float = _setting(600.0, _duration, "Whole exchange with the upstream.")
    drain_timeout: float = _setting(30.0, _duration, "On SIGTERM, time in-flight requests get.")
    buffer_response_bytes: int = _setting(
        1024**2, _size, "Responses with a known length up to this are buffered, others streamed."
    )
    upstream_max_connections: int = _setting(1000, _positive_int, "Upstream connection pool.")
    replace_upstream_errors: bool = _setting(
        False, _bool, "Replace upstream 5xx bodies with the sidecar's own JSON error."
    )
    stamp_body: bool = _setting(False, _bool, "Add the stamp object to JSON object responses.")
    stamp_body_key: str = _setting("compliance", _text, "Key of the stamp object in bodies.")
    event_queue_size: int = _setting(65536, _positive_int, "Events held before the sink.")
    event_queue_when_full: str = _setting(
        "drop_oldest", _choice(*QUEUE_POLICIES), "What the event queue drops when full."
    )
    routes: tuple[str, ...] = _setting((), _route_list, "Extra route templates for labels.")
    upstream_health_path: str | None = _setting(
        None, _optional_text, "Path probed for readiness; default: a TCP connect."
    )
    log_level: str = _setting("info", _choice(*LOG_LEVELS), "Level of the sidecar's own logs.")

    @property
    def identity(self) -> dict[str, str]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "policy_version": self.policy_version,
            "evidence_bundle_id": self.evidence_bundle_id,
        }


SETTINGS_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    unknown = sorted(str(k) for k in data if k not in SETTINGS_FIELDS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}")
    return data


def load_settings(
    config_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge flags > environment > file > defaults, validate, and return ``Settings``."""
    environ = os.environ if environ is None else environ
    flags = flags or {}
    config_path = config_path or environ.get(ENV_PREFIX + "CONFIG") or None
    file_values = _read_file(config_path) if config_path else {}
    values: dict[str, Any] = {}
    for key, spec in SETTINGS_FIELDS.items():
        if flags.get(key) is not None:
            raw, source = flags[key], f"flag {flag_name(key)}"
        elif env_name(key) in environ:
            raw, source = environ[env_name(key)], f"environment variable {env_name(key)}"
        elif key in file_values:
            raw, source = file_values[key], f"config file {config_path}, key {key!r}"
        elif spec.default is REQUIRED:
            raise ConfigError(
                f"missing required setting {key!r}: set {env_name(key)}, "
                f"pass {flag_name(key)}, or add {key!r} to the config file"
            )
        else:
            values[key] = spec.default
            continue
        try:
            values[key] = spec.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: expected {exc}, got {raw!r}") from None
    return Settings(**values)
