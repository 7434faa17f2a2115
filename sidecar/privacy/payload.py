"""The two passes around detection that keep a captured payload bounded.

``Collector`` walks what a profile selected, replaces every string (and every integer
long enough to be an identifier) by a ``Slot``, and gathers their text for one analyzer
call. It stops once the byte budget is spent, and cuts an over-long string to the budget
plus ``MARGIN`` characters: detection cost stays proportional to ``max_captured_bytes``,
not to the body. A string cut for analysis carries a ``limit``: its masked text ends
``MARGIN`` characters before the cut, because an entity straddling the cut was not
recognised and must not be emitted in part.

``Fitter`` puts the masked strings back and counts exact JSON bytes as it goes (brackets,
keys, quotes, escapes, commas), cutting or dropping what does not fit, so the serialised
payload is never larger than the budget.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from sidecar.privacy.selection import MAX_DEPTH, MISSING

MARGIN: Final = 4096
_BIG_INT: Final = 100_000  # six digits and up may be an account or card number: analysed
SECRET: Final = "<SECRET>"
# Keys whose value is a credential whatever it looks like: a hex key in ``?key=`` or a
# password in a form matches no recognizer. Compared with letters and digits only.
_SECRET_KEYS: Final = frozenset({
    "key", "apikey", "secret", "password", "passwd", "pwd", "pass", "passphrase", "token",
    "auth", "authorization", "sig", "signature", "jwt", "bearer", "cookie", "session",
    "sessionid", "credential", "credentials", "privatekey", "clientsecret"})
_SECRET_ENDINGS: Final = ("apikey", "token", "secret", "password", "passwd", "privatekey",
                          "accesskey", "secretkey", "signature", "credentials")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def secret_key(key: object) -> bool:
    """Whether a JSON, query or form key names a credential.

    >>> [secret_key(k) for k in ("api_key", "X-Access-Token", "password", "keywords")]
    [True, True, True, False]
    """
    if not isinstance(key, str):
        return False
    # Long keys are client-made: worked out each time rather than kept in the cache.
    return _secret_name(key) if len(key) <= 64 else _secret_name.__wrapped__(key)


# "name: value" or "name=value" in text, the value quoted or up to a separator; a
# credential scheme ("Bearer", "Basic") goes with the credential after it.
_PAIR: Final = re.compile(
    r"""([A-Za-z][A-Za-z0-9_.-]{0,63})["']?[ \t]*[:=][ \t]*"""
    r"""(?:"([^"\n]+)"|'([^'\n]+)'"""
    r"""|((?:(?i:bearer|basic)[ \t]+)?[^\s"',;&<>{}\[\]]+))""")


def hide_secret_values(text: str) -> tuple[str, int]:
    """``text`` with the value of every credential-named pair replaced by ``SECRET``, and
    how many: a text body (plain, NDJSON, a log line) has no keys for ``secret_key`` to
    read, and a password there matches no recognizer.

    >>> hide_secret_values('{"user": "x", "password": "hunter2 hunter2"} api_key=pa55&a=1')
    ('{"user": "x", "password": "<SECRET>"} api_key=<SECRET>&a=1', 2)
    >>> hide_secret_values("see https://x.example/?token=abc&y=2")
    ('see https://x.example/?token=<SECRET>&y=2', 1)
    """
    if ":" not in text and "=" not in text:
        return text, 0
    out: list[str] = []
    at = hidden = 0
    pair = _PAIR.search(text)
    while pair is not None:
        if not secret_key(pair.group(1)):
            # its value may hold a pair ("https://x/?token=abc"): look again after the name
            pair = _PAIR.search(text, pair.end(1))
            continue
        value = next(i for i in (2, 3, 4) if pair.group(i) is not None)
        out += (text[at:pair.start(value)], SECRET)
        at = pair.end(value)
        hidden += 1
        pair = _PAIR.search(text, at)
    return ("".join(out) + text[at:], hidden) if hidden else (text, 0)


@functools.lru_cache(maxsize=4096)  # keys repeat: "role", "content", "messages"
def _secret_name(key: str) -> bool:
    name = _NOT_ALNUM.sub("", key.lower())
    return name in _SECRET_KEYS or name.endswith(_SECRET_ENDINGS)


class Slot:
    """Stands for the ``index``-th collected string until its masked text is known."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


@dataclass(slots=True)
class Texts:
    """The strings of one event, in the order the analyzer sees them."""

    items: list[str] = field(default_factory=list)
    limits: list[int | None] = field(default_factory=list)
    ints: dict[int, int | float] = field(default_factory=dict)  # slot -> original number
    secrets: int = 0  # values replaced by SECRET for their key alone

    def add(self, text: str, limit: int | None = None) -> Slot:
        self.items.append(clean(text))
        self.limits.append(limit)
        return Slot(len(self.items) - 1)


def clean(text: str) -> str:
    """Lone surrogates (possible in a ``str`` built by hand, never in decoded bytes) cannot
    be encoded as UTF-8 JSON: replace them rather than fail later."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


