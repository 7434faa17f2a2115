"""The tuned analyzer's single pass: cut candidate windows once, scan each family once.

presidio's engine runs every recognizer over the whole text, and each recognizer runs
each of its patterns over it. On a 2 KB chat event that is ~30 regex scans of 2 KB plus
per-call orchestration; most of the text is prose no pattern can match. Here:

1. **Pre-filter.** One cheap stdlib-regex pass per *cut* (a family of recognizers that
   share an anchor: digits, ``@``, IP characters, long key-like runs ...) finds the
   candidate windows in the event's text. Text with no anchor costs that pass only.
2. **Digest.** The windows of a cut are joined (by ``SEPARATOR``) into one short string,
   the cut's *digest*, built once per event and shared by every recognizer of the family.
3. **Scan.** Each recognizer runs once over its family's digest: plain pattern recognizers
   with ``windowing.Lean`` (presidio's patterns, scores, ``validate_result`` and
   ``invalidate_result``: Luhn, mod 97, checksums, the e-mail domain check), the others
   (IBAN, phone) with their own ``analyze``. Results map back to the text's offsets.
4. **Merge** as presidio's engine does: drop scores below the threshold, then
   ``EntityRecognizer.remove_duplicates``. No context enhancement (the tuned analyzer has
   none), no NLP artifacts for pattern recognizers, no per-call registry lookups.

Two kinds of windows, both exact (a window finds exactly the matches the whole text has):

- ``Radius``: every match of the family contains an anchor character (a digit) and is at
  most ``width`` characters long (``max_width``, from the patterns themselves), so it lies
  inside ``[first anchor - width, last anchor + width]``. The window adds ``_MARGIN``
  characters each side, so a pattern's look-behind, look-ahead or ``\\b`` sees the real
  neighbours, and a match can never start or end at a window edge (it would have to be
  longer than ``width`` to reach an anchor).
- ``Token``: no pattern of the family can match white space (checked by ``no_space``), so
  a match lies inside one white-space-delimited token that holds an anchor; the window is
  that token, cut at ASCII white space, whose neighbours are white space in the digest too.

Recognizers whose patterns break these rules keep the whole text (``Whole``).
"""

from __future__ import annotations

import bisect
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from presidio_analyzer import EntityRecognizer, PatternRecognizer, RecognizerResult

from sidecar.privacy.windowing import Lean, plain
from sidecar.privacy.windowing import glued as glued_spans

SEPARATOR = "\n\x00\n"  # white space around a NUL: no pattern's class holds NUL
_MARGIN = 8  # look-around context kept each side of a radius window
_UNBOUNDED = 1 << 30
_SPACE = " \t\n\r"


class Cut(Protocol):
    """Where a family of recognizers can match in ``text``: sorted, disjoint spans."""

    key: str

    def windows(self, text: str) -> list[tuple[int, int]]: ...


class Whole:
    """The whole text: for recognizers with no anchor (cheap, literal-prefixed patterns)."""

    key = "whole"

    def windows(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))] if text else []


class Radius:
    """Windows of ``radius`` characters around runs of anchor characters, merged when
    they touch (see the module). Remembers the runs of the last text it saw: the cuts of
    one anchor with several radii share one pass."""

    _runs: ClassVar[dict[str, tuple[str, list[tuple[int, int]]]]] = {}

    def __init__(self, anchor: str, radius: int, name: str) -> None:
        self.radius = radius
        self.key = f"{name}:{radius}"
        self._anchor = re.compile(anchor)
        self._source = anchor

    def windows(self, text: str) -> list[tuple[int, int]]:
        last = Radius._runs.get(self._source)
        if last is not None and last[0] is text:
            runs = last[1]
        else:
            runs = [m.span() for m in self._anchor.finditer(text)]
            Radius._runs[self._source] = (text, runs)  # one assignment: thread-safe
        r, n = self.radius, len(text)
        spans: list[tuple[int, int]] = []
        for start, end in runs:
            start, end = max(0, start - r), min(n, end + r)
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        return spans


