"""``fold`` (sidecar/privacy/fold.py): one code point for one, and never a character a
pattern matched turned into one it does not match."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from sidecar.privacy import fold as fold_module
from sidecar.privacy.fold import fold, to_text, view

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


# ``view``: what the tuned recognizers read.
INVISIBLES = "\u200b\u200c\u200d\u2060\ufeff"
VIEWED = st.lists(st.sampled_from([
    "a", "1", " ", "@", ".", "\u00e9", "\uff15", "\u30fc", "\u4f8b", "\uac00", "\u0e01",
    "\U00020001", "%40", "%4", *INVISIBLES])).map("".join)


@given(VIEWED)
def test_the_view_maps_every_character_back_to_the_one_it_stands_for(text: str) -> None:
    seen, where = view(text)
    if where is None:
        assert len(seen) == len(text)
        where = [*range(len(text)), len(text)]
    assert len(where) == len(seen) + 1 and where == sorted(set(where))
    assert where[-1] == len(text)
    folded = fold(text)
    for i, at in enumerate(where[:-1]):
        stood_for = folded[at:where[i + 1]]
        assert seen[i] == stood_for[0] or seen[i] == " " or (seen[i], stood_for[:3]) == (
            "@", "%40")  # a glued letter reads as a space
        assert all(char in INVISIBLES for char in stood_for[1 if seen[i] != "@" else 3:])
    assert all(char in INVISIBLES for char in text[:where[0]])
    if seen:
        assert to_text(where, 0, len(seen)) == (where[0], len(text))


def test_invisible_characters_are_taken_out_of_values() -> None:
    text = "mail jane\u200b@exam\u2060ple.org, key sk-\ufeffabc"
    seen, where = view(text)
    assert seen == "mail jane@example.org, key sk-abc"
    assert where is not None
    start = seen.index("jane")
    assert text[slice(*to_text(where, start, start + len("jane@example.org")))] == \
        "jane\u200b@exam\u2060ple.org"
    seen, where = view("go to x.example/cb?email=carol%40example.com now")
    assert where is not None and seen == "go to x.example/cb?email=carol@example.com now"
    start = seen.index("carol")
    assert "go to x.example/cb?email=carol%40example.com now"[
        slice(*to_text(where, start, start + len("carol@example.com")))] == "carol%40example.com"


def test_letters_of_unspaced_scripts_next_to_ascii_read_as_spaces() -> None:
    assert view("メールはjane@example.comです")[0] == "メール jane@example.com す"
    assert view("電話は090-1234-5678です")[0] == "電話 090-1234-5678 す"
    assert view("jane@example.com으로")[0] == "jane@example.com 로"
    assert view("อีเมลjane@example.comครับ")[0] == "อีเม jane@example.com รับ"
    # not inside a domain written in such a script, nor between two of its letters
    assert view("to jane@例え.jp now")[0] == "to jane@例え.jp now"
    assert view("03ー1234ー5678")[0] == "03ー1234ー5678"  # the sound mark, for a dash