class Collector:
    """Replaces the strings of a selected value by slots, within ``budget`` characters."""

    def __init__(self, texts: Texts, budget: int) -> None:
        self.texts = texts
        self.remaining = budget
        self.truncated = False

    def string(self, value: str) -> Slot | object:
        if self.remaining <= 0:
            self.truncated = True
            return MISSING
        if len(value) > self.remaining + MARGIN:
            self.truncated = True
            slot = self.texts.add(value[: self.remaining + MARGIN], limit=self.remaining)
            self.remaining = 0
            return slot
        self.remaining -= len(value) + 3
        return self.texts.add(value)

    def collect(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.string(value)
        if depth > MAX_DEPTH:
            self.truncated = True
            return MISSING
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, child in value.items():
                key_slot = self.string(str(key))
                if key_slot is not MISSING and secret_key(key) and child not in (None, ""):
                    self.texts.secrets += 1
                    out[key_slot] = SECRET  # never analysed: no recognizer reads every key
                    continue
                collected = self.collect(child, depth + 1) if key_slot is not MISSING else MISSING
                if collected is MISSING:
                    if self.remaining <= 0:
                        break
                    continue
                out[key_slot] = collected
            return out
        if isinstance(value, list):
            items = []
            for child in value:
                collected = self.collect(child, depth + 1)
                if collected is MISSING and self.remaining <= 0:
                    break
                if collected is not MISSING:
                    items.append(collected)
            return items
        if self.remaining <= 0:
            self.truncated = True
            return MISSING
        number = value if isinstance(value, int) and not isinstance(value, bool) else (
            int(value) if isinstance(value, float) and math.isfinite(value)
            and value.is_integer() else None)  # 4111111111111111.0, or an int past 64 bits
        if number is not None and abs(number) >= _BIG_INT:
            slot = self.string(str(number))
            if isinstance(slot, Slot):
                self.texts.ints[slot.index] = value
            return slot
        self.remaining -= 8
        return value


class Fitter:
    """Rebuilds a collected value with masked strings, at most ``budget`` JSON bytes."""

    def __init__(self, texts: Texts, masked: list[str], budget: int) -> None:
        self.texts = texts
        self.masked = masked
        self.remaining = budget
        self.truncated = False

    def _take(self, cost: int) -> bool:
        if cost > self.remaining:
            self.truncated = True
            return False
        self.remaining -= cost
        return True

    def slot(self, slot: Slot) -> Any:
        text = self.masked[slot.index]
        original = self.texts.ints.get(slot.index)
        if original is not None and text == self.texts.items[slot.index]:
            return original if self._take(len(text) + 1) else MISSING  # unchanged: a number
        size = len(orjson.dumps(text)) + 1
        if self._take(size):
            return text
        cut = cut_to(text, self.remaining - 1)
        if not cut:
            return MISSING
        self.remaining -= len(orjson.dumps(cut)) + 1
        return cut

    def fit(self, value: Any) -> Any:
        if isinstance(value, Slot):
            return self.slot(value)
        if isinstance(value, dict):
            if not self._take(3):
                return MISSING
            out: dict[str, Any] = {}
            for key_slot, child in value.items():
                key = self.masked[key_slot.index]
                if not self._take(len(orjson.dumps(key)) + 1):
                    break
                fitted = self.fit(child)
                if fitted is MISSING:
                    if self.truncated:
                        break
                    continue
                out[_unique(out, key)] = fitted
            return out
        if isinstance(value, list):
            if not self._take(3):
                return MISSING
            items = []
            for child in value:
                fitted = self.fit(child)
                if fitted is MISSING:
                    break
                items.append(fitted)
            return items
        if self._take(len(orjson.dumps(value)) + 1):
            return value
        return MISSING


def _unique(out: dict[str, Any], key: str) -> str:
    """Two keys masked to the same text (two e-mail addresses as keys) must both stay."""
    if key not in out:
        return key
    n = 2
    while f"{key}#{n}" in out:
        n += 1
    return f"{key}#{n}"


def cut_to(text: str, max_json_bytes: int) -> str:
    """The longest prefix of ``text`` whose JSON encoding fits in ``max_json_bytes``."""
    if max_json_bytes < 3:
        return ""
    n = min(len(text), max_json_bytes - 2)
    while n > 0:
        size = len(orjson.dumps(text[:n]))
        if size <= max_json_bytes:
            return text[:n]
        n = min(n - 1, n * max_json_bytes // size)
    return ""