class Token:
    """The white-space-delimited tokens that hold an anchor (see the module).

    ``shortest``: when every anchor match is at least this long and holds no white space
    of any kind (``str.split``'s), it lies inside one ``str.split`` piece that long; only
    those pieces are searched. Prose has few: one C-speed split instead of a regex
    attempt at every letter."""

    _pieces: ClassVar[dict[int, tuple[str, list[tuple[int, int]]]]] = {}

    def __init__(self, anchor: str, name: str, shortest: int = 1) -> None:
        self.key = name
        self._anchor = re.compile(anchor)
        self._shortest = shortest

    def windows(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        n = len(text)
        for region_start, region_end in self._regions(text):
            position = region_start
            while True:
                match = self._anchor.search(text, position, region_end)
                if match is None:
                    break
                start = max(text.rfind(c, 0, match.start()) for c in _SPACE) + 1
                end = n
                for c in _SPACE:
                    found = text.find(c, match.end())
                    if 0 <= found < end:
                        end = found
                if spans and start <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
                else:
                    spans.append((start, end))
                position = max(end, match.end(), position + 1)
        return spans

    def _regions(self, text: str) -> list[tuple[int, int]]:
        if self._shortest <= 1:
            return [(0, len(text))]
        seen = Token._pieces.get(self._shortest)
        if seen is not None and seen[0] is text:
            return seen[1]
        regions: list[tuple[int, int]] = []
        position = 0
        shortest = self._shortest
        for piece in [p for p in text.split() if len(p) >= shortest]:
            # Found where it is: between ``position`` and it lie only shorter pieces and
            # white space, which cannot hold it.
            start = text.find(piece, position)
            position = start + len(piece)
            regions.append((start, position))
        Token._pieces[self._shortest] = (text, regions)  # one assignment: thread-safe
        return regions


@dataclass(slots=True)
class Digest:
    """A cut's windows of one text joined into one string, and the way back."""

    text: str
    at: list[int]  # where each window starts in ``text``
    origin: list[int]  # where each window starts in the analysed text
    _glued: tuple[tuple[int, int], ...] | None = None

    def glued(self) -> tuple[tuple[int, int], ...]:
        """``windowing.glued(text)``, once for all the recognizers of the family."""
        if self._glued is None:
            self._glued = glued_spans(self.text)
        return self._glued

    @classmethod
    def build(cls, text: str, spans: list[tuple[int, int]]) -> Digest:
        if len(spans) == 1:
            start, end = spans[0]
            return cls(text[start:end] if (start, end) != (0, len(text)) else text,
                       [0], [start])
        at: list[int] = []
        position = 0
        for start, end in spans:
            at.append(position)
            position += end - start + len(SEPARATOR)
        return cls(SEPARATOR.join(text[s:e] for s, e in spans), at, [s for s, _ in spans])

    def place(self, result: RecognizerResult) -> None:
        """Move ``result`` (found in ``text``) to the analysed text's offsets. No match
        crosses a separator (see the module), so the window it starts in holds it."""
        index = 0 if len(self.at) == 1 else bisect.bisect_right(self.at, result.start) - 1
        shift = self.origin[index] - self.at[index]
        result.start += shift
        result.end += shift


class Scanner:
    """Runs recognizers, each over its cut's digest of a text; see the module."""

    def __init__(self) -> None:
        self._entries: list[tuple[Cut, Lean | None, EntityRecognizer]] = []
        self._plans: dict[frozenset[str], list[tuple[Cut, Lean | None, EntityRecognizer]]] = {}

    def add(self, recognizer: EntityRecognizer, cut: Cut) -> None:
        lean = Lean(recognizer) if isinstance(recognizer, PatternRecognizer) and \
            plain(recognizer) else None
        self._entries.append((cut, lean, recognizer))
        self._plans = {}

    @property
    def recognizers(self) -> list[EntityRecognizer]:
        return [r for _, _, r in self._entries]

    def cuts(self) -> dict[str, list[str]]:
        """Recognizer names per cut: what runs where (for tests and the docs)."""
        out: dict[str, list[str]] = {}
        for cut, _, recognizer in self._entries:
            out.setdefault(cut.key, []).append(str(vars(recognizer)["name"]))
        return out

    def scan(self, text: str, entities: Sequence[str]) -> list[RecognizerResult]:
        """Every recognizer's results on ``text``, at its offsets (not yet filtered)."""
        wanted = frozenset(entities)
        plan = self._plans.get(wanted)
        if plan is None:  # the recognizers of the wanted entities, in the order added
            plan = [e for e in self._entries if wanted.intersection(e[2].supported_entities)]
            self._plans[wanted] = plan  # one assignment: safe to share across threads
        digests: dict[str, Digest | None] = {}
        results: list[RecognizerResult] = []
        names = sorted(wanted)
        for cut, lean, recognizer in plan:
            key = cut.key
            if key in digests:
                digest = digests[key]
            else:
                spans = cut.windows(text)
                digest = digests[key] = Digest.build(text, spans) if spans else None
            if digest is None:
                continue
            found: list[RecognizerResult] = lean.scan(digest.text, digest.glued) \
                if lean is not None \
                else recognizer.analyze(digest.text, names, None)  # type: ignore[arg-type]
            for result in found:
                if result.entity_type in wanted:
                    digest.place(result)
                    results.append(result)
        return results


def max_width(recognizer: EntityRecognizer) -> int:
    """The longest match any of ``recognizer``'s patterns can make (``_UNBOUNDED`` when
    a pattern is unbounded or not parsable by the stdlib's parser)."""
    if not isinstance(recognizer, PatternRecognizer):
        return _UNBOUNDED
    state: dict[str, Any] = vars(recognizer)
    widest = 0
    for pattern in state["patterns"]:
        try:
            width = _parse(pattern.regex, state["global_regex_flags"]).getwidth()[1]
        except (re.error, OverflowError, TypeError, ValueError):
            return _UNBOUNDED
        widest = max(widest, width)
    return widest if widest < _UNBOUNDED else _UNBOUNDED


def _parse(pattern: str, flags: int) -> Any:
    parser: Any = importlib.import_module("re._parser")  # private, stable since 3.11
    return parser.parse(pattern, flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL))


_CLASS = re.compile(r"\[(?!\^)(?:\\.|[^\]\\])*\]")
_ESCAPE = re.compile(r"\\.")


def no_space(recognizer: EntityRecognizer) -> bool:
    """True when no pattern of ``recognizer`` can match white space: only positive
    classes, escapes that exclude it (``\\w``, ``\\d``, ``\\.`` ...), literals; no
    ``\\s``/``\\S``/``\\W``/``\\D``, no negated class, no ``.``, no literal space."""
    if not isinstance(recognizer, PatternRecognizer):
        return False
    state: dict[str, Any] = vars(recognizer)
    for pattern in state["patterns"]:
        source: str = pattern.regex
        if re.search(r"\\[sSWDnrtfvxpPN0-9]|\[\^|\s", source):
            return False
        rest = _ESCAPE.sub("", _CLASS.sub("", source))
        if "." in rest.replace("(?", "") or "\\" in rest:
            return False
    return True
