"""The analyzer: offline, its catalogue matches presidio, tuned finds what default finds."""

from __future__ import annotations

import importlib
import random
import socket
from pathlib import Path
from typing import Any

import presidio_analyzer.predefined_recognizers as presidio_recognizers
import pytest
from corpus import WRITINGS, build_corpus
from pii_values import api_key

from sidecar.privacy import analyzer as analyzer_module
from sidecar.privacy.analyzer import Analyzer, Finding, build_analyzer
from sidecar.privacy.entities import PRESIDIO_PATTERN_ENTITIES
from sidecar.privacy.profile import PrivacyProfile, load_profile


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("network access attempted")


def test_builds_and_detects_with_no_network_and_no_download(
        monkeypatch: pytest.MonkeyPatch, strict: PrivacyProfile) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    spacy_cli = importlib.import_module("spacy.cli")
    monkeypatch.setattr(spacy_cli, "download", _refuse)
    fresh = build_analyzer(strict)
    text = "write to jane.doe@mail.example.co.uk or ops@example.io, card 4111 1111 1111 1111"
    found = fresh.analyze([text], strict.entities, strict.score_threshold)[0]
    assert {f.entity_type for f in found} >= {"EMAIL_ADDRESS", "CREDIT_CARD"}
    assert sum(f.entity_type == "EMAIL_ADDRESS" for f in found) == 2


def test_ner_entities_are_inactive_without_a_model(analyzer: Analyzer) -> None:
    assert {"PERSON", "LOCATION"} <= analyzer.inactive
    assert not analyzer.inactive & analyzer.entities
    assert {"EMAIL_ADDRESS", "API_KEY", "IN_AADHAAR"} <= analyzer.entities


def test_a_spacy_pipeline_loaded_by_path_enables_ner(tmp_path: Path) -> None:
    spacy = importlib.import_module("spacy")
    spacy.blank("en").to_disk(tmp_path / "blank-en")
    profile_file = tmp_path / "ner.yaml"
    profile_file.write_text(f"retention_class: t\nsample_rate: 1\nner_model: {tmp_path}/blank-en\n"
                            "entities: {PERSON: redact, EMAIL_ADDRESS: redact}\n")
    built = build_analyzer(load_profile(profile_file))
    assert "PERSON" in built.entities and not built.inactive
    found = built.analyze(["Ada Lovelace, ada@example.com"], {"PERSON", "EMAIL_ADDRESS"}, 0.3)
    assert [f.entity_type for f in found[0]] == ["EMAIL_ADDRESS"]  # a blank pipeline has no NER


def test_entities_that_cannot_reach_the_threshold_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "weak.yaml"
    path.write_text("retention_class: t\nsample_rate: 1\nscore_threshold: 0.3\n"
                    "entities: {US_PASSPORT: redact, US_SSN: redact}\n")
    built = build_analyzer(load_profile(path))
    assert built.inactive == {"US_PASSPORT"} and built.entities == {"US_SSN"}


def test_repeated_strings_are_served_from_a_cache_that_holds_no_text(
        strict: PrivacyProfile) -> None:
    fresh = build_analyzer(strict)
    assert fresh.cache is not None
    agent = "acme-bot/1.0 (ops@example.com)"
    first = fresh.analyze([agent, "10.1.2.3"], strict.entities, 0.3)
    hits = fresh.cache.hits
    assert fresh.analyze(["10.1.2.3", agent], strict.entities, 0.3) == first[::-1]
    assert fresh.cache.hits == hits + 2
    assert fresh.analyze([agent], strict.entities, 0.5) == [first[0]]  # another threshold
    assert fresh.cache.hits == hits + 2
    assert not any(isinstance(part, str) and "example" in part
                   for key in fresh.cache._items for part in key)


def test_every_catalogue_entry_is_a_presidio_recognizer_for_that_entity() -> None:
    for entity, class_name in PRESIDIO_PATTERN_ENTITIES.items():
        recognizer = getattr(presidio_recognizers, class_name)(supported_language="en")
        assert recognizer.supported_entities == [entity], class_name


def test_findings_map_back_to_each_string(analyzer: Analyzer, strict: PrivacyProfile) -> None:
    texts = ["", "no entities here", "mail a@example.com", "x", "call +1 212 555 0143 now"]
    found = analyzer.analyze(texts, strict.entities, 0.3)
    assert [len(f) for f in found] == [0, 0, 1, 0, 1]
    assert texts[2][found[2][0].start:found[2][0].end] == "a@example.com"
    assert texts[4][found[4][0].start:found[4][0].end] == "+1 212 555 0143"


