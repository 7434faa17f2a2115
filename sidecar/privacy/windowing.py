"""How the tuned analyzer scans a pattern recognizer, and the anchors of its families.

The anchors are characters every match of a family of recognizers must contain (an ``@``
for e-mail, a digit for national ids and cards, digit runs for phone numbers); where the
windows around them are cut, and why that is exact, is ``prefilter.py``'s business.

``Lean`` replaces presidio's per-pattern loop for plain pattern recognizers. Same rules
(score, ``validate_result`` lifts to 1.0 or drops, ``invalidate_result`` drops, then
presidio's de-duplication), two differences:

- matches may overlap. presidio's ``finditer`` resumes after each match, so a failed
  candidate hides a real one that shares its digits ("<id> 3400 1045 9581": the Aadhaar
  pattern first tries the id's last group with the next two, fails the checksum, and
  never sees the real number). Overlapped scanning finds it.
- no per-pattern timing, debug logging or explanation objects: a third of presidio's
  time on short texts.
- where a ``_`` glues a value with a digit to a name (``glued``), the text around it is
  read again with each ``_`` as a space: presidio's ``\\b`` sees "card_4111 1111 1111 1111",
  "nino_AB123456C" or "dob_1990-01-31" as one word and lets the value through. (Rewriting
  ``\\b`` as look-arounds that treat ``_`` as a boundary cost 2.8x the masking
  throughput: the regex engine loses its fast search for a pattern's start; reading a
  whole text twice whenever a ``_`` touches a digit, as in API keys and JWTs, cost 30%.)
  An e-mail address glued by ``_`` is the e-mail recognizer's business
  (``recognizers.OfflineEmailRecognizer``).

A pattern that runs past ``TIMEOUT_S`` on a text raises ``ScanTimeout``: skipping it, as
presidio does, would let every value of its entity in that text through unmasked (a
crafted token makes the e-mail pattern run for seconds). The masker then analyses the
batch's events one by one and drops the payload of the event that still times out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import regex  # type: ignore[import-untyped]  # presidio's regex engine
from presidio_analyzer import EntityRecognizer, PatternRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import IbanRecognizer

# A 32 KiB batch takes a pattern well under 10 ms; a text that takes this long is crafted.
TIMEOUT_S = 0.25


class ScanTimeout(RuntimeError):
    """A pattern did not finish within ``TIMEOUT_S``: the text cannot be vouched for."""


# Anchors: characters every match of a family contains (see ``prefilter``).
DIGITS = r"[0-9]+"
AT_SIGN = r"@"
# Written digit first, so the regex engine skips to digits (a third of the time of
# "(?:[0-9][ \t().\-/~\u30fc]{0,3}){6,}[0-9]", the same matches). "~" and the prolonged
# sound mark are dashes to phonenumbers (Japanese numbers: "03\u30fc1234\u30fc5678").
PHONE_DIGITS = r"[0-9](?:[ \t().\-/~\u30fc]{0,3}[0-9]){6,}"
PHONE_RADIUS = 16  # "+1 (" before the run, an extension after it
# Runs are searched from their first character only (the look-behind): one pass, not one
# attempt per character of every word.
ALNUM_16 = r"(?<![A-Za-z0-9])[A-Za-z0-9]{16,}"  # Italian fiscal codes: 16 letters/digits
# IPv4 has a dotted digit pair; IPv6 (even "::" or "fe80::") two colons around hex.
# One class first, then the branch it allows: the same matches as
# "[0-9]\.[0-9]|:[0-9A-Fa-f]*:" in half the time.
IP_CHARS = r"[0-9:](?:(?<=[0-9])\.[0-9]|(?<=:)[0-9A-Fa-f]*:)"
KEY_RUN = r"(?<![A-Za-z0-9_+/=.-])[A-Za-z0-9_+/=.-]{20,}"  # API keys: long key-char runs
RADIUS = 64  # window radius for a digit-anchored recognizer of unbounded match length


def plain(recognizer: EntityRecognizer) -> bool:
    """A pattern recognizer whose ``analyze`` is presidio's own (``Lean`` replicates it)."""
    return isinstance(recognizer, PatternRecognizer) and \
        not isinstance(recognizer, IbanRecognizer) and \
        type(recognizer).analyze is PatternRecognizer.analyze


