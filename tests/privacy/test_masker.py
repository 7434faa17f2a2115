"""The masker: selection, operators, bodies of every kind, headers, query, bounds, failure."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pii_values import HASH_KEY

from sidecar.privacy.analyzer import Analyzer
from sidecar.privacy.masker import Captured, Masker
from sidecar.privacy.operators import replacement
from sidecar.privacy.profile import PrivacyProfile, load_profile
from sidecar.privacy.rules import EntityRule
from sidecar.privacy.sampling import Decision

SAMPLED = Decision(True, "sampled")
CHAT = {"model": "m", "temperature": 0.1, "user": "u-1@example.com",
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "mail me: jane@example.com"}]}

Make = Callable[..., Masker]


@pytest.fixture
def make(tmp_path: Path, analyzer: Analyzer) -> Make:
    def build(body: str, *, on_failure: Callable[[str], None] | None = None) -> Masker:
        path = tmp_path / "p.yaml"
        rate = "" if "sample_rate:" in body else "sample_rate: 1\n"
        path.write_text(f"retention_class: test\n{rate}score_threshold: 0.3\n" + body)
        return Masker(load_profile(path), analyzer, HASH_KEY, on_failure=on_failure)
    return build


def json_capture(request: Any = None, response: Any = None, **kw: Any) -> Captured:
    return Captured("id-1", request_body=None if request is None else orjson.dumps(request),
                    request_content_type="application/json",
                    response_body=None if response is None else orjson.dumps(response),
                    response_content_type="application/json", **kw)


def test_operators() -> None:
    redact, mask = EntityRule("redact"), EntityRule("mask", chars_to_keep=4)
    assert replacement("a@b.co", "EMAIL_ADDRESS", redact, b"k") == "<EMAIL_ADDRESS>"
    assert replacement("4111111111111111", "CREDIT_CARD", mask, b"k") == "*" * 12 + "1111"
    assert replacement("123456", "X", mask, b"k") == "***456"  # never more than half shown
    assert replacement("12", "X", EntityRule("mask", from_end=False), b"k") == "1*"
    assert replacement("ab", "X", EntityRule("keep"), b"k") == "ab"
    hashed = replacement("a@b.co", "EMAIL_ADDRESS", EntityRule("hash", hash_length=12), b"k")
    assert hashed.startswith("<EMAIL_ADDRESS:") and len(hashed) == len("<EMAIL_ADDRESS:>") + 12
    assert hashed == replacement("a@b.co", "EMAIL_ADDRESS", EntityRule("hash", hash_length=12),
                                 b"k")
    assert hashed != replacement("a@b.co", "EMAIL_ADDRESS", EntityRule("hash", hash_length=12),
                                 b"other")


def test_keep_and_drop_paths_shape_the_payload(make: Make) -> None:
    masker = make("request: {keep: ['$.model', '$.messages[*].content', '$.messages[*].role'],"
                  " drop: ['$.messages[0]']}\nentities: {EMAIL_ADDRESS: redact}\n")
    result = masker.mask(json_capture(CHAT), SAMPLED)
    assert result.payload == {"request": {"model": "m", "messages": [
        {"role": "user", "content": "mail me: <EMAIL_ADDRESS>"}]}}
    assert result.entity_counts == {"EMAIL_ADDRESS": 1}
    everything = make("request: {keep: ['$']}\nentities: {EMAIL_ADDRESS: redact}\n")
    whole = everything.mask(json_capture(CHAT), SAMPLED).payload
    assert whole is not None and whole["request"]["user"] == "<EMAIL_ADDRESS>"
    nothing = make("request: {keep: ['$.absent']}\n").mask(json_capture(CHAT), SAMPLED)
    assert nothing.payload == {}


def test_numbers_written_outside_ascii_are_masked_in_place(make: Make) -> None:
    # The recognizers read folded text (fold.py); the masking is done on the original.
    numbers = ["01\u00a023\u00a045\u00a067\u00a089",  # French, no-break spaces
               "+\uff14\uff14 \uff12\uff10 \uff17\uff19\uff14\uff16 \uff10\uff19\uff15\uff18",
               "+\u0664\u0664 \u0662\u0660 \u0667\u0669\u0664\u0666 \u0660\u0669\u0665\u0668",
               "020\u20107946\u20100958"]
    masker = make("request: {keep: ['$.messages[*].content']}\nentities: {PHONE_NUMBER: redact}\n")
    chat = {"messages": [{"role": "user", "content": f"ring {n} \u00e0 midi"} for n in numbers]}
    result = masker.mask(json_capture(chat), SAMPLED)
    assert result.payload == {"request": {"messages": [
        {"content": "ring <PHONE_NUMBER> \u00e0 midi"} for _ in numbers]}}
    assert result.entity_counts == {"PHONE_NUMBER": len(numbers)}


def test_dictionary_keys_and_long_integers_are_masked(make: Make) -> None:
    masker = make("request: {keep: ['$']}\nentities: {EMAIL_ADDRESS: redact, CREDIT_CARD: redact}")
    doc = {"jane@example.com": 1, "bob@example.com": 2, "card": 4111111111111111, "n": 1234567}
    payload = masker.mask(json_capture(doc), SAMPLED).payload
    assert payload == {"request": {"<EMAIL_ADDRESS>": 1, "<EMAIL_ADDRESS>#2": 2,
                                   "card": "<CREDIT_CARD>", "n": 1234567}}


def test_text_binary_and_broken_bodies(make: Make) -> None:
    masker = make("request: {keep: ['$'], text: true}\nresponse: {keep: ['$']}\n"
                  "entities: {EMAIL_ADDRESS: redact}\n")

    def run(body: bytes, ctype: str | None, where: str = "request") -> Any:
        kw: dict[str, Any] = {f"{where}_body": body, f"{where}_content_type": ctype}
        return masker.mask(Captured("id", **kw), SAMPLED)
    assert run(b"hi jane@example.com", "text/plain").payload == {"request": "hi <EMAIL_ADDRESS>"}
    assert run(b"hi jane@example.com", None).payload == {"request": "hi <EMAIL_ADDRESS>"}
    assert run(b"[not json jane@example.com", None).payload == {
        "request": "[not json <EMAIL_ADDRESS>"}
    assert run(b'{"a": "jane@example.com"}', None).payload == {"request": {"a": "<EMAIL_ADDRESS>"}}
    assert run(b"\x89PNG\r\n\x1a\n\x00\x00", "image/png").omitted == {"request": "binary"}
    assert run(b"\x00\x01\x02\xff\xfe", None).omitted == {"request": "binary"}
    assert run(b"{oops", "application/json").omitted == {"request": "invalid_json"}
    assert run(b"plain words", "text/plain", "response").omitted == {
        "response": "text_not_captured"}
    deep = b"[" * 200 + b"]" * 200
    assert run(deep, "application/json").omitted == {"request": "too_deep"}


def test_form_bodies_and_declared_charsets_are_decoded_before_detection(make: Make) -> None:
    masker = make("request: {keep: ['$'], text: true}\n"
                  "entities: {EMAIL_ADDRESS: redact, CREDIT_CARD: redact}\n")

    def run(body: bytes, ctype: str) -> Any:
        return masker.mask(Captured("id", request_body=body, request_content_type=ctype),
                           SAMPLED)
    form = run(b"prompt=mail+me+at+jane%40example.com&card=4111+1111+1111+1111",
               "application/x-www-form-urlencoded")
    assert form.payload == {"request": {"prompt": "mail me at <EMAIL_ADDRESS>",
                                        "card": "<CREDIT_CARD>"}}
    text = "Contact jane@example.com, card 4111 1111 1111 1111"
    utf16 = run(text.encode("utf-16-le"), "text/plain; charset=utf-16le")
    assert utf16.payload == {"request": "Contact <EMAIL_ADDRESS>, card <CREDIT_CARD>"}
    latin = run("Grüße an jane@example.com".encode("latin-1"), "text/plain; charset=ISO-8859-1")
    assert latin.payload == {"request": "Grüße an <EMAIL_ADDRESS>"}
    unknown = run(text.encode("utf-16-le"), "text/plain; charset=x-made-up")
    assert (unknown.payload, unknown.omitted) == ({}, {"request": "unknown_charset"})
    for codec in ("base64", "rot13", "zlib", "hex"):  # codecs, but not text encodings
        result = run(b"aGVsbG8=", f"text/plain; charset={codec}")
        assert (result.failure, result.omitted) == (None, {"request": "unknown_charset"})
    # Not in the charset said (none: UTF-8): NUL-spaced, or ASCII read as CJK; either is
    # the raw value back for a reader, so neither is recorded.
    for body, ctype in ((text.encode("utf-16-le"), "text/plain"),
                        (text.encode(), "text/plain; charset=utf-16-le")):
        result = run(body, ctype)
        assert (result.payload, result.omitted) == ({}, {"request": "unknown_charset"})
    # A charset that reads ASCII as other letters (EBCDIC): recorded, it encoded straight
    # back to the values no recognizer had seen.
    for codec in ("cp500", "cp037", "utf-7"):
        result = run(text.encode(), f"text/plain; charset={codec}")
        assert (result.payload, result.omitted) == ({}, {"request": "unknown_charset"})
    shift_jis = run("連絡先 jane@example.com".encode("shift_jis"), "text/plain; charset=Shift_JIS")
    assert shift_jis.payload == {"request": "連絡先 <EMAIL_ADDRESS>"}


def test_compressed_bodies_are_omitted_not_read_as_text(make: Make) -> None:
    """A stored (level 0) deflate block keeps text whole between its headers: read as
    text, an e-mail cut by a block header would be recorded in pieces."""
    import zlib
    masker = make("request: {keep: ['$'], text: true}\nresponse: {keep: ['$'], text: true}\n"
                  "entities: {EMAIL_ADDRESS: redact}\n")
    stored = zlib.compress(b"mail jane@example.com", 0)
    result = masker.mask(Captured("id", request_body=stored, request_content_type="text/plain",
                                  request_headers=[("Content-Encoding", "deflate")],
                                  response_body=b"hi ann@example.com",
                                  response_content_type="text/plain",
                                  response_headers=[("Content-Encoding", "identity")]), SAMPLED)
    assert result.omitted == {"request": "content_encoded"}
    assert result.payload == {"response": "hi <EMAIL_ADDRESS>"}


def test_values_of_credential_keys_are_never_recorded(make: Make) -> None:
    """A hex key in ?key= or a password matches no recognizer: the key names it."""
    masker = make("request: {keep: ['$']}\nquery: {capture: true}\n"
                  "entities: {EMAIL_ADDRESS: redact}\n")
    result = masker.mask(json_capture(
        {"user": "jane@example.com", "api_key": "8f14e45fceea167a5a36dedd4bea2543",
         "auth": {"password": "hunter2", "client_secret": "s3cr3t"}, "keywords": ["a", "b"]},
        query="key=AIzaSyA-shortkey&access_token=abcdEFGH1234.xyz;q=hello"), SAMPLED)
    assert result.payload == {  # ";" separates pairs too ("q=hello" was the token's)
        "query": {"key": "<SECRET>", "access_token": "<SECRET>", "q": "hello"},
        "request": {"user": "<EMAIL_ADDRESS>", "api_key": "<SECRET>", "auth": "<SECRET>",
                    "keywords": ["a", "b"]}}
    assert result.entity_counts == {"EMAIL_ADDRESS": 1, "SECRET": 4}


def test_long_keys_are_checked_without_being_cached() -> None:
    from sidecar.privacy import payload
    payload._secret_name.cache_clear()
    assert payload.secret_key("api_key") and not payload.secret_key("x" * 100_000)
    assert payload._secret_name.cache_info().currsize == 1


def test_integral_floats_are_analysed_like_long_integers(make: Make) -> None:
    masker = make("request: {keep: ['$']}\nentities: {CREDIT_CARD: redact}\n")
    result = masker.mask(json_capture({"card": 4111111111111111.0, "ratio": 0.5,
                                       "count": 250000.0}), SAMPLED)
    assert result.payload == {"request": {"card": "<CREDIT_CARD>", "ratio": 0.5,
                                          "count": 250000.0}}


def test_headers_allow_list_minus_hard_deny_list(make: Make, analyzer: Analyzer) -> None:
    masker = make("headers: {allow: [user-agent, x-forwarded-for]}\n"
                  "entities: {EMAIL_ADDRESS: redact, IP_ADDRESS: redact}\n")
    headers = [("User-Agent", "bot (ops@example.com)"), ("X-Forwarded-For", "203.0.113.9"),
               ("X-Forwarded-For", "10.1.2.3"), ("Authorization", "Bearer sk-abc"),
               ("Cookie", "s=1"), ("Accept", "*/*")]
    result = masker.mask(Captured("id", request_headers=headers,
                                  response_headers={"X-Forwarded-For": "198.51.100.4"}),
                         Decision(False, "not_sampled"))
    assert result.payload is None  # not sampled: headers are metadata, bodies are not
    assert result.headers == {"request": {"user-agent": "bot (<EMAIL_ADDRESS>)",
                                          "x-forwarded-for": "<IP_ADDRESS>, <IP_ADDRESS>"},
                              "response": {"x-forwarded-for": "<IP_ADDRESS>"}}
    # a profile built in code that allow-lists credentials still records none of them
    sneaky = dataclasses.replace(masker.profile, headers_allow=("authorization", "cookie"))
    assert Masker(sneaky, analyzer, HASH_KEY).mask(
        Captured("id", request_headers=headers), SAMPLED).headers is None


def test_query_string_is_parsed_and_masked(make: Make) -> None:
    masker = make("query: {capture: true}\nentities: {EMAIL_ADDRESS: redact}\n")
    result = masker.mask(Captured("id", query="to=jane%40example.com&to=x&flag&q=a+b"), SAMPLED)
    assert result.payload == {"query": {"to": ["<EMAIL_ADDRESS>", "x"], "flag": "", "q": "a b"}}


def test_payload_is_bounded_and_never_cut_through_an_entity(make: Make) -> None:
    masker = make("max_captured_bytes: 1024\nrequest: {keep: ['$'], text: true}\n"
                  "response: {keep: ['$']}\nquery: {capture: true}\n"
                  "entities: {EMAIL_ADDRESS: redact}\n")
    for filler in (1000, 5000, 5100, 200_000):
        text = "x" * filler + " jane@example.com " + "y" * 3000
        result = masker.mask(Captured(
            "id", request_body=text.encode(), request_content_type="text/plain",
            response_body=orjson.dumps({"a": [text] * 3}), response_content_type="application/json",
            query="q=" + "z" * 4000), SAMPLED)
        encoded = orjson.dumps(result.payload)
        assert len(encoded) <= 1024 and result.truncated
        assert b"jane" not in encoded and b"example.com" not in encoded


def test_sampling_decisions_and_metadata_only(make: Make, analyzer: Analyzer) -> None:
    masker = make("sample_rate: 0\nalways_capture: [errors]\nrequest: {keep: ['$']}\n")
    ok = masker.mask(json_capture({"a": 1}, status=200))
    assert (ok.payload_captured, ok.capture_reason, ok.payload) == (False, "not_sampled", None)
    failed = masker.mask(json_capture({"a": 1}, status=502))
    assert failed.capture_reason == "always_capture:errors"
    assert failed.payload == {"request": {"a": 1}}
    off = Masker(load_profile("metadata-only"), analyzer, HASH_KEY).mask(
        json_capture(CHAT, status=500, request_headers={"User-Agent": "x"}))
    assert (off.capture_reason, off.payload, off.headers) == ("disabled", None, None)


def test_analyzer_failure_drops_the_payload_and_counts(make: Make, analyzer: Analyzer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[str] = []
    masker = make("request: {keep: ['$']}\nheaders: {allow: [user-agent]}\n"
                  "entities: {EMAIL_ADDRESS: redact}\n", on_failure=failures.append)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("could not parse jane@example.com")  # messages may quote input
    monkeypatch.setattr(analyzer, "analyze", broken)
    result = masker.mask(json_capture(CHAT, request_headers={"User-Agent": "jane@example.com"}),
                         SAMPLED)
    assert (result.payload, result.headers, result.entity_counts) == (None, None, {})
    assert result.failure == "analyzer_error:RuntimeError" and not result.payload_captured
    assert failures == ["analyzer_error"]
    record = orjson.dumps(result.record())
    assert b"jane" not in record and b'"profile":"' in record


def test_a_broken_counter_or_bug_still_yields_a_result(make: Make,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_counter(stage: str) -> None:
        raise ValueError(stage)
    masker = make("request: {keep: ['$']}\n", on_failure=bad_counter)
    monkeypatch.setattr(masker, "_sections", lambda *a: 1 / 0)
    result = masker.mask(json_capture(CHAT), SAMPLED)
    assert result.failure == "masking_error:ZeroDivisionError" and result.payload is None


def test_record_carries_policy_and_counts_never_values(strict: PrivacyProfile,
                                                      analyzer: Analyzer) -> None:
    result = Masker(strict, analyzer, HASH_KEY).mask(json_capture(CHAT, status=500))
    record = result.record()
    assert record["privacy"] == {
        "profile": "strict", "profile_digest": strict.digest, "retention_class": "high-risk",
        "payload_captured": True, "capture_reason": "always_capture:errors",
        "entity_counts": {"EMAIL_ADDRESS": 1}, "truncated": False, "omitted": {},
        "failure": None}
    assert b"jane" not in orjson.dumps(record)


def test_standard_hashes_contact_data_consistently(standard: PrivacyProfile,
                                                   analyzer: Analyzer) -> None:
    masker = Masker(standard, analyzer, HASH_KEY)
    one = masker.mask(json_capture(CHAT), SAMPLED).payload
    two = masker.mask(json_capture({"messages": [{"content": "jane@example.com"}]}),
                      SAMPLED).payload
    assert one is not None and two is not None
    token = two["request"]["messages"][0]["content"]
    assert token.startswith("<EMAIL_ADDRESS:") and token in one["request"]["messages"][1]["content"]


def test_profile_is_immutable(strict: PrivacyProfile) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        strict.sample_rate = 1.0  # type: ignore[misc]


def test_masking_in_batches_gives_what_masking_one_by_one_gives(strict: PrivacyProfile,
                                                               analyzer: Analyzer) -> None:
    from corpus import build_corpus
    masker = Masker(strict, analyzer, HASH_KEY)
    items = [(sample.captured, SAMPLED) for sample in build_corpus(120, seed=31)]
    one_by_one = [masker.mask(captured, decision).record() for captured, decision in items]
    batched = [result.record() for result in masker.mask_many(items)]
    assert batched == one_by_one
    assert sum(bool(r["privacy"]["entity_counts"]) for r in batched) > 60  # found plenty


def test_an_analyzer_failure_in_a_batch_costs_only_the_event_that_causes_it(
        make: Make, analyzer: Analyzer, monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[str] = []
    masker = make("request: {keep: ['$']}\nentities: {EMAIL_ADDRESS: redact}\n",
                  on_failure=failures.append)
    real = analyzer.analyze

    def fragile(texts: list[str], *args: Any) -> Any:
        if any("poison" in text for text in texts):
            raise RuntimeError("analyzer choked")
        return real(texts, *args)
    monkeypatch.setattr(analyzer, "analyze", fragile)
    items = [(json_capture({"m": f"write to user{i}@example.com"} if i != 3 else
                           {"m": "poison"}), SAMPLED) for i in range(6)]
    results = masker.mask_many(items)
    assert [r.failure for r in results] == [None] * 3 + ["analyzer_error:RuntimeError"] + [None] * 2
    assert failures == ["analyzer_error"]
    for i, result in enumerate(results):
        if i != 3:
            assert result.payload == {"request": {"m": "write to <EMAIL_ADDRESS>"}}
            assert result.entity_counts == {"EMAIL_ADDRESS": 1}


def test_a_pattern_that_runs_too_long_fails_the_event_closed(
        make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crafted token keeps the e-mail pattern busy for seconds; skipping the pattern (as
    presidio does on a timeout) would let the real address in the same text through."""
    from sidecar.privacy import windowing
    monkeypatch.setattr(windowing, "TIMEOUT_S", 0.02)
    failures: list[str] = []
    masker = make("request: {keep: ['$']}\nentities: {EMAIL_ADDRESS: redact}\n",
                  on_failure=failures.append)
    crafted = "mail jane@example.com please. " + "a!" * 6000 + "@b"
    items = [(json_capture({"m": "write to ann@example.com"}), SAMPLED),
             (json_capture({"m": crafted}), SAMPLED)]
    fine, crafted_result = masker.mask_many(items)
    assert fine.payload == {"request": {"m": "write to <EMAIL_ADDRESS>"}}
    assert crafted_result.failure == "analyzer_error:ScanTimeout"
    assert crafted_result.payload is None and not crafted_result.payload_captured
    assert failures == ["analyzer_error"]
    assert b"jane" not in orjson.dumps(crafted_result.record())