def test_a_finding_across_the_separator_masks_both_sides() -> None:
    texts = ["abc", "def"]
    starts = [0, 3 + len(analyzer_module.SEPARATOR)]
    split = analyzer_module._split([Finding("X", 1, starts[1] + 2, 1.0)], texts, starts)
    assert split == [[Finding("X", 1, 3, 1.0)], [Finding("X", 0, 2, 1.0)]]


def test_tuned_finds_everything_presidio_default_finds(analyzer: Analyzer,
                                                       strict: PrivacyProfile) -> None:
    texts = [(sample.captured.request_body or b"").decode()
             for sample in build_corpus(150, seed=11)]
    assert_covers(analyzer, build_analyzer(strict, tuned=False), strict, texts)


@pytest.mark.parametrize("variant", sorted(WRITINGS))
def test_tuned_finds_everything_presidio_default_finds_outside_ascii(
        analyzer: Analyzer, strict: PrivacyProfile, variant: str) -> None:
    # presidio's \\d and its phone recognizer read every script's digits and separators;
    # the tuned anchors are ASCII, so they read the folded text (fold.py).
    texts = [(sample.captured.request_body or b"").decode().translate(WRITINGS[variant])
             for sample in build_corpus(60, seed=12)]
    assert_covers(analyzer, build_analyzer(strict, tuned=False), strict, texts)


