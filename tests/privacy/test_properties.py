"""Properties: masking never raises, always serialises, never exceeds its budget (issue 4).

Arbitrary JSON (any Unicode, huge integers, deep and wide nesting), arbitrary bytes under
any content type, arbitrary header and query text (lone surrogates included): the masker
returns a result whose record orjson can encode and whose payload fits the profile's
``max_captured_bytes``, with no ``failure`` for any well-formed input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pii_values import HASH_KEY

from sidecar.privacy.analyzer import Analyzer
from sidecar.privacy.masker import Captured, Masker
from sidecar.privacy.profile import load_profile
from sidecar.privacy.sampling import Decision

SAMPLED = Decision(True, "sampled")
LIMIT = 2048
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])

# Text that is valid UTF-8 (what a decoded body can hold), seeded with entity-like pieces
# so the operators run, not just the walk.
pieces = st.sampled_from(["jane@example.com", "+1 212 555 0143", "4111 1111 1111 1111",
                          "sk-" + "a1B2" * 8, "Bearer abcdefghijklmnop", "10.0.0.1", "::",
                          "DE89370400440532013000", "\u00e9\u4e2d\U0001f600", "\\", '"'])
utf8_text = st.one_of(st.text(st.characters(exclude_categories=["Cs"]), max_size=200),
                      st.lists(st.one_of(pieces, st.text(max_size=5).filter(str.isprintable)),
                               max_size=12).map(" ".join))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), utf8_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=8), st.dictionaries(utf8_text, inner, max_size=8)), max_leaves=60)


@pytest.fixture(scope="module")
def masker(analyzer: Analyzer, tmp_path_factory: pytest.TempPathFactory) -> Masker:
    path: Path = tmp_path_factory.mktemp("p") / "everything.yaml"
    path.write_text(f"retention_class: test\nsample_rate: 1\nmax_captured_bytes: {LIMIT}\n"
                    "score_threshold: 0.3\nrequest: {keep: ['$'], text: true}\n"
                    "response: {keep: ['$..content', '$[0]', '$.a'], drop: ['$..b'], text: true}\n"
                    "headers: {allow: [user-agent, x-forwarded-for]}\nquery: {capture: true}\n"
                    "entities: {EMAIL_ADDRESS: redact, PHONE_NUMBER: {operator: mask}, "
                    "CREDIT_CARD: {operator: hash}, API_KEY: redact, BEARER_TOKEN: redact, "
                    "IP_ADDRESS: redact, IBAN_CODE: {operator: mask, chars_to_keep: 4}}\n")
    return Masker(load_profile(path), analyzer, HASH_KEY)


def check(masker: Masker, captured: Captured) -> Any:
    result = masker.mask(captured, SAMPLED)
    record = orjson.dumps(result.record())  # raises if anything is not serialisable
    assert result.failure is None, result.failure
    if result.payload is not None:
        assert len(orjson.dumps(result.payload)) <= LIMIT
    assert b"jane@example.com" not in record and b"4111 1111 1111 1111" not in record
    return result


@SETTINGS
@given(request=json_values, response=json_values)
# Found by this test in CI: python-jsonpath parses a str document as JSON text, so a body
# that is the JSON string "[" made masking fail (and '{"model": 1}' would have been searched).
@example(request=None, response="[")
@example(request='{"model": "m", "messages": [{"content": "jane@example.com"}]}', response=0)
def test_any_json_bodies(masker: Masker, request: Any, response: Any) -> None:
    check(masker, Captured("id", request_body=orjson.dumps(request),
                           request_content_type="application/json",
                           response_body=orjson.dumps(response),
                           response_content_type="application/json; charset=utf-8"))


@SETTINGS
@given(body=st.binary(max_size=3000),
       content_type=st.one_of(st.none(), st.sampled_from(
           ["application/json", "text/plain", "application/octet-stream", "text/event-stream",
            "application/x-ndjson", "application/vnd.api+json", "image/png", ";;", ""])))
def test_any_bytes_under_any_content_type(masker: Masker, body: bytes,
                                          content_type: str | None) -> None:
    check(masker, Captured("id", request_body=body, request_content_type=content_type,
                           response_body=body[::-1], response_content_type=content_type))


@SETTINGS
@given(text=st.text(max_size=3000))
def test_any_text_body(masker: Masker, text: str) -> None:
    body = text.encode("utf-8", "surrogatepass")  # lone surrogates: not valid UTF-8 bytes
    check(masker, Captured("id", request_body=body, request_content_type="text/plain"))


@SETTINGS
@given(query=st.text(max_size=400),
       headers=st.lists(st.tuples(st.sampled_from(["User-Agent", "x-forwarded-for", "Cookie",
                                                   "Authorization", "X-Other"]),
                                  st.text(max_size=300)), max_size=6))
def test_any_query_and_header_text(masker: Masker, query: str,
                                   headers: list[tuple[str, str]]) -> None:
    result = check(masker, Captured("id", query=query, request_headers=headers,
                                    response_headers=dict(headers)))
    for side in (result.headers or {}).values():
        assert set(side) <= {"user-agent", "x-forwarded-for"}


@pytest.mark.parametrize("body", [
    b"[" * 5000 + b"]" * 5000,  # deeper than orjson parses
    b"[" * 500 + b"]" * 500,  # parses, deeper than we walk
    orjson.dumps({"k": [[[[[[[[[[[[["jane@example.com"]]]]]]]]]]]]]}),
    orjson.dumps({"wide": list(range(100_000))}),
    orjson.dumps({"big": "jane@example.com " * 50_000}),  # 850 KB: parsed, cut, masked
    orjson.dumps({"big": "jane@example.com " * 100_000}),  # 1.7 MB: over max_parse_bytes
    orjson.dumps({str(i): "jane@example.com" for i in range(5000)}),
    ("x" * 900_000 + " jane@example.com").encode(),
    ("jane@example.com " * 50_000).encode(),
])
def test_huge_deep_and_odd_inputs(masker: Masker, body: bytes) -> None:
    check(masker, Captured("id", request_body=body, request_content_type="application/json"))
    check(masker, Captured("id", request_body=body, request_content_type=None))


def test_a_string_document_is_not_searched_as_json(masker: Masker) -> None:
    # The response rule keeps $.a and $..content; this body is one JSON *string* whose
    # text happens to look like an object: nothing in it may be selected as if parsed.
    inner = '{"a": "kept?", "content": "jane@example.com"}'
    result = check(masker, Captured("id", response_body=orjson.dumps(inner),
                                    response_content_type="application/json"))
    assert result.payload is None or "response" not in result.payload