def test_a_batch_is_cut_into_analyzer_calls_of_bounded_text(
        strict: PrivacyProfile, analyzer: Analyzer, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.privacy import masker as module
    sizes: list[int] = []
    real = analyzer.analyze

    def counting(texts: list[str], *args: Any) -> Any:
        sizes.append(sum(len(t) for t in texts))
        return real(texts, *args)
    monkeypatch.setattr(analyzer, "analyze", counting)
    monkeypatch.setattr(module, "BATCH_CHARS", 4096)
    text = "call +1 212 555 0143 " * 50  # ~1 KB a message
    items = [(json_capture({"messages": [{"role": "user", "content": text}]}), SAMPLED)
             for _ in range(20)]
    results = Masker(strict, analyzer, HASH_KEY).mask_many(items)
    assert all(r.entity_counts == {"PHONE_NUMBER": 50} for r in results)
    assert 4 <= len(sizes) <= 6 and max(sizes) < 4096 + 1200


def test_credential_named_values_in_text_bodies_are_secrets(make: Make) -> None:
    # A text body has no keys for the JSON rule to read, and a password there matches no
    # recognizer: the same JSON sent as text/plain kept "hunter2hunter2".
    masker = make("request: {text: true}\nresponse: {text: true}\n"
                  "entities: {EMAIL_ADDRESS: redact}\n")
    result = masker.mask(Captured(
        "id", request_body=b'{"user": "x", "password": "hunter2hunter2"}',
        request_content_type="text/plain",
        response_body=b'{"api_key": "pa55w0rdXYZ"}\n{"note": "mail jane@example.com"}\n',
        response_content_type="application/x-ndjson"), SAMPLED)
    assert result.payload == {
        "request": '{"user": "x", "password": "<SECRET>"}',
        "response": '{"api_key": "<SECRET>"}\n{"note": "mail <EMAIL_ADDRESS>"}\n'}
    assert result.entity_counts["SECRET"] == 2
    # a long value is hidden whole (a 530-character token kept its tail raw at a 512 bound)
    token = "A1b2" * 150
    long = masker.mask(Captured("id", request_body=f"Authorization: Bearer {token}\nok".encode(),
                                request_content_type="text/plain"), SAMPLED)
    assert long.payload == {"request": "Authorization: <SECRET>\nok"}


def test_credential_pairs_are_looked_for_only_in_what_can_be_recorded(make: Make) -> None:
    # A crafted 1 MB of "a=" took seconds: the cost follows max_captured_bytes.
    masker = make("request: {text: true}\nmax_captured_bytes: 4KiB\n")
    body = b"password: hunter2\n" + b"a=" * 500_000
    result = masker.mask(Captured("id", request_body=body, request_content_type="text/plain"),
                         SAMPLED)
    assert result.payload is not None and result.truncated
    assert result.payload["request"].startswith("password: <SECRET>\n")
    assert len(result.payload["request"]) < 4096
