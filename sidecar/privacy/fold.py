"""``fold``: the text the tuned recognizers read — every Unicode digit, space, dash and
full-width form as its ASCII counterpart, one character for one.

presidio's own recognizers read the raw text, and some of them already see through these
forms: ``\\d`` in a pattern matches Arabic-Indic and full-width digits, and the phone
recognizer (``phonenumbers``) accepts digits of every script and separators such as the
no-break space French writes phone numbers with (``01 23 45 67 89``), the Unicode
hyphens and the full-width brackets. The tuned recognizers find candidates with ASCII
anchors (``windowing.py``), so on the raw text they missed all of those numbers. They
read the folded text instead.

One code point becomes one code point, so a finding's offsets in the folded text are its
offsets in the original, which is what gets masked. Folding only ever turns a character
into one that every class and boundary that matched it still matches (a digit into a
digit, a space into a space, punctuation into punctuation), so nothing presidio finds in
the raw text is lost; some numbers presidio misses (a card number in full-width digits)
are found as well.

>>> fold("+\\uff14\\uff14 \\uff12\\uff10 \\u0667\\u0669\\u0664\\u0666")  # full-width, Arabic-Indic
'+44 20 7946'
>>> fold("01\\u00a023\\u00a045\\u00a067\\u00a089") == "01 23 45 67 89"
True
>>> fold("plain ASCII is returned as it is")
'plain ASCII is returned as it is'

``view`` is what the tuned recognizers actually read: the folded text, then two changes a
pattern's boundaries need, whose offsets it maps back:

- invisible format characters (zero-width space, joiners, word joiner, byte order mark)
  are taken out: inside an address or a key they split it for every pattern
  ("jane\\u200b@example.org"), and folded to a space they did the same; a percent-encoded
  "@" is read as one (``carol%40example.com``);
- a letter of a script written without spaces between words (Han, kana, Hangul, Thai ...)
  next to an ASCII letter or digit reads as a space: "メールはjane@example.comです" is one
  run of ``\\w`` to every pattern, and the address, the phone or card number inside it
  went through. Only at that junction: an address whose domain is written in such a
  script ("jane@例え.jp") stays as it is.

>>> text, where = view("mail jane\u200b@example.orgです")
>>> text, where[text.index("@")] == text.index("@") + 1
('mail jane@example.org す', True)
>>> view("cb?email=carol%40example.com")[0]
'cb?email=carol@example.com'
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Final

# Format characters with no width, which a writer (or an attacker) can put inside a value.
_INVISIBLE: Final = re.compile("[\u180e\u200b\u200c\u200d\u2060-\u2064\ufeff]")
# Letters of scripts written without spaces between words (and Korean, whose particles
# attach to the word before them): Thai, Lao, Myanmar, Hangul jamo, Khmer, kana,
# bopomofo, Hangul compatibility jamo, Han (extension A, unified, compatibility), Hangul
# syllables, half-width kana and Hangul, and Han past the basic plane.
# Not the prolonged sound mark (nor its half-width form): next to ASCII it stands for a
# dash ("03ー1234ー5678", "johnーokafor@example.io"), which the patterns read as it is.
_NO_SPACE: Final = ("\u0e01-\u0e4f\u0e5a\u0e5b\u0e81-\u0ecf\u0edc-\u0edf\u1000-\u103f"
                    "\u1050-\u108f\u1100-\u11ff\u1780-\u17df\u3041-\u30fb\u30fd-\u30ff"
                    "\u3105-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3"
                    "\uf900-\ufaff\uff66-\uff6f\uff71-\uffdc\U00020000-\U0003134f")
# Taken out of the view: the invisible characters, and a percent-encoded "@" read as one
# ("carol%40example.com" in a redirect URL a prompt quotes).
_TAKEN: Final = re.compile("%40|" + _INVISIBLE.pattern)
_GLUED: Final = re.compile(f"(?<=[A-Za-z0-9])[{_NO_SPACE}]|[{_NO_SPACE}](?=[A-Za-z0-9])")

# Past U+1FBF9 (segmented digits, Unicode 13) no character is a decimal digit.
_DIGITS_END: Final = 0x1FC00
# White space written inside numbers: no-break, figure, narrow no-break, ideographic and
# the typographic spaces. (The zero-width ones are taken out: ``view``.)
_SPACES: Final = "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
                 "\u200a\u202f\u205f\u3000"
# Dashes phonenumbers takes as separators: soft hyphen, the hyphens and dashes, minus. Not
# the prolonged sound mark "\u30fc" Japanese numbers are written with: it is a letter to
# ``\\w``; the phone anchor accepts it as it is (windowing.py).
_DASHES: Final = "\u00ad\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_TILDES: Final = "\u2053\u223c"  # swung dash, tilde operator
# Full-width forms of ASCII "!" to "~", but the low line: "_" is part of a word to ``\\w``,
# its full-width form is not.
_FULLWIDTH: Final = [code for code in range(0xFF01, 0xFF5F) if code != 0xFF3F]


@functools.cache
def _table() -> dict[int, str]:
    """Built on first use (about 20 ms): most processes never read non-ASCII text."""
    every = "".join(map(chr, range(0x80, _DIGITS_END)))
    table = {ord(digit): str(unicodedata.decimal(digit)) for digit in re.findall(r"\d", every)}
    table.update((ord(space), " ") for space in _SPACES)
    table.update((ord(dash), "-") for dash in _DASHES)
    table.update((ord(tilde), "~") for tilde in _TILDES)
    table.update((code, chr(code - 0xFF01 + 0x21)) for code in _FULLWIDTH)
    return table


@functools.cache
def _foldable() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """Classes, by ranges: the table's basic-plane characters and any character past it
    (the first test: one class within the basic plane and one range past it is as fast
    as the basic class alone); then the table's basic-plane and past-plane characters.
    One class of single characters, or of the table's ranges in both planes, searched ten
    to eighty times slower: the regex engine's fast lookup is for the basic plane."""
    ranges: list[list[int]] = []
    for code in sorted(_table()):
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])

    def spans(within: list[list[int]]) -> str:
        return "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in within)
    basic = spans([r for r in ranges if r[1] <= 0xFFFF])
    astral = spans([r for r in ranges if r[1] > 0xFFFF])
    return (re.compile(f"[{basic}\\U00010000-\\U0010ffff]"), re.compile(f"[{basic}]"),
            re.compile(f"[{astral}]"))


