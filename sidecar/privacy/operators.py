"""Turning findings into masked text: the per-entity operators of a profile.

``redact`` writes ``<EMAIL_ADDRESS>``; ``mask`` keeps a few characters and stars the rest
(never more than half the value, so short values are never shown whole); ``hash`` writes
``<EMAIL_ADDRESS:1f3a...>``, a keyed HMAC-SHA256 prefix: equal values give equal tokens,
so a consumer can join events on them, but without the key nobody can read them back or
confirm a guess (a plain hash of a phone number is reversed by brute force in minutes);
``keep`` leaves the value as it is (it is still counted).

Overlapping findings (a US SSN is also a plausible phone number) are merged into one
region, masked once, and counted once, under the highest-scoring finding; a ``keep``
finding never wins over a masking one, so overlaps fail towards masking.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable

from sidecar.privacy.analyzer import Finding
from sidecar.privacy.profile import PrivacyProfile
from sidecar.privacy.rules import EntityRule


def _regions(findings: Iterable[Finding], profile: PrivacyProfile
             ) -> list[tuple[int, int, str, EntityRule]]:
    """Merge overlapping findings the profile acts on into (start, end, entity, rule)."""
    usable: list[tuple[Finding, EntityRule]] = []
    for f in findings:
        rule = profile.rule(f.entity_type)
        floor = profile.score_threshold if rule is None or rule.score_threshold is None \
            else rule.score_threshold
        if rule is not None and f.score >= floor and f.end > f.start:
            usable.append((f, rule))
    usable.sort(key=lambda item: (item[0].start, -item[0].end))
    merged: list[tuple[int, int, str, EntityRule]] = []
    group: list[tuple[Finding, EntityRule]] = []
    end = -1
    for item in [*usable, None]:
        if item is not None and item[0].start < end:
            group.append(item)
            end = max(end, item[0].end)
            continue
        if group:
            masking = [g for g in group if g[1].operator != "keep"] or group
            best = max(masking, key=lambda g: (g[0].score, g[0].end - g[0].start,
                                               g[0].entity_type))
            merged.append((group[0][0].start, end, best[0].entity_type, best[1]))
        if item is not None:
            group, end = [item], item[0].end
    return merged


def replacement(value: str, entity: str, rule: EntityRule, hash_key: bytes) -> str:
    """The text that stands in for ``value`` (a detected ``entity``) under ``rule``."""
    if rule.operator == "keep":
        return value
    if rule.operator == "mask":
        shown = min(rule.chars_to_keep, len(value) // 2)
        hidden = rule.masking_char * (len(value) - shown)
        if shown == 0:
            return hidden
        return hidden + value[-shown:] if rule.from_end else value[:shown] + hidden
    if rule.operator == "hash":
        digest = hmac.new(hash_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"<{entity}:{digest.hexdigest()[:rule.hash_length]}>"
    return f"<{entity}>"


def apply(text: str, findings: Iterable[Finding], profile: PrivacyProfile, hash_key: bytes,
          counts: Counter[str], limit: int | None = None) -> str:
    """``text`` with every region masked; entity counts added to ``counts``.

    ``limit``: raw text from this offset on is dropped (the caller analysed a prefix of a
    longer string; a match cut at the prefix's end may be unrecognised, so the tail just
    before the cut is not trusted either). A region that starts before it is kept masked.
    """
    stop = len(text) if limit is None else min(limit, len(text))
    out: list[str] = []
    position = 0
    for start, end, entity, rule in _regions(findings, profile):
        if start >= stop:
            break
        counts[entity] += 1
        out.append(text[position:start])
        out.append(replacement(text[start:end], entity, rule, hash_key))
        position = end
    if position < stop:
        out.append(text[position:stop])
    return "".join(out)
