"""Where recognizers run, and how their patterns are scanned: the tuned analyzer's fast path.

``Windowed`` runs a recognizer only on windows around the characters its matches must
contain (an ``@`` for e-mail, a digit for national ids and cards, digit runs for phone
numbers). A match is at most ``radius`` long, so it lies inside the window around any of
its anchor characters, and a window's edge only ever looks like a word boundary:
windowing can add a false positive at an edge, never lose a match. On prose with a few
numbers most of the text is skipped; on text without anchors the recognizer does not run.

``Lean`` replaces presidio's per-pattern loop for plain pattern recognizers. Same rules
(score, ``validate_result`` lifts to 1.0 or drops, ``invalidate_result`` drops, then
presidio's de-duplication), two differences:

- matches may overlap. presidio's ``finditer`` resumes after each match, so a failed
  candidate hides a real one that shares its digits ("<id> 3400 1045 9581": the Aadhaar
  pattern first tries the id's last group with the next two, fails the checksum, and
  never sees the real number). Overlapped scanning finds it.
- no per-pattern timing, debug logging or explanation objects: a third of presidio's
  time on short texts.
"""

from __future__ import annotations

import re
from typing import Any

import regex  # type: ignore[import-untyped]  # presidio's regex engine
from presidio_analyzer import EntityRecognizer, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import IbanRecognizer

_TIMEOUT_S = 5.0  # a pathological input costs one pattern this long, then is skipped


class Anchor:
    """Where a family of recognizers can match: windows of ``radius`` around each run of
    anchor characters, merged when they touch. Remembers the last text it cut, since
    several recognizers share one anchor and see the same text in turn."""

    def __init__(self, pattern: str, radius: int) -> None:
        self._pattern = re.compile(pattern)
        self.radius = radius
        self._last: tuple[str, list[tuple[int, int]]] = ("", [])

    def windows(self, text: str) -> list[tuple[int, int]]:
        last_text, last_windows = self._last
        if last_text is text:
            return last_windows
        spans: list[tuple[int, int]] = []
        for match in self._pattern.finditer(text):
            start, end = max(0, match.start() - self.radius), match.end() + self.radius
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        self._last = (text, spans)  # one assignment: safe to share across threads
        return spans


DIGITS = Anchor(r"[0-9]+", radius=64)
AT_SIGN = Anchor(r"@", radius=256)
PHONE_DIGITS = Anchor(r"(?:[0-9][ \t().\-/]{0,3}){6,}[0-9]", radius=16)
ALNUM_16 = Anchor(r"[A-Za-z0-9]{16,}", radius=0)  # Italian fiscal codes: 16 letters/digits
# IPv4 has a dotted digit pair; IPv6 (even "::" or "fe80::") two colons around hex.
IP_CHARS = Anchor(r"[0-9]\.[0-9]|[0-9A-Fa-f]*:[0-9A-Fa-f]*:", radius=48)
KEY_RUN = Anchor(r"[A-Za-z0-9_+/=.-]{20,}", radius=8)  # API keys: long runs of key chars


def _plain(recognizer: EntityRecognizer) -> bool:
    """A pattern recognizer whose ``analyze`` is presidio's own (``Lean`` replicates it)."""
    return isinstance(recognizer, PatternRecognizer) and \
        not isinstance(recognizer, IbanRecognizer) and \
        type(recognizer).analyze is PatternRecognizer.analyze


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
        base = PatternRecognizer
        self.validates = type(recognizer).validate_result is not base.validate_result
        self.invalidates = type(recognizer).invalidate_result is not base.invalidate_result

    def scan(self, text: str) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        for compiled, base_score in self.patterns:
            try:
                matches = list(compiled.finditer(text, overlapped=True, timeout=_TIMEOUT_S))
            except TimeoutError:
                continue
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
        if len(results) < 2:
            return results
        deduplicated: list[RecognizerResult] = EntityRecognizer.remove_duplicates(results)
        return deduplicated


class Windowed(EntityRecognizer):
    """Runs ``inner`` on its anchor's windows only (the whole text when ``anchor`` is
    None), with ``scan`` when it is a plain pattern recognizer; shifts results back."""

    def __init__(self, inner: EntityRecognizer, anchor: Anchor | None) -> None:
        self.inner = inner
        self.anchor = anchor
        self.label = f"Windowed{type(inner).__name__}"
        self._lean = Lean(inner) if isinstance(inner, PatternRecognizer) and _plain(inner) \
            else None
        super().__init__(supported_entities=list(inner.supported_entities), name=self.label,
                         supported_language=inner.supported_language,
                         context=list(inner.context or []))

    def load(self) -> None:
        """Nothing to load: ``inner`` was loaded when it was built."""

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        windows = [(0, len(text))] if self.anchor is None else self.anchor.windows(text)
        for start, end in windows:
            window = text[start:end]
            if self._lean is not None:
                found = self._lean.scan(window)
            else:
                found = self.inner.analyze(window, entities, nlp_artifacts)  # type: ignore[arg-type]
            results.extend(self._shifted(f, start) for f in found)
        return results

    def _shifted(self, found: RecognizerResult, offset: int) -> RecognizerResult:
        # The engine keeps only results whose recognizer id is one it ran: claim them.
        metadata: dict[str, Any] = dict(found.recognition_metadata or {})
        metadata[RecognizerResult.RECOGNIZER_IDENTIFIER_KEY] = self.id
        metadata[RecognizerResult.RECOGNIZER_NAME_KEY] = self.label
        return RecognizerResult(entity_type=found.entity_type, start=found.start + offset,
                                end=found.end + offset, score=found.score,
                                recognition_metadata=metadata)
