"""Results remembered per string, without remembering the string.

Header values (user agents, forwarded-for chains) and system prompts repeat across
inferences; analysing them again is the largest cost of an event that was not sampled.
The cache is keyed by a BLAKE2b digest under a random per-process key, so it holds
offsets and scores, never text, and its keys mean nothing outside the process.
Bounded, oldest entry out first; reads take no lock (a dict read is atomic).
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[bytes, tuple[str, ...], float]


class DigestCache(Generic[T]):
    """At most ``size`` results, keyed by (digest of the text, entities, threshold)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._secret = os.urandom(16)
        self._items: dict[Key, T] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # approximate under threads: for tests and tuning

    def key(self, text: str, entities: tuple[str, ...], threshold: float) -> Key:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=self._secret,
                                 digest_size=16).digest()
        return digest, entities, threshold

    def get(self, key: Key) -> T | None:
        found = self._items.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: Key, value: T) -> None:
        with self._lock:
            while len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = value
