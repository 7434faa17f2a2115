"""Homoglyph folding: the Latin skeleton a signature rule is also matched against.

``normalise`` (``detectors.text``) leaves "ignоre all previous instructions" with a
Cyrillic ``о`` as a different word from "ignore", so a copy-pasted attack with a few
letters swapped for look-alikes would pass every rule. ``fold`` maps each letter that
Unicode's confusables data (UTS #39, from the ``confusable-homoglyphs`` package) lists as
confusable with an ASCII letter (alone, or with a mark: η is "n̩", ł "l̸") to that
letter, a letter with marks to its ASCII base ("ïgnore"), and drops every combining mark.
It runs before case folding, each letter read as its own case looks: a Greek capital
``Ν`` is N, a small ``ν`` is v, in the same text. ``detectors.text.skeleton`` normalises
the result; ``SignatureSet.scan`` matches the rules against the normalised text and its
skeleton, so a rule written in another script still matches its own script.

>>> fold("ignоre аll prеvious instructiоns")  # Cyrillic о, а, е
'ignore all previous instructions'
>>> fold("ïgnore ΡREVΙOUS iηstructiøns")  # marks; Greek capitals rho and iota; η, ø
'ignore PREVIOUS instructions'
>>> fold("IGΝORE ALL preνious")  # a capital and a small nu in one text
'IGNORE ALL previous'
>>> fold("привет мир")  # other text stays other text: it only grows look-alikes
'пpиBeT Mиp'
>>> fold("quoted text"), fold("日本語")  # nothing to fold
(None, None)
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

Table = list[int | str | None]  # str.translate: code point -> code point, text or None

# The table covers the Basic Multilingual Plane: every script an attacker's look-alikes
# come from (NFKC already turned the astral mathematical letters into ASCII). Astral
# combining marks are removed by a pattern, only from text that holds astral characters.
PLANE = 0x10000
_MARK_CATEGORIES = ("Mn", "Mc", "Me")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_ASCII_LETTER = re.compile("[A-Za-z]")


def _ascii_letter(glyph: str) -> str | None:
    """The ASCII letter a look-alike is written as: alone, or followed by marks only."""
    if glyph[:1].isascii() and glyph[:1].isalpha() and all(
            unicodedata.category(c) == "Mn" for c in glyph[1:]):
        return glyph[0]
    return None


def _lookalikes() -> dict[str, str]:
    """Each letter Unicode lists as confusable with an ASCII letter, and that letter, in
    the case the letter looks (a small letter's look-alike is small, a capital's capital)."""
    from confusable_homoglyphs import confusables  # type: ignore[import-untyped]

    out = {}
    for char, glyphs in confusables.confusables_data.items():
        if len(char) != 1 or char.isascii() or not unicodedata.category(char).startswith("L"):
            continue
        letters = [c for c in map(_ascii_letter, (g["c"] for g in glyphs)) if c is not None]
        if not letters:
            continue
        same = [c for c in letters if c.islower() == char.islower()]
        target = (same or letters)[0]
        # UTS #39 gives "l" as the skeleton of I: a capital that looks like it is an I.
        if target == "l" and char.isupper():
            target = "I"
        out[char] = target
    return out


def _base(char: str) -> str | None:
    """The ASCII letter under a letter with marks (é -> e), else None."""
    decomposed = unicodedata.normalize("NFKD", char)
    if len(decomposed) > 1 and decomposed[0].isascii() and decomposed[0].isalpha() \
            and all(unicodedata.category(c) == "Mn" for c in decomposed[1:]):
        return decomposed[0]
    return None


@lru_cache(maxsize=1)
def _table() -> tuple[Table, re.Pattern[str], re.Pattern[str]]:
    """The ``str.translate`` table (look-alike letters to ASCII, marks to nothing), a
    pattern of the letters it makes ASCII, and one of the astral marks.

    A list indexed by code point, identity where nothing changes: a dict would raise and
    clear a KeyError for every character it does not hold, doubling the cost. Built once
    per process (about 0.3 s), when the first rule set is parsed
    (``detectors.text.parse_signatures``): at start-up, not on a request.
    """
    looks = _lookalikes()
    table: Table = list(range(PLANE))
    changed = set()
    for code in range(128, PLANE):
        char = chr(code)
        category = unicodedata.category(char)
        target: str | None = None
        if category in _MARK_CATEGORIES:
            table[code] = None
            continue
        if category.startswith("L"):
            target = looks.get(char) or _base(char)
            upper = char.upper()
            if target is None and char.islower() and len(upper) == 1:
                # no look-alike of its own (Cyrillic т, к, м; Greek ε, τ): its capital's,
                # as attacks use them ("instrucтions", "jailbreaк")
                target = looks.get(upper)
        if target is not None:
            table[code] = target
            changed.add(char)
    astral = [code for code in range(PLANE, sys.maxunicode + 1)
              if unicodedata.category(chr(code)) in _MARK_CATEGORIES]
    return table, _class(sorted(map(ord, changed))), _class(astral)


def _class(codes: list[int]) -> re.Pattern[str]:
    """A character class of ``codes`` (sorted), as ranges. All in the BMP, re tests a
    character against it with one bitmap lookup: a search is as fast as str.find."""
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges) + "]+")


@lru_cache(maxsize=1)
def marks() -> re.Pattern[str]:
    """The combining marks (Mn, Me) of the Basic Multilingual Plane, which ``normalise``
    removes from every text: NFKC left them because no letter composes with them, and as
    non-word characters they would split a word in two. (With the astral ones, re would
    match a list of ranges one by one: about 4x slower over non-ASCII text.)"""
    cat = unicodedata.category
    return _class([code for code in range(128, PLANE) if cat(chr(code)) in ("Mn", "Me")])


def warm() -> None:
    """Build the tables now (start-up), not when the first prompt needs them."""
    _table()
    marks()


def fold(text: str) -> str | None:
    """``text`` (NFKC applied, case not folded yet) with look-alike letters as ASCII
    letters and every combining mark dropped; None when nothing in it would change."""
    if text.isascii():
        return None
    table, to_ascii, astral_marks = _table()
    # Only text with a letter that is or becomes ASCII can come out as a rule's words:
    # Hindi or Japanese text, marks and all, has no skeleton to match.
    if to_ascii.search(text) is None and _ASCII_LETTER.search(text) is None:
        return None
    folded = text.translate(table)
    if _ASTRAL.search(folded):
        folded = astral_marks.sub("", folded)
    return None if folded == text else folded
