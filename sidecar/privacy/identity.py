"""Pseudonymous client identity: a keyed HMAC of who called, never who called (issue 4).

The identity source is a header (``header:x-client-id``), the caller's API key
(``api_key``: the bearer token of ``Authorization``, else ``x-api-key`` / ``api-key``), or
the client address (``client_address``). The pseudonym is ``<key version>:<HMAC-SHA256
prefix>``: stable for one client under one key, so a consumer can count and follow a
client (and Kafka can partition by it) without learning its identity; unlinkable across
keys, and the key version says which key made it.

The key is read from a file (a mounted secret) and re-read when the file changes: we
``stat`` it at most every ``check_interval`` seconds on the calling thread (a few
microseconds) and compare inode, mtime and size, which catches both in-place writes and
Kubernetes' symlink swap. A key file that goes missing or too short keeps the old key in
use and logs why, never the key. The raw identity is only ever held in the caller's
arguments: not stored, not logged, not in exceptions.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

log = logging.getLogger("inference_sidecar.privacy")

MIN_KEY_BYTES = 16
_API_KEY_HEADERS = ("x-api-key", "api-key")


class IdentityError(ValueError):
    """The identity source or key file cannot be used (raised at start-up only)."""


def read_key(path: Path) -> bytes:
    """A secret key from a file (whitespace around it ignored), at least MIN_KEY_BYTES."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise IdentityError(f"key file {path}: cannot be read "
                            f"({exc.strerror or type(exc).__name__})") from None
    if len(key) < MIN_KEY_BYTES:
        raise IdentityError(f"key file {path}: expected at least {MIN_KEY_BYTES} "
                            f"bytes of key, found {len(key)}")
    return key


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def key_version(key: bytes) -> str:
    """A short public name for a key: 8 hex characters of an HMAC of a fixed label."""
    return hmac.new(key, b"inference-sidecar/identity-key-version", hashlib.sha256).hexdigest()[:8]


class ClientIdentity:
    """Builds pseudonyms from one identity source with a rotatable key."""

    def __init__(self, source: str, key_file: str | os.PathLike[str], *,
                 check_interval: float = 5.0, length: int = 32,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if source.startswith("header:") and source[7:].strip():
            self._header: str | None = source[7:].strip().lower()
        elif source in ("api_key", "client_address"):
            self._header = None
        else:
            raise IdentityError(f"identity source {source!r}: expected header:<name>, "
                                "api_key or client_address")
        if not 8 <= length <= 64:
            raise IdentityError(f"pseudonym length {length}: expected 8 to 64")
        self.source = source
        self._path = Path(key_file)
        self._interval = check_interval
        self._length = length
        self._clock = clock
        self._lock = threading.Lock()
        key = read_key(self._path)
        self._current = (key, key_version(key))  # swapped whole: readers never mix two keys
        self._stamp = _stamp(self._path)
        self._checked = clock()

    def __repr__(self) -> str:
        return f"ClientIdentity(source={self.source!r}, key_version={self._current[1]!r})"

    @property
    def key_version(self) -> str:
        self._maybe_reload()
        return self._current[1]

    def pseudonym(self, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
                  remote: str | None) -> str | None:
        """``<key version>:<hex>`` for this request's client, or None when the source is
        absent (no such header, no API key, no address)."""
        raw = self._raw(headers, remote)
        if not raw:
            return None
        self._maybe_reload()
        key, version = self._current
        digest = hmac.new(key, raw.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"{version}:{digest.hexdigest()[:self._length]}"

    def _raw(self, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
             remote: str | None) -> str | None:
        if self.source == "client_address":
            return remote.strip() if remote else None
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        found: dict[str, str] = {}
        for name, value in pairs:
            found.setdefault(name.lower(), value.strip())
        if self._header is not None:
            return found.get(self._header) or None
        scheme, _, token = found.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return next((found[h] for h in _API_KEY_HEADERS if found.get(h)), None)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        with self._lock:
            if now - self._checked < self._interval:
                return
            self._checked = now
            stamp = _stamp(self._path)
            if stamp is None or stamp == self._stamp:
                return
            self._stamp = stamp  # judged once per change of the file, logged once
            try:
                key = read_key(self._path)
            except IdentityError as exc:
                log.warning("privacy: identity key not rotated, keeping the current key",
                            extra={"fields": {"reason": str(exc)}})
                return
            if key != self._current[0]:
                self._current = (key, key_version(key))
                log.info("privacy: identity key rotated",
                         extra={"fields": {"key_version": self._current[1]}})
