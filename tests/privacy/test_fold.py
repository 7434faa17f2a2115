"""``fold`` (sidecar/privacy/fold.py): one code point for one, and never a character a
pattern matched turned into one it does not match."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from sidecar.privacy import fold as fold_module
from sidecar.privacy.fold import fold

WORD, DIGIT, SPACE = re.compile(r"\w"), re.compile(r"\d"), re.compile(r"\s")


@given(st.text())
def test_folding_keeps_the_length_so_offsets_hold(text: str) -> None:
    folded = fold(text)
    assert len(folded) == len(text)
    assert all(a == b or a in TABLE_CHARS for a, b in zip(text, folded, strict=True))


TABLE_CHARS = frozenset(map(chr, fold_module._table()))


# Foldable characters of both planes, emoji, accents and ASCII, in any order: the fast
# checks in ``fold`` must never skip a text the table would change.
MIXED = st.text(st.sampled_from(["a", "1", " ", "-", "\u00e9", "\u00a0", "\u2011", "\uff15",
                                 "\u0663", "\U0001d7cf", "\U0001f600", "\U00010000", "\u30fc"]))


@given(MIXED)
def test_folding_is_the_table_applied(text: str) -> None:
    assert fold(text) == text.translate(fold_module._table())


def test_every_folded_character_stays_in_the_classes_patterns_use() -> None:
    # \b and \w decide where presidio's patterns start and end: a character that was not
    # part of a word must not become one (nor the reverse), or a match presidio makes on
    # the raw text would be lost on the folded one.
    changed = []
    for code, ascii_form in fold_module._table().items():
        char = chr(code)
        assert ascii_form.isascii() and len(ascii_form) == 1, hex(code)
        if bool(WORD.match(char)) != bool(WORD.match(ascii_form)) or \
                bool(DIGIT.match(char)) != bool(DIGIT.match(ascii_form)) or \
                (SPACE.match(char) and not SPACE.match(ascii_form)):
            changed.append(hex(code))
    assert changed == []


def test_digits_of_every_script_become_their_ascii_value() -> None:
    assert fold("\u0661\u0662\u0663") == "123"  # Arabic-Indic
    assert fold("\u0967\u0968\u0969") == "123"  # Devanagari
    assert fold("\uff11\uff12\uff13") == "123"  # full-width
    assert fold("\U0001d7cf\U0001d7d0") == "12"  # mathematical bold, outside the BMP
    assert fold("\U0001f600 \U0001d7cf") == "\U0001f600 1"  # after an emoji, which stays
    assert fold("\U0001f600 \uff11") == "\U0001f600 1"


def test_separators_in_numbers_become_ascii() -> None:
    assert fold("01\u00a023\u202f45\u200967") == "01 23 45 67"
    assert fold("020\u20107946\u20110958\u2212") == "020-7946-0958-"
    assert fold("\uff08\uff10\uff13\uff09\uff0d\uff11\u223c2") == "(03)-1~2"


def test_text_with_nothing_to_fold_is_returned_itself() -> None:
    text = "Grüße aus Köln, naïve café"
    assert fold(text) is text
