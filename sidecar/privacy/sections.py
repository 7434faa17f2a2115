"""What the masker reads of a captured inference: the headers a profile records, each
section (query string, request and response bodies) parsed and selected, and the byte
plan that shares the payload budget between them."""

from __future__ import annotations

import codecs
import functools
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from sidecar.privacy.profile import PrivacyProfile
from sidecar.privacy.rules import header_denied
from sidecar.privacy.selection import MISSING, Selector, TooDeep, check_depth

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def query_section(query: str) -> dict[str, Any]:
    """The query string as a dict; a repeated key keeps every value, in a list."""
    values: dict[str, list[str]] = {}
    # ";" separates pairs too for many servers: "x=1;api_key=..." must not hide the key
    for key, value in parse_qsl(query.replace(";", "&"), keep_blank_values=True):
        values.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in values.items()}


def body_section(body: bytes | None, content_type: str | None, selector: Selector,
                 max_parse: int) -> tuple[Any, str | None]:
    """The part of ``body`` the selector keeps (``MISSING`` when none), or why it is
    omitted (binary, too large, invalid JSON, not selected, too deep, text not captured)."""
    if not body:
        return MISSING, None
    kind = body_kind(body, content_type)
    if kind == "binary":
        return MISSING, "binary"
    if len(body) > max_parse:
        return MISSING, "too_large"
    if kind == "json":
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            if content_type is not None:  # declared JSON, but is not: not captured
                return MISSING, "invalid_json"
            kind = "text"  # sniffed wrongly: it is text that starts with a bracket
    if kind == "json":
        if not selector.rule.keep:
            return MISSING, "not_selected"
        try:
            check_depth(document, len(body))
        except TooDeep:
            return MISSING, "too_deep"
        return selector.select(document), None
    if not selector.rule.text:
        return MISSING, "text_not_captured"
    codec = _charset(content_type)
    if codec is None:
        # Decoded as UTF-8, UTF-16 text is NUL-spaced letters no recognizer reads.
        return MISSING, "unknown_charset"
    try:
        text = body.decode(codec, "replace")
    except LookupError:  # a codec that is not a text encoding after all
        return MISSING, "unknown_charset"
    if "\x00" in text or (codec.startswith(("utf-16", "utf-32")) and body.isascii()
                          and b"\x00" not in body):
        # Not in the charset it says (or none said): UTF-16 read as UTF-8 is NUL-spaced
        # letters, ASCII read as UTF-16 is CJK; either hides values from the recognizers
        # that a reader gets back at once.
        return MISSING, "unknown_charset"
    if kind == "form":  # decoded, so "a%40b.com" is seen (and masked) as "a@b.com"
        return query_section(text), None
    return text, None


def _charset(content_type: str | None) -> str | None:
    """The codec of the declared charset (UTF-8 when none is declared), or None."""
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            try:
                info = codecs.lookup(value.strip().strip('"'))
            except LookupError:
                return None
            # base64, rot13, zlib ... are codecs too, but not text encodings.
            if not getattr(info, "_is_text_encoding", True):
                return None
            # Nor one that reads ASCII as other letters (EBCDIC: cp500, cp037 ...): ASCII
            # labelled so is recorded as text no recognizer reads, which encodes straight
            # back to the values. UTF-16 and UTF-32 are checked on the body instead.
            if not info.name.startswith(("utf-16", "utf-32")) and \
                    _ASCII_PROBE.decode(info.name, "replace") != _ASCII_PROBE.decode():
                return None
            return info.name
    return "utf-8"


_ASCII_PROBE = b"Jane.Roe+1@example.org, 0123456789 (IBAN) sk-AZaz_"


def recorded_headers(profile: PrivacyProfile, headers: Headers | None
                     ) -> tuple[tuple[str, str], ...]:
    """The headers ``profile`` records, before masking: allow-listed, never a denied one
    (credentials), names lower-cased, repeated ones joined, sorted by name."""
    allow = profile.headers_allow
    if headers is None or not allow:
        return ()
    recordable = _recordable(allow)
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered in recordable:
            values.setdefault(lowered, []).append(value)
    return tuple((name, ", ".join(v)) for name, v in sorted(values.items()))


@functools.lru_cache(maxsize=64)
def _recordable(allow: tuple[str, ...]) -> frozenset[str]:
    """The allow-listed names that are not denied: worked out once per allow list, not
    once per header of every event (this runs on the event loop, for every event)."""
    return frozenset(name for name in allow if not header_denied(name))


def content_encoded(headers: Headers | None) -> bool:
    """Whether the headers declare a Content-Encoding other than identity (gzip, br...)."""
    if headers is None:
        return False
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return any(name.lower() == "content-encoding" and value.strip().lower() not in ("", "identity")
               for name, value in pairs)


def body_kind(body: bytes, content_type: str | None) -> str:
    """``json``, ``form``, ``text`` or ``binary``, from the content type or, without one,
    the bytes."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.endswith(("/json", "+json")):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media.startswith("text/") or media in ("application/xml", "application/x-ndjson"):
        return "text"
    if media:
        return "binary"
    head = body[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the sample's end
            return "binary"
    if b"\x00" in head:
        return "binary"
    return "json" if head.lstrip()[:1] in (b"{", b"[") else "text"


def byte_plan(sizes: Mapping[str, int], budget: int) -> dict[str, int]:
    """Byte caps per section, from the raw sizes: the query string at most a quarter; the
    request whatever leaves the response its size, or at least half of the rest; the
    response the rest (and, when fitting, whatever the others left)."""
    caps: dict[str, int] = {}
    remaining = budget
    if "query" in sizes:
        caps["query"] = min(remaining // 4, 2 * sizes["query"] + 64)
        remaining -= caps["query"]
    if "request" in sizes:
        reserve = min(sizes.get("response", 0), remaining // 2)
        caps["request"] = remaining - reserve
        remaining -= caps["request"]
    if "response" in sizes:
        caps["response"] = remaining
    return caps
