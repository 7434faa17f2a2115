"""``HeaderMemo``: the masked result of an unsampled event, remembered by its inputs.

About 95% of events under ``strict`` are not sampled: what they record is their
allow-listed headers (content type, user agent, forwarded-for), and those repeat. For
such an event the masking worker's answer depends only on the profile, the sampling
reason and those header values, so the privacy stage can reuse an earlier answer and
skip the round trip to the worker (and its CPU) entirely.

Keys are BLAKE2b digests under a random per-process key, so the memo holds no raw value;
the values are masked records, which hold none by construction. Bounded, least recently
used out first. Thread-safe: the event loop reads it (the privacy stage's ``_prepare``
and ``settle``), the stage's thread fills it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import Any

Record = dict[str, Any]


class HeaderMemo:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.hits = self.misses = 0
        self._secret = os.urandom(16)
        self._items: OrderedDict[bytes, Record] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, profile_digest: str, reason: str,
            request: tuple[tuple[str, str], ...],
            response: tuple[tuple[str, str], ...]) -> bytes:
        # One call, one buffer: the digest is hex, the reason a name, and the repr of a
        # tuple of strings never holds a raw line break, so the lines are unambiguous.
        data = "\n".join((profile_digest, reason, repr(request), repr(response)))
        return hashlib.blake2b(data.encode("utf-8", "surrogatepass"), key=self._secret,
                               digest_size=16).digest()

    def get(self, key: bytes) -> Record | None:
        with self._lock:
            record = self._items.get(key)
            if record is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return record

    def put(self, key: bytes, record: Record) -> None:
        with self._lock:
            self._items[key] = record
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
