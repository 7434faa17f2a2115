"""Which inferences keep their payloads: decided from the inference id alone (issue 4).

The id is hashed (BLAKE2b, first 8 bytes, as a fraction of 2**64) and compared with the
rate, so the same traffic replayed gives the same sample, every replica of a model agrees
without talking to the others, and a lower rate samples a subset of a higher one. The
metadata event is never sampled away: this only decides whether the payload rides along.

Reasons recorded on the event: ``always_capture:<rule>`` (errors, alerts, rejections,
whatever the rate), ``sampled``, ``not_sampled``, or ``disabled`` (the profile captures no
payload at all, e.g. ``metadata-only``).

>>> decide("0190a1b2-0000-7000-8000-000000000001", 0.5)
Decision(captured=True, reason='sampled')
>>> decide("0190a1b2-0000-7000-8000-000000000003", 0.5)
Decision(captured=False, reason='not_sampled')
>>> decide("0190a1b2-0000-7000-8000-000000000003", 0.5, status=502)
Decision(captured=True, reason='always_capture:errors')
>>> decide("0190a1b2-0000-7000-8000-000000000003", 0.5, flags={"rejection"})
Decision(captured=True, reason='always_capture:rejections')
>>> decide("0190a1b2-0000-7000-8000-000000000003", 0.5, status=502, rules=())
Decision(captured=False, reason='not_sampled')
>>> decide("0190a1b2-0000-7000-8000-000000000001", 1.0, enabled=False)
Decision(captured=False, reason='disabled')
>>> round(fraction("0190a1b2-0000-7000-8000-000000000001"), 6)
0.186264
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import NamedTuple

from sidecar.privacy.rules import ALWAYS_CAPTURE_RULES

_FLAG_RULES = {"error": "errors", "alert": "alerts", "rejection": "rejections"}


class Decision(NamedTuple):
    """Whether this event carries its payload, and why."""

    captured: bool
    reason: str


_SAMPLED = Decision(True, "sampled")
_NOT_SAMPLED = Decision(False, "not_sampled")


def fraction(inference_id: str) -> float:
    """The id's fixed position in [0, 1): the first 8 bytes of BLAKE2b over its text."""
    digest = hashlib.blake2b(inference_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


def decide(inference_id: str, rate: float, status: int = 0, flags: Collection[str] = (),
           *, rules: Collection[str] = ALWAYS_CAPTURE_RULES, enabled: bool = True) -> Decision:
    """Sampling decision for one inference.

    ``status`` >= 500 counts as an error; ``flags`` may add ``error``, ``alert`` (a
    detector fired) and ``rejection`` (the sidecar refused the request). ``rules`` are the
    profile's ``always_capture``; ``enabled`` is False when the profile captures nothing.
    """
    if not enabled:
        return Decision(False, "disabled")
    if flags or status >= 500:  # else no rule can fire: skip the set (every event, on the loop)
        fired = {_FLAG_RULES[f] for f in flags if f in _FLAG_RULES}
        if status >= 500:
            fired.add("errors")
        for rule in ALWAYS_CAPTURE_RULES:  # a fixed order: the reason is reproducible
            if rule in fired and rule in rules:
                return Decision(True, f"always_capture:{rule}")
    if rate > 0.0 and fraction(inference_id) < rate:
        return _SAMPLED
    return _NOT_SAMPLED