def test_a_card_number_its_recognizer_cannot_read_is_left_to_the_phone_one(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    # Luhn-valid runs of 16 digits go to the card recognizer, unless written with
    # separators it does not read; presidio's phone matcher takes those.
    texts = ["it. 4998\u30fc7676\u30fc7863\u30fc5517 ok", "it. 4998-7676-7863-5517 ok"]
    assert_covers(analyzer, build_analyzer(strict, tuned=False), strict, texts)


def assert_covers(analyzer: Analyzer, default: Analyzer, profile: PrivacyProfile,
                  texts: list[str]) -> None:
    """Every span the default analyzer finds lies within one the tuned one finds."""
    tuned_found = analyzer.analyze(texts, profile.entities, 0.3)
    default_found = default.analyze(texts, profile.entities, 0.3)
    assert any(default_found)  # the corpus holds what presidio finds
    for text, mine, theirs in zip(texts, tuned_found, default_found, strict=True):
        covered = [(f.start, f.end) for f in mine]
        for f in theirs:
            value = text[f.start:f.end]  # spans may differ by punctuation: "(+49 ..." or "+49"
            start = f.start + len(value) - len(value.lstrip("(+ -\u00a0\u2011\u30fc"))
            end = f.end - len(value) + len(value.rstrip(") -.\u00a0\u2011\u30fc"))
            assert any(s <= start and end <= e for s, e in covered), (f.entity_type, value)


def test_an_upper_cased_copy_of_an_api_key_is_still_found(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    # A model or a proxy that upper-cases text (the demo's /text endpoint does) must not
    # turn a key into something the recognizers let through.
    rng = random.Random(7)
    keys = [api_key(rng) for _ in range(200)]
    texts = [f"the key is {key.upper()} ok" for key in keys]
    found = analyzer.analyze(texts, strict.entities, strict.score_threshold)
    for text, key, findings in zip(texts, keys, found, strict=True):
        spans = [text[f.start:f.end] for f in findings if f.entity_type == "API_KEY"]
        assert key.upper() in spans, (key, findings)


def test_words_and_digests_in_one_case_are_not_taken_for_keys(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    texts = ["model meta-llama-3-70b-instruct-awq-int4-gptq-v2 answered",
             "sha d41d8cd98f00b204e9800998ecf8427ed41d8cd98f00b204 done",
             "ticket ORDER-2024-11-27-REFUND-REQUEST-ACCEPTED closed"]
    found = analyzer.analyze(texts, strict.entities, strict.score_threshold)
    assert [[f.entity_type for f in fs if f.entity_type == "API_KEY"] for fs in found] == [
        [], [], []]


def test_an_iban_in_lower_case_is_found_as_presidio_s_engine_finds_it(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    texts = ["pay to de89370400440532013000 now", "iban: de89 3704 0044 0532 0130 00",
             "gb82 west 1234 5698 7654 32 please"]
    assert_covers(analyzer, build_analyzer(strict, tuned=False), strict, texts)
    found = analyzer.analyze(texts, strict.entities, strict.score_threshold)
    assert all(any(f.entity_type == "IBAN_CODE" for f in findings) for findings in found)
    # the check digits still count: a wrong one is not an IBAN
    (wrong,) = analyzer.analyze(["to de89 3704 0044 0532 0130 01 ok"], ["IBAN_CODE"], 0.3)
    assert wrong == []


def test_a_phone_number_next_to_another_number_is_found(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    texts = ["Reach me at +1 212-555-0143 24/7, thanks", "call 212 555 0143 2 times",
             "fax 030 1234567 12 pages"]
    assert_covers(analyzer, build_analyzer(strict, tuned=False), strict, texts)


def test_a_phone_number_glued_to_a_word_by_an_underscore_is_found_whole(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    # libphonenumber (presidio) refuses a number after a letter, not after "_": field names
    # and slugs glue numbers that way. Only "555-0143" was found here, keeping "212".
    texts = ["call tel_212-555-0143 now", "see phone_2125550143", "row x_+1 212-555-0143"]
    assert_covers(analyzer, build_analyzer(strict, tuned=False), strict, texts)
    found = analyzer.analyze(texts, ["PHONE_NUMBER"], strict.score_threshold)
    spans = [[text[f.start:f.end] for f in fs] for text, fs in zip(texts, found, strict=True)]
    assert spans == [["212-555-0143"], ["2125550143"], ["+1 212-555-0143"]]
    # still not a phone number: digits inside a word
    (inside,) = analyzer.analyze(["order abc2125550143 shipped"], ["PHONE_NUMBER"], 0.3)
    assert inside == []


def test_keys_glued_to_a_name_by_an_underscore_are_found(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    jwt = ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
           "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
    texts = ["aws_key_AKIAIOSFODNN7EXAMPLE_prod", f"token_{jwt}"]
    found = analyzer.analyze(texts, strict.entities, strict.score_threshold)
    spans = [{text[f.start:f.end] for f in fs} for text, fs in zip(texts, found, strict=True)]
    assert "AKIAIOSFODNN7EXAMPLE" in spans[0] and jwt in spans[1], spans
    # inside a longer run of letters and digits, still not a key id
    (inside,) = analyzer.analyze(["XAKIAIOSFODNN7EXAMPLE9"], ["AWS_ACCESS_KEY_ID"], 0.3)
    assert inside == []


def test_an_underscore_hides_no_value_a_space_would_not(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    # presidio's patterns bound values with \b, and "_" is a word character to \b, so
    # "card_4111..." was one word and the card number went through unmasked.
    values = ["4111 1111 1111 1111", "078-05-1120", "192.168.12.7", "DE89370400440532013000",
              "jane.doe@example.com", "5500005555555559", "+44 20 7946 0958",
              "fe80::1ff:fe23:4567:890a", "2001:db8::8a2e:370:7334", "AB123456C",
              "ABCPD1234E", "S1234567D", "X1234567L", "12345678Z", "943 476 5919"]
    texts = [text for value in values
             for text in (f"x_{value}", f"{value}_x", f"see x_{value}_x here")]
    spaced = [t.replace("_", " ") for t in texts]  # the same length: the same offsets
    for text, plain in zip(texts, spaced, strict=True):  # one at a time: no neighbours
        (reference,) = analyzer.analyze([plain], strict.entities, strict.score_threshold)
        (mine,) = analyzer.analyze([text], strict.entities, strict.score_threshold)
        assert reference, plain  # each value is found when written with a space
        for f in reference:
            assert any(g.entity_type == f.entity_type and g.start <= f.start and f.end <= g.end
                       for g in mine), (text, text[f.start:f.end])


def test_a_long_name_glued_to_a_value_hides_it_no_more_than_a_short_one(
        analyzer: Analyzer, strict: PrivacyProfile) -> None:
    texts = ["customer_credit_card_number_4111111111111111",
             "x_4111111111111111_exp_2027_cvv_123_zip_94105",
             "my_primary_card_4111111111111111_exp_12_27"]
    for text in texts:
        (found,) = analyzer.analyze([text], ["CREDIT_CARD"], strict.score_threshold)
        assert [text[f.start:f.end] for f in found] == ["4111111111111111"], text


def test_only_a_underscore_next_to_digits_costs_a_second_read() -> None:
    from sidecar.privacy.windowing import glued

    assert glued(f"a snake_case_name, {'_' * 10_000} and {'a_' * 5_000} end") == ()
    assert glued("row card_4111 1111 1111 1111 ok") == ((0, 31),)
    assert glued("y " + "x" * 100 + "_9") == ((0, 104),)  # the whole segment, and around


def test_the_e_mail_pattern_is_presidio_s_with_its_domain_labels_narrowed() -> None:
    from sidecar.privacy.recognizers import OfflineEmailRecognizer

    (pattern,) = OfflineEmailRecognizer().patterns
    assert OfflineEmailRecognizer._LABELS in pattern.regex


GLUED_OR_HIDDEN = [
    # written against text in scripts without spaces (one run of \w to every pattern)
    ("メールは{}です", "jane.doe@example.com"), ("電話は{}です", "090-1234-5678"),
    ("カード番号{}です", "4111111111111111"), ("{}으로 보내 주세요", "jane@example.com"),
    ("อีเมล{}ครับ", "jane@example.com"),
    # split by invisible format characters
    ("mail {} now", "jane\ufeff@example.org"), ("mail {} now", "bob@exam\u2060ple.net"),
    ("key {} now", "sk-proj\u200bABCDEFGHIJKLMNOPQRSTUVWX1234"),
    ("key {} now", "AKIA\u200bIOSFODNN7EXAMPLE"), ("call {} now", "+1 212\u200d555\u200d0199"),
    # percent-encoded, as a quoted redirect URL has it
    ("redirect https://x.com/cb?email={}&a=1", "carol%40example.com"),
]


@pytest.mark.parametrize(("around", "value"), GLUED_OR_HIDDEN)
def test_values_glued_to_unspaced_scripts_or_split_by_invisibles_are_found(
        analyzer: Analyzer, strict: PrivacyProfile, around: str, value: str) -> None:
    text = around.format(value)
    [found] = analyzer.analyze([text], strict.entities, strict.score_threshold)
    start = text.index(value)
    assert any(f.start <= start and start + len(value) <= f.end for f in found), (
        [(f.entity_type, text[f.start:f.end]) for f in found])


@pytest.mark.parametrize(("text", "secret"), [
    ("Authorization: Basic amFuZTpodW50ZXIy", "amFuZTpodW50ZXIy"),  # jane:hunter2
    ("tool/1.0 auth=Basic Zm9vOmJhcg==", "Zm9vOmJhcg=="),
    ("connect to postgres://admin:S3cr3tP4ss@db.internal:5432/app", "S3cr3tP4ss"),
    ("run curl -u jane:hunter2 https://api.example", "hunter2"),
    ("run curl --user=jane:hunter2 https://api.example", "hunter2"),
    ("my token glpat-abcdefghij0123456789AB works", "glpat-abcdefghij0123456789AB"),
    # an "@" in the password, encoded as it must be; no user name (Redis)
    ("cache at redis://default:Xy%40zPw9Q@cache:6379 now", "Xy%40zPw9Q"),
    ("cache at redis://:S3cretPassw0rd@cache.internal:6379/0", "S3cretPassw0rd"),
    # a zero-width space for the space: taken out of the text read, "Bearer" meets the token
    ("use Bearer\u200babcdefghijklmnopqrstuv for it", "abcdefghijklmnopqrstuv"),
])
def test_credentials_other_than_bearer_tokens_are_found(
        analyzer: Analyzer, strict: PrivacyProfile, text: str, secret: str) -> None:
    [found] = analyzer.analyze([text], strict.entities, strict.score_threshold)
    start = text.index(secret)
    assert any(f.start <= start and start + len(secret) <= f.end for f in found), (
        [(f.entity_type, text[f.start:f.end]) for f in found])


@pytest.mark.parametrize("text", ["a basic approach to shapes", "see https://example.com/a:b",
                                  "basic arithmetic, then http://localhost:8080/x"])
def test_prose_and_plain_urls_are_no_credentials(
        analyzer: Analyzer, strict: PrivacyProfile, text: str) -> None:
    [found] = analyzer.analyze([text], strict.entities, strict.score_threshold)
    assert [f for f in found if f.entity_type == "BEARER_TOKEN"] == []
