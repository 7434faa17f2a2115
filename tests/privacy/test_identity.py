"""Pseudonymous client identity: keyed, stable, rotatable; the raw identity never shows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sidecar.privacy.identity import ClientIdentity, IdentityError, key_version

KEY_A = b"first-key-0123456789abcdef"
KEY_B = b"second-key-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "identity.key"
    path.write_bytes(KEY_A + b"\n")
    return path


def test_header_source_is_stable_keyed_and_never_raw(key_file: Path) -> None:
    ident = ClientIdentity("header:x-client-id", key_file)
    one = ident.pseudonym({"X-Client-Id": "alice@example.com"}, "10.0.0.1")
    assert one == ident.pseudonym([("x-client-id", "alice@example.com")], "10.9.9.9")
    assert one is not None and one.startswith(key_version(KEY_A) + ":")
    assert len(one.split(":")[1]) == 32
    assert "alice" not in one and "alice" not in repr(ident)
    assert ident.pseudonym({"X-Client-Id": "bob@example.com"}, None) != one
    assert ident.pseudonym({"Other": "x"}, "10.0.0.1") is None
    other_key = key_file.parent / "other.key"
    other_key.write_bytes(KEY_B)
    assert ClientIdentity("header:x-client-id", other_key).pseudonym(
        {"x-client-id": "alice@example.com"}, None) != one


def test_api_key_source(key_file: Path) -> None:
    ident = ClientIdentity("api_key", key_file)
    by_bearer = ident.pseudonym({"Authorization": "Bearer sk-live-123"}, None)
    assert by_bearer == ident.pseudonym({"X-API-Key": "sk-live-123"}, None)
    assert by_bearer is not None and "sk-live" not in by_bearer
    assert ident.pseudonym({"Authorization": "Basic Zm9vOmJhcg=="}, None) is None
    assert ident.pseudonym(None, "10.0.0.1") is None


def test_client_address_source(key_file: Path) -> None:
    ident = ClientIdentity("client_address", key_file, length=16)
    pseudonym = ident.pseudonym({}, "203.0.113.7")
    assert pseudonym is not None and len(pseudonym.split(":")[1]) == 16
    assert "203.0.113" not in pseudonym
    assert ident.pseudonym({}, None) is None


def test_rotation_is_picked_up_after_the_check_interval(key_file: Path) -> None:
    clock = Clock()
    ident = ClientIdentity("client_address", key_file, check_interval=5.0, clock=clock)
    before = ident.pseudonym(None, "10.0.0.1")
    replacement = key_file.parent / "new.key"
    replacement.write_bytes(KEY_B)
    replacement.replace(key_file)  # atomic swap, as a secret mount does
    clock.now += 1.0
    assert ident.pseudonym(None, "10.0.0.1") == before  # not checked yet: no stat per call
    clock.now += 5.0
    after = ident.pseudonym(None, "10.0.0.1")
    assert after != before and after is not None
    assert after.startswith(key_version(KEY_B) + ":") and ident.key_version == key_version(KEY_B)


def test_a_bad_rotated_key_keeps_the_old_one_and_logs_no_key(
        key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    ident = ClientIdentity("client_address", key_file, check_interval=0.0, clock=clock)
    before = ident.pseudonym(None, "10.0.0.1")
    key_file.write_bytes(b"short")
    with caplog.at_level(logging.INFO):
        clock.now += 1
        assert ident.pseudonym(None, "10.0.0.1") == before
    assert "not rotated" in caplog.text and "short" not in caplog.text
    key_file.unlink()
    clock.now += 1
    assert ident.pseudonym(None, "10.0.0.1") == before


def test_start_up_errors(tmp_path: Path, key_file: Path) -> None:
    with pytest.raises(IdentityError, match="cannot be read"):
        ClientIdentity("api_key", tmp_path / "missing.key")
    (tmp_path / "short.key").write_bytes(b"tiny")
    with pytest.raises(IdentityError, match="at least 16 bytes"):
        ClientIdentity("api_key", tmp_path / "short.key")
    for source in ("header:", "cookie", "x-client-id"):
        with pytest.raises(IdentityError, match="expected header:<name>"):
            ClientIdentity(source, key_file)
