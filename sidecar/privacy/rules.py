"""Parsing of one profile's parts, each raising ``Invalid(key, reason)``.

Kept apart from ``profile.py`` (which owns files, names and the digest) so every rule a
profile must satisfy reads top to bottom in one place. ``key`` is the dotted path into the
YAML (``entities.EMAIL_ADDRESS.operator``, ``request.keep[2]``) so an operator can find
the line; ``profile.py`` adds the file (issue 4: "refused at start-up with the file, the
key and the reason").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonpath import JSONPathEnvironment, JSONPathError

from sidecar.config import parsers
from sidecar.privacy.entities import KNOWN_ENTITIES

OPERATORS = ("redact", "mask", "hash", "keep")
MAX_CAPTURED_BYTES = 4 * 1024 * 1024
ALWAYS_CAPTURE_RULES = ("errors", "alerts", "rejections")

# Never recorded, whatever a profile says (issue 4). Exact names, then fragments: a
# credential header we have not heard of (``x-acme-api-key``) is still caught.
HARD_DENIED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-auth-token", "x-amz-security-token", "x-goog-api-key", "x-csrf-token",
})
# "key" covers api-key, x-functions-key, ocp-apim-subscription-key, private-key; a
# header that merely mentions one (idempotency-key) is a price worth paying.
_DENIED_FRAGMENTS = ("auth", "cookie", "key", "token", "secret", "password", "passwd",
                     "passcode", "session", "credential", "signature", "jwt", "assertion",
                     "principal", "private", "bearer", "saml", "csrf", "xsrf")

# RFC 9535 mode: the path syntax other tools (and readers) share, no library extensions.
JSONPATH = JSONPathEnvironment(strict=True)
_TAG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class Invalid(ValueError):
    """One rule broken: ``key`` is the dotted path in the profile, ``reason`` what is wrong."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def header_denied(name: str) -> bool:
    """True for a header that must never be recorded (credentials, cookies, sessions)."""
    lowered = name.strip().lower()
    return lowered in HARD_DENIED_HEADERS or any(f in lowered for f in _DENIED_FRAGMENTS)


@dataclass(frozen=True, slots=True)
class EntityRule:
    """What to do with one detected entity type.

    ``mask`` keeps at most ``chars_to_keep`` characters and never more than half the value,
    so a short value is never shown whole; ``hash`` writes a keyed HMAC prefix so equal
    values can be joined across events without being readable.
    """

    operator: str
    chars_to_keep: int = 4
    from_end: bool = True
    masking_char: str = "*"
    hash_length: int = 16
    score_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class BodyRule:
    """Which parts of a body are captured: ``keep`` paths, minus ``drop`` paths; ``text``
    allows non-JSON text bodies (masked whole). Binary bodies are never captured."""

    keep: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    text: bool = False

    @property
    def captures(self) -> bool:
        return bool(self.keep) or self.text