def fold(text: str) -> str:
    """``text`` with every character of the table in its ASCII form (same length)."""
    if text.isascii():
        return text
    maybe, basic, astral = _foldable()
    found = maybe.search(text)
    if found is not None and found.group() > "\uffff" and astral.match(found.group()) is None:
        # A character past the basic plane that does not fold (an emoji): search for
        # each kind that does on its own.
        found = basic.search(text, found.end()) or astral.search(text, found.end())
    return text if found is None else text.translate(_table())


def view(text: str) -> tuple[str, list[int] | None]:
    """The text the tuned recognizers read (see above), and where each of its characters
    starts in ``text``, plus ``len(text)`` at the end (``None``: the same offsets)."""
    folded = fold(text)
    ascii_only = folded.isascii()
    if ascii_only and "%40" not in folded:
        return folded, None
    where: list[int] | None = None
    if "%40" in folded or (not ascii_only and _INVISIBLE.search(folded)):
        pieces: list[str] = []
        where = []
        at = 0
        for taken in _TAKEN.finditer(folded):
            pieces.append(folded[at:taken.start()])
            where.extend(range(at, taken.start()))
            if taken.group() == "%40":
                pieces.append("@")
                where.append(taken.start())
            at = taken.end()
        pieces.append(folded[at:])
        where.extend(range(at, len(folded)))
        where.append(len(folded))
        folded = "".join(pieces)
    return (folded if ascii_only else _GLUED.sub(" ", folded)), where


def to_text(where: list[int], start: int, end: int) -> tuple[int, int]:
    """A span of the view as a span of the text it was made from, what was taken out
    within it (and right after it) included."""
    return where[start], where[end]
