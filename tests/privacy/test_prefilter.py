"""The tuned scanner's windows are exact: the same results as scanning the whole text."""

from __future__ import annotations

from corpus import build_corpus
from presidio_analyzer import RecognizerResult

from sidecar.privacy.analyzer import Analyzer
from sidecar.privacy.prefilter import Digest, Token, Whole, no_space
from sidecar.privacy.profile import PrivacyProfile


def _whole_text(analyzer: Analyzer, text: str, entities: list[str]) -> set[tuple[str, int, int]]:
    assert analyzer.scanner is not None
    found = set()
    for _cut, lean, recognizer in analyzer.scanner._entries:
        results = lean.scan(text) if lean is not None else recognizer.analyze(text, entities, None)
        found |= {(r.entity_type, r.start, r.end) for r in results if r.score > 0}
    return found


def test_windows_find_exactly_what_the_whole_text_holds(analyzer: Analyzer,
                                                        strict: PrivacyProfile) -> None:
    assert analyzer.scanner is not None
    entities = sorted(analyzer.entities & set(strict.entities))
    for sample in build_corpus(200, seed=23):
        for body in (sample.captured.request_body, sample.captured.response_body):
            text = (body or b"").decode()
            windowed = {(r.entity_type, r.start, r.end) for r in
                        analyzer.scanner.scan(text, entities) if r.score > 0}
            assert windowed == _whole_text(analyzer, text, entities)


def test_every_family_is_cut_and_only_anchorless_ones_see_the_whole_text(
        analyzer: Analyzer) -> None:
    assert analyzer.scanner is not None
    cuts = analyzer.scanner.cuts()
    assert set(cuts["whole"]) == {"AwsAccessKeyRecognizer", "JwtRecognizer",
                                  "BearerTokenRecognizer"}
    assert "OfflineEmailRecognizer" in cuts["at"] and "IpRecognizer" in cuts["ip"]
    for cut, _, recognizer in analyzer.scanner._entries:
        if isinstance(cut, Token):
            assert no_space(recognizer)


def test_token_windows_stop_at_white_space_and_map_back() -> None:
    text = "mail a@b.example or\tc@d.example\nend"
    spans = Token("@", "at").windows(text)
    assert [text[s:e] for s, e in spans] == ["a@b.example", "c@d.example"]
    digest = Digest.build(text, spans)
    assert Whole().windows("") == []
    second = digest.text.index("c@")
    result = RecognizerResult("EMAIL_ADDRESS", second, second + 11, 1.0)
    digest.place(result)
    assert text[result.start:result.end] == "c@d.example"


WHITE = [chr(c) for c in range(0x3000 + 1) if chr(c).isspace()]


def test_long_anchor_tokens_are_found_from_the_split_pieces_alone() -> None:
    from random import Random

    from sidecar.privacy import windowing
    from sidecar.privacy.prefilter import _parse
    rng = Random(5)
    alphabet = "aZ9_+/=.-@:" + "".join(WHITE) + "é"
    for anchor, shortest in ((windowing.ALNUM_16, 16), (windowing.KEY_RUN, 20)):
        assert _parse(anchor, 0).getwidth()[0] >= shortest
        for white in WHITE:  # no match holds white space of any kind
            padded = "x" * 40 + white + "y" * 40
            assert all(white not in m.group() for m in Token(anchor, "t")._anchor.finditer(padded))
        pool = ["A" * 25, "b9" * 12, "x@" + "k" * 30, "short", "A" * 25 + "é" + "c" * 20]
        for _ in range(3000):
            text = "".join(rng.choice(alphabet) if rng.random() < 0.3 else
                           rng.choice("abcXYZ0123") for _ in range(rng.randint(0, 120)))
            repeated = rng.choice(WHITE).join(rng.choice(pool) for _ in range(rng.randint(1, 6)))
            for sample in (text, repeated, text + " " + repeated):
                assert Token(anchor, "t", shortest).windows(sample) == \
                    Token(anchor, "t").windows(sample)


def test_rewritten_anchors_match_what_their_plain_forms_match() -> None:
    import re
    from random import Random

    from sidecar.privacy import windowing
    rng = Random(9)
    for ours, plain_form, alphabet in (
            (windowing.PHONE_DIGITS, r"(?:[0-9][ \t().\-/~\u30fc]{0,3}){6,}[0-9]",
             "0123456789 -.()/x\t~\u30fc"),
            (windowing.IP_CHARS, r"[0-9]\.[0-9]|:[0-9A-Fa-f]*:", "0123.:aFx ")):
        fast, slow = re.compile(ours), re.compile(plain_form)
        for _ in range(20000):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            assert [m.span() for m in fast.finditer(text)] == \
                [m.span() for m in slow.finditer(text)], text