def mapping(raw: Any, key: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise Invalid(key, "expected a mapping with string keys")
    return raw


def no_unknown_keys(raw: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for name in raw:
        if name not in allowed:
            raise Invalid(f"{prefix}{name}", f"unknown key; expected one of {', '.join(allowed)}")


def rate(raw: Any, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0.0 <= raw <= 1.0:
        raise Invalid(key, f"expected a number from 0 to 1, got {raw!r}")
    return float(raw)


def boolean(raw: Any, key: str) -> bool:
    if not isinstance(raw, bool):
        raise Invalid(key, f"expected true or false, got {raw!r}")
    return raw


def size(raw: Any, key: str) -> int:
    """A byte size (``16KiB``, ``65536``) or 0; capped, since a captured payload travels
    inside one event through the log and Kafka."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw == 0:
        return 0
    try:
        value = parsers.size(raw)
    except ValueError as exc:
        raise Invalid(key, f"expected {exc}, or 0 for none") from None
    if value > MAX_CAPTURED_BYTES:
        raise Invalid(key, f"expected at most {MAX_CAPTURED_BYTES} bytes, got {value}")
    return value


def tag(raw: Any, key: str) -> str:
    if not isinstance(raw, str) or not _TAG.match(raw):
        raise Invalid(key, f"expected a short lower-case tag ([a-z0-9._-]), got {raw!r}")
    return raw


def string_list(raw: Any, key: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise Invalid(key, "expected a list of strings")
    return tuple(raw)


def json_paths(raw: Any, key: str) -> tuple[str, ...]:
    paths = string_list(raw, key)
    for index, path in enumerate(paths):
        try:
            JSONPATH.compile(path)
        except JSONPathError as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Invalid(f"{key}[{index}]", f"bad JSON path {path!r}: {first_line}") from None
    return paths


def body(raw: Any, key: str) -> BodyRule:
    section = mapping(raw, key)
    no_unknown_keys(section, ("keep", "drop", "text"), f"{key}.")
    return BodyRule(
        keep=json_paths(section.get("keep"), f"{key}.keep"),
        drop=json_paths(section.get("drop"), f"{key}.drop"),
        text=boolean(section.get("text", False), f"{key}.text"),
    )


def header_allow_list(raw: Any, key: str) -> tuple[str, ...]:
    section = mapping(raw, key)
    no_unknown_keys(section, ("allow",), f"{key}.")
    names = string_list(section.get("allow"), f"{key}.allow")
    for index, name in enumerate(names):
        item = f"{key}.allow[{index}]"
        if not parsers.HEADER_NAME.fullmatch(name):
            raise Invalid(item, f"{name!r} is not a header name")
        if header_denied(name):
            raise Invalid(item, f"{name!r} carries credentials and is never recorded")
    return tuple(sorted({name.lower() for name in names}))


def _entity_rule(raw: Any, key: str) -> EntityRule:
    spec: Mapping[str, Any] = {"operator": raw} if isinstance(raw, str) else mapping(raw, key)
    allowed = ("operator", "chars_to_keep", "from_end", "masking_char", "length",
               "score_threshold")
    no_unknown_keys(spec, allowed, f"{key}.")
    operator = spec.get("operator")
    if operator not in OPERATORS:
        raise Invalid(f"{key}.operator", f"expected one of {', '.join(OPERATORS)}, "
                      f"got {operator!r}")
    keep = spec.get("chars_to_keep", 4)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= 64:
        raise Invalid(f"{key}.chars_to_keep", f"expected an integer from 0 to 64, got {keep!r}")
    char = spec.get("masking_char", "*")
    if not isinstance(char, str) or len(char) != 1:
        raise Invalid(f"{key}.masking_char", f"expected one character, got {char!r}")
    length = spec.get("length", 16)
    if isinstance(length, bool) or not isinstance(length, int) or not 8 <= length <= 64:
        raise Invalid(f"{key}.length", f"expected an integer from 8 to 64, got {length!r}")
    threshold = spec.get("score_threshold")
    return EntityRule(
        operator=str(operator),
        chars_to_keep=keep,
        from_end=boolean(spec.get("from_end", True), f"{key}.from_end"),
        masking_char=char,
        hash_length=length,
        score_threshold=None if threshold is None else rate(threshold, f"{key}.score_threshold"),
    )


def entities(raw: Any, key: str) -> dict[str, EntityRule]:
    section = mapping(raw, key)
    rules: dict[str, EntityRule] = {}
    for name, spec in section.items():
        if name not in KNOWN_ENTITIES:
            raise Invalid(f"{key}.{name}", "unknown entity; see sidecar/privacy/entities.py "
                          "for the names presidio and the sidecar detect")
        rules[name] = _entity_rule(spec, f"{key}.{name}")
    return dict(sorted(rules.items()))


def always_capture(raw: Any, key: str) -> frozenset[str]:
    names = string_list(raw, key)
    for index, name in enumerate(names):
        if name not in ALWAYS_CAPTURE_RULES:
            raise Invalid(f"{key}[{index}]", f"expected one of {', '.join(ALWAYS_CAPTURE_RULES)}"
                          f", got {name!r}")
    return frozenset(names)
