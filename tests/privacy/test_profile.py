"""Profiles: the shipped ones load; a bad one is refused naming file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.privacy.profile import (
    PrivacyProfile,
    ProfileError,
    ProfileSelector,
    load_profile,
    shipped_profiles,
)
from sidecar.privacy.rules import header_denied

MINIMAL = "retention_class: test\nsample_rate: 0.5\n"


def write(tmp_path: Path, text: str, name: str = "custom.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_three_shipped_profiles_load() -> None:
    assert {"strict", "standard", "metadata-only"} <= set(shipped_profiles())
    for name in ("strict", "standard", "metadata-only"):
        profile = load_profile(name)
        assert profile.name == name
        assert profile.source == f"privacy_profiles/{name}.yaml"
        assert profile.digest.startswith("sha256:") and len(profile.digest) == 71


def test_strict_is_the_high_risk_default_shape(strict: PrivacyProfile) -> None:
    assert 0 < strict.sample_rate < 0.5
    assert strict.always_capture == {"errors", "alerts", "rejections"}
    assert all(rule.operator == "redact" for rule in strict.entities.values())
    assert "$.messages[*].content" in strict.request.keep
    assert "$.choices[*].message.content" in strict.response.keep
    assert "$.inputs[*].data" in strict.request.keep
    assert strict.captures_payload


def test_metadata_only_captures_nothing() -> None:
    profile = load_profile("metadata-only")
    assert not profile.captures_payload
    assert profile.headers_allow == () and not profile.entities


def test_defaults_and_name_from_the_file(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, MINIMAL, "mine.yaml"))
    assert profile.name == "mine"
    assert profile.score_threshold == 0.5 and profile.max_captured_bytes == 64 * 1024
    assert not profile.captures_payload
    assert load_profile(str(tmp_path / "mine.yaml")).digest == profile.digest


def test_digest_ignores_comments_and_order_but_not_rules(tmp_path: Path) -> None:
    a = load_profile(write(tmp_path, MINIMAL + "entities: {EMAIL_ADDRESS: redact}\n", "a.yaml"))
    b = load_profile(write(tmp_path, "# same\nentities:\n  EMAIL_ADDRESS: {operator: redact}\n"
                           "sample_rate: 0.5\nretention_class: test\nname: a\n", "b.yaml"))
    c = load_profile(write(tmp_path, MINIMAL + "entities: {EMAIL_ADDRESS: mask}\n", "a2.yaml"))
    assert a.digest == b.digest
    assert a.digest != c.digest


@pytest.mark.parametrize(("text", "key", "reason"), [
    (MINIMAL + "entities: {EMAIL: redact}\n", "entities.EMAIL", "unknown entity"),
    (MINIMAL + "entities: {EMAIL_ADDRESS: {operator: scramble}}\n",
     "entities.EMAIL_ADDRESS.operator", "expected one of redact, mask, hash, keep"),
    (MINIMAL + "entities: {EMAIL_ADDRESS: obliterate}\n", "entities.EMAIL_ADDRESS.operator",
     "'obliterate'"),
    (MINIMAL + "entities: {CREDIT_CARD: {operator: mask, chars_to_keep: -1}}\n",
     "entities.CREDIT_CARD.chars_to_keep", "0 to 64"),
    (MINIMAL + "entities: {CREDIT_CARD: {operator: mask, masking_char: '**'}}\n",
     "entities.CREDIT_CARD.masking_char", "one character"),
    (MINIMAL + "entities: {CREDIT_CARD: {operator: hash, length: 4}}\n",
     "entities.CREDIT_CARD.length", "8 to 64"),
    (MINIMAL + "entities: {CREDIT_CARD: {operator: hash, score_threshold: 2}}\n",
     "entities.CREDIT_CARD.score_threshold", "0 to 1"),
    (MINIMAL + "entities: {CREDIT_CARD: {operator: hash, salt: x}}\n",
     "entities.CREDIT_CARD.salt", "unknown key"),
    (MINIMAL + "request: {keep: ['$.messages[*].content', '$.messages[*']}\n",
     "request.keep[1]", "bad JSON path '$.messages[*'"),
    (MINIMAL + "response: {drop: [choices]}\n", "response.drop[0]", "bad JSON path"),
    (MINIMAL + "request: {keep: '$.a'}\n", "request.keep", "list of strings"),
    (MINIMAL + "request: {text: yes please}\n", "request.text", "true or false"),
    (MINIMAL + "request: {kept: []}\n", "request.kept", "unknown key"),
    ("retention_class: test\nsample_rate: 1.5\n", "sample_rate", "from 0 to 1, got 1.5"),
    ("retention_class: test\nsample_rate: -0.1\n", "sample_rate", "from 0 to 1"),
    ("retention_class: test\nsample_rate: half\n", "sample_rate", "from 0 to 1"),
    ("retention_class: test\nsample_rate: true\n", "sample_rate", "from 0 to 1"),
    ("sample_rate: 0.5\n", "retention_class", "required"),
    ("retention_class: test\n", "sample_rate", "required"),
    ("retention_class: Not A Tag\nsample_rate: 0.5\n", "retention_class", "tag"),
    (MINIMAL + "sample_rat: 0.5\n", "sample_rat", "unknown key"),
    (MINIMAL + "score_threshold: 1.01\n", "score_threshold", "from 0 to 1"),
    (MINIMAL + "max_captured_bytes: lots\n", "max_captured_bytes", "size"),
    (MINIMAL + "max_captured_bytes: 1GiB\n", "max_captured_bytes", "at most"),
    (MINIMAL + "always_capture: [errors, panics]\n", "always_capture[1]", "'panics'"),
    (MINIMAL + "headers: {allow: [user-agent, Authorization]}\n", "headers.allow[1]",
     "never recorded"),
    (MINIMAL + "headers: {allow: [x-acme-api-key]}\n", "headers.allow[0]", "never recorded"),
    (MINIMAL + "headers: {allow: ['bad header']}\n", "headers.allow[0]", "not a header name"),
    (MINIMAL + "query: {capture: 1}\n", "query.capture", "true or false"),
    (MINIMAL + "ner_model: ''\n", "ner_model", "spaCy model"),
    ("- just\n- a list\n", "(document)", "mapping"),
    ("retention_class: [unclosed\n", "(file)", "not valid YAML"),
    # YAML keeps the last of two equal keys: a second rate or operator would silently win
    (MINIMAL + "sample_rate: 1\n", "(file)", "duplicate key 'sample_rate'"),
    (MINIMAL + "entities: {EMAIL_ADDRESS: redact, EMAIL_ADDRESS: keep}\n", "(file)",
     "duplicate key 'EMAIL_ADDRESS'"),
    ("description: " + "[" * 3000 + "]" * 3000 + "\n", "(file)", "nested too deeply"),
])
def test_an_invalid_profile_names_file_key_and_reason(tmp_path: Path, text: str, key: str,
                                                     reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.file, error.key) == (str(path), key), str(error)
    assert reason in error.reason, error.reason
    assert str(path) in str(error) and key in str(error) and error.reason in str(error)


def test_unknown_name_and_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="shipped: metadata-only, standard, strict"):
        load_profile("stricter")
    with pytest.raises(ProfileError, match="cannot be read") as caught:
        load_profile(tmp_path / "absent.yaml")
    assert caught.value.key == "(file)"


def test_hard_deny_list_cannot_be_overridden() -> None:
    for name in ("Authorization", "proxy-authorization", "Cookie", "set-cookie", "X-API-Key",
                 "api-key", "x-goog-api-key", "x-my-session-id", "x-auth-request-user",
                 "ocp-apim-subscription-key", "x-functions-key", "x-access-key", "private-key",
                 "x-goog-iap-jwt-assertion", "x-ms-client-principal", "x-xsrf-token"):
        assert header_denied(name), name
    for name in ("user-agent", "content-type", "x-forwarded-for", "accept"):
        assert not header_denied(name), name


def test_selector_picks_per_route_profiles(tmp_path: Path) -> None:
    selector = ProfileSelector("strict", {"/v1/embeddings": "metadata-only",
                                          "/v1/chat/completions": "strict"})
    assert selector.for_route("/v1/embeddings").name == "metadata-only"
    assert selector.for_route("/v1/chat/completions").name == "strict"
    assert selector.for_route("/other").name == "strict"
    assert sorted(p.name for p in selector.profiles) == ["metadata-only", "strict"]
    with pytest.raises(ProfileError):
        ProfileSelector("strict", {"/x": write(tmp_path, "sample_rate: 2\n")})
