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
