"""``RawBudget``: the bytes of raw bodies that events in the pipeline hold, bounded.

An event keeps references to its request and buffered response bodies until the
detection stage has read them and the masking stage has decided what to record: through
the event queue, the log writer and the hand-offs between the stages. Those are bounded
by count (tens of thousands of events), not by bytes: with large bodies and a stage
falling behind, the references alone would hold gigabytes and get the pod OOM-killed.

Every event's bodies are held under one ``Held``, taken from the budget on the request
path; it gives its bytes back when the last reference to it goes (``__del__``: CPython
frees on the last reference, on whatever thread drops it), so no path through the
pipeline (delivered, dropped by ``when_full``, failed) can leak budget. When the budget is
spent, a new event keeps no bodies: the enforce-mode gate still reads the request (it
runs before), detection goes without prompt features and masking without payload for
that event, both said on the event and counted (``..._raw_bodies_skipped_total``).

>>> budget = RawBudget(100)
>>> held = budget.hold(60)
>>> budget.hold(60) is None, held.grow(40), held.grow(1), budget.used
(True, True, False, 100)
>>> del held
>>> budget.used
0
"""

from __future__ import annotations

import threading


class RawBudget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        # Reentrant: a Held freed by the collector while this thread holds the lock must
        # not deadlock it. Given back from the stages' threads too.
        self._lock = threading.RLock()

    def hold(self, n: int) -> Held | None:
        """``n`` bytes held until the returned ``Held`` is gone; None if over budget."""
        with self._lock:
            if self.used + n > self.max_bytes:
                return None
            self.used += n
        return Held(self, n)

    def _take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.max_bytes:
                return False
            self.used += n
            return True

    def _release(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Held:
    """One event's share of the budget."""

    __slots__ = ("_budget", "bytes")

    def __init__(self, budget: RawBudget, n: int) -> None:
        self._budget = budget
        self.bytes = n

    def grow(self, n: int) -> bool:
        """Hold ``n`` more bytes (the response), if the budget allows."""
        if not self._budget._take(n):
            return False
        self.bytes += n
        return True

    def __del__(self) -> None:
        self._budget._release(self.bytes)