# A "_" gluing a name to a value: the letters and digits on either side of it (up to the
# next character that is neither) hold a digit ("card_4111", "nino_AB123456C",
# "addr_fe80", "dob_1990-01-31", "customer_credit_card_number_4111..."). Each run of "_"
# is looked at once, its neighbours by anchored matches: a regex search for such
# segments would backtrack over every long word.
_SEGMENT_BACK = regex.compile(r"[A-Za-z0-9]*", flags=regex.REVERSE)
_SEGMENT = regex.compile(r"[A-Za-z0-9]*")
_UNDERSCORES = regex.compile(r"_+")
_DIGIT = regex.compile(r"[0-9]")
GLUED_RADIUS = 64  # past the longest value a "_" can hold on to (a card: 23 characters)


def glued(text: str) -> tuple[tuple[int, int], ...]:
    """Spans of ``text`` within ``GLUED_RADIUS`` of a ``_`` that glues a value, merged.
    Linear in ``text``; the caller keeps the result for as long as it keeps the text."""
    spans: list[tuple[int, int]] = []
    at = text.find("_")
    while at != -1:
        end = _UNDERSCORES.match(text, at).end()
        first = _SEGMENT_BACK.match(text, 0, at).start()
        last = _SEGMENT.match(text, end).end()
        if _DIGIT.search(text, first, at) or _DIGIT.search(text, end, last):
            start, stop = max(0, first - GLUED_RADIUS), min(len(text), last + GLUED_RADIUS)
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], stop)
            else:
                spans.append((start, stop))
        at = text.find("_", last)
    return tuple(spans)


class Lean:
    """presidio's pattern matching for one plain recognizer, overlapping matches, with
    everything that does not depend on the text worked out once."""

    def __init__(self, recognizer: PatternRecognizer) -> None:
        state: dict[str, Any] = vars(recognizer)  # presidio leaves these unannotated
        self.recognizer = recognizer
        self.entity: str = state["supported_entities"][0]
        self.identity = {RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
                         RecognizerResult.RECOGNIZER_NAME_KEY: state["name"]}
        flags: int = state["global_regex_flags"]
        self.patterns = [(regex.compile(p.regex, flags=flags), p.score)
                         for p in state["patterns"]]
        # Only a pattern bounded by \b can miss a value glued by "_" (see the docstring).
        self.bounded = any("\\b" in p.regex for p in state["patterns"])
        base = PatternRecognizer
        self.validates = type(recognizer).validate_result is not base.validate_result
        self.invalidates = type(recognizer).invalidate_result is not base.invalidate_result

    def scan(self, text: str,
             spans: Callable[[], tuple[tuple[int, int], ...]] | None = None,
             ) -> list[RecognizerResult]:
        """Matches in ``text``; ``spans`` gives ``glued(text)``, computed once for every
        recognizer that reads the same text (``prefilter.Digest.glued``)."""
        results = self._scan(text)
        if self.bounded and "_" in text:
            for start, end in (spans() if spans is not None else glued(text)):
                for found in self._scan(text[start:end].replace("_", " ")):
                    found.start, found.end = found.start + start, found.end + start
                    results.append(found)
        if len(results) < 2:
            return results
        deduplicated: list[RecognizerResult] = EntityRecognizer.remove_duplicates(results)
        return deduplicated

    def _scan(self, text: str) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        for compiled, base_score in self.patterns:
            try:
                matches = list(compiled.finditer(text, overlapped=True, timeout=TIMEOUT_S))
            except TimeoutError:
                raise ScanTimeout(f"{self.entity} pattern over {TIMEOUT_S:g} s") from None
            for match in matches:
                start, end = match.span()
                if start == end:
                    continue
                score = base_score
                if self.validates or self.invalidates:
                    value = text[start:end]
                    valid = self.recognizer.validate_result(value) if self.validates else None
                    score = base_score if valid is None else (1.0 if valid else 0.0)
                    if self.invalidates and self.recognizer.invalidate_result(value):
                        score = 0.0
                if score > 0.0:
                    results.append(RecognizerResult(self.entity, start, end, score,
                                                    recognition_metadata=dict(self.identity)))
        return results
