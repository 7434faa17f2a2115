"""Value parsers for settings. Each takes a raw value (a string from a flag or the
environment, or any YAML scalar) and returns the typed value, or raises ``ValueError``
whose message says what was expected (the loader adds the key and the source)."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

# Kubernetes-style Ki/Mi/Gi/Ti too: the chart's values sit next to volume sizes written so.
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
               "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
               "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
_INT_MAX = 2**31 - 1
_NUM_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


class YamlInt(int):
    """An integer read from YAML, with the text it was written as (``source``)."""

    source: str


class YamlFloat(float):
    """A float read from YAML, with the text it was written as (``source``)."""

    source: str


class SecretInValue(ValueError):
    """The value holds a credential: the error must not quote it."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What Python makes of bytes that are not UTF-8 in an environment variable or an argument
# (surrogate escapes), or a YAML "\ud800": no header or JSON event can carry them.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token (RFC 9110 §5.1, §5.6.2)


def text(raw: Any) -> str:
    """A non-empty string without control characters. A number from YAML keeps the text
    it was written as: ``model_version: 1.10`` is "1.10", not the float's "1.1" (the
    stamped identity must be what the operator wrote). Line breaks and other control
    characters are refused: these values go into response headers and log lines."""
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise ValueError("a non-empty string")
    value = str(getattr(raw, "source", raw)).strip()
    if value == "":
        raise ValueError("a non-empty string")
    if _CONTROL.search(value):
        raise ValueError("a string without control characters (line breaks, tabs, NUL)")
    if _SURROGATE.search(value):
        raise ValueError("UTF-8 text (it holds bytes that are not UTF-8)")
    return value


def optional_text(raw: Any) -> str | None:
    return None if raw is None or raw == "" else text(raw)


def detectors_file(raw: Any) -> str | None:
    """A detectors file, or ``off`` in any case: YAML reads an unquoted ``off`` (the
    documented value) as false.

    >>> detectors_file(False), detectors_file("OFF"), detectors_file("d.yaml")
    ('off', 'off', 'd.yaml')
    """
    if raw is False:
        return "off"
    value = optional_text(raw)
    return "off" if value is not None and value.strip().lower() == "off" else value


def boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def positive_int(raw: Any) -> int:
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


def size(raw: Any) -> int:
    expected = "a positive size such as 10MiB, 8KiB or 65536"
    size = int(_with_unit(raw, _SIZE_UNITS, expected))
    if size <= 0:  # e.g. 0.5 bytes
        raise ValueError(expected)
    return size


def size_upto(limit: int, hint: str) -> Callable[[Any], int]:
    """``size`` with an upper bound (a C parser takes the value as an unsigned long)."""
    def parse(raw: Any) -> int:
        value = size(raw)
        if value > limit:
            raise ValueError(f"a size of at most {hint}")
        return value
    return parse


def duration(raw: Any) -> float:
    return _with_unit(raw, _DURATION_UNITS, "a positive duration such as 30s, 250ms or 2.5")


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def host_port(raw: Any) -> tuple[str, int]:
    host, sep, port = text(raw).rpartition(":")
    host = host.strip("[]")
    valid_port = port.isascii() and port.isdigit() and 0 <= int(port) <= 65535
    if not sep or not host or not valid_port or not _valid_host(host):
        raise ValueError("host:port, such as 0.0.0.0:8080")
    return host, int(port)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOSTNAME.match(host) is not None
    return True


def url_path(raw: Any) -> str:
    value = text(raw)
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError("a path starting with /, without spaces, such as /health")
    return value


def optional_url_path(raw: Any) -> str | None:
    return None if raw is None or raw == "" else url_path(raw)


def http_url(raw: Any) -> str:
    if isinstance(raw, str) and "@" in raw.partition("://")[2].partition("/")[0]:
        # Checked before anything else, so no other error quotes the credentials.
        raise SecretInValue("an http:// or https:// URL without user:password@")
    # Every error here is a SecretInValue: a URL may hold an API key in its query or a
    # password the @ check above missed (a "/" in it), so none quotes the value.
    url = text(raw).rstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        raise SecretInValue("an http:// or https:// URL, such as http://127.0.0.1:8000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SecretInValue("an http:// or https:// URL, such as http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise SecretInValue("an http:// or https:// URL with a valid port") from None
    if parts.username is not None or parts.password is not None:
        # They would be logged at start and sent in the Host header; credentials for the
        # model server travel in the client's own headers.
        raise SecretInValue("an http:// or https:// URL without user:password@")
    if parts.query or parts.fragment:
        raise SecretInValue("an http:// or https:// URL without ?query or #fragment (each "
                            "request's own path and query are appended to it)")
    return url


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return value

    return parse


def route_list(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("a list of route templates such as /v1/{name}/predict")
    routes = tuple(i.strip() for i in items if i.strip())
    if any(not r.startswith("/") for r in routes):
        raise ValueError("route templates that start with '/'")
    return routes





def route_map(raw: Any) -> tuple[tuple[str, str], ...]:
    """Route template → value, from a YAML mapping or ``/a=x,/b/{id}=y``."""
    expected = "a mapping of route templates to names, such as /v1/embeddings=metadata-only"
    if isinstance(raw, str):
        pairs = []
        for item in (i.strip() for i in raw.split(",")):
            if item:
                route, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(expected)
                pairs.append((route.strip(), value.strip()))
    elif isinstance(raw, dict):
        pairs = [(str(k).strip(), v.strip() if isinstance(v, str) else v) for k, v in raw.items()]
    else:
        raise ValueError(expected)
    if any(not r.startswith("/") or not isinstance(v, str) or not v for r, v in pairs):
        raise ValueError(expected)
    seen = set()
    for route, _ in pairs:
        if route in seen:  # the last would silently win
            raise ValueError(f"each route once ({route} is given twice)")
        seen.add(route)
    return tuple(pairs)


def identity_source(raw: Any) -> str | None:
    value = optional_text(raw)
    if value is None:
        return None
    if value in ("api_key", "client_address") or (
        value.startswith("header:") and HEADER_NAME.fullmatch(value[7:].strip())
    ):
        return value
    raise ValueError("header:<name> (a valid header name), api_key or client_address")
