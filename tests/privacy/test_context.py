"""The privacy settings applied on the request path (``sidecar/privacy/context.py``):
profile identity on every event, the pseudonymous client id, the client address; and the
payload capture they set up, masked by the pipeline's privacy stage in its worker process
(``tests/pipeline/test_privacy_stage.py`` covers that stage on its own).

Real sidecars in front of the real test upstream; events read back from the sink and
validated against the event schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.privacy.context import build_privacy
from sidecar.privacy.profile import load_profile

CHAT = {"messages": [{"role": "user", "content": "hello"}]}
PSEUDONYM = re.compile(r"^[0-9a-f]{8}:[0-9a-f]{32}$")
IDENTITY = {
    "SIDECAR_MODEL_NAME": "m", "SIDECAR_MODEL_VERSION": "1", "SIDECAR_POLICY_VERSION": "p",
    "SIDECAR_EVIDENCE_BUNDLE_ID": "e",
}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "client-id.key"
    path.write_bytes(b"0123456789abcdef0123456789abcdef")
    return path


async def post(url: str, headers: dict[str, str] | None = None,
               path: str = "/v1/chat/completions") -> int:
    async with aiohttp.ClientSession() as s, s.post(url + path, json=CHAT,
                                                    headers=headers) as r:
        await r.read()
        return r.status


async def test_strict_default_records_its_profile_and_no_client_address(
    make_sidecar: Any,
) -> None:
    assert settings_with().privacy_profile == "strict"  # the default, when nothing is set
    sc = await make_sidecar(privacy_profile="strict")
    await post(sc.url)
    (event,) = await sc.validated_events(1)
    strict = load_profile("strict")
    assert {k: event["privacy"][k] for k in ("profile", "profile_digest", "retention_class")
            } == {"profile": "strict", "profile_digest": strict.digest,
                  "retention_class": strict.retention_class}
    assert event["client_address"] is None  # strict redacts IP addresses
    assert event["client_id"] is None  # no identity source configured


async def test_a_profile_that_keeps_addresses_records_them(make_sidecar: Any) -> None:
    sc = await make_sidecar(privacy_profile="metadata-only")
    await post(sc.url)
    (event,) = await sc.validated_events(1)
    assert event["privacy"]["profile"] == "metadata-only"
    assert event["client_address"] == "127.0.0.1"


async def test_per_route_profiles(make_sidecar: Any) -> None:
    sc = await make_sidecar(privacy_profile="strict",
                            privacy_profile_routes="/v1/embeddings=metadata-only")
    assert await post(sc.url) == 200
    assert await post(sc.url, path="/v1/embeddings") == 404  # the test upstream has none
    events = await sc.validated_events(2)
    by_route = {e["route"]: e["privacy"]["profile"] for e in events}
    assert by_route == {"/v1/chat/completions": "strict", "/v1/embeddings": "metadata-only"}


async def test_client_id_is_a_stable_keyed_pseudonym_never_the_raw_identity(
    make_sidecar: Any, key_file: Path
) -> None:
    sc = await make_sidecar(client_id_source="header:x-client-id",
                            client_id_key_file=str(key_file))
    for client in ("alice-7f3", "alice-7f3", "bob-91c", None):
        await post(sc.url, {"x-client-id": client} if client else None)
    events = await sc.validated_events(4)
    ids = [e["client_id"] for e in events]
    assert ids[0] == ids[1] and ids[0] != ids[2] and ids[3] is None
    assert all(PSEUDONYM.match(i) for i in ids[:3])
    for envelope in sc.envelopes():
        text = orjson.dumps(envelope)
        assert b"alice-7f3" not in text and b"bob-91c" not in text


async def test_the_pseudonym_changes_with_the_key(
    make_sidecar: Any, key_file: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(b"fedcba9876543210fedcba9876543210")
    first = await make_sidecar(client_id_source="api_key", client_id_key_file=str(key_file))
    second = await make_sidecar(client_id_source="api_key", client_id_key_file=str(other))
    for sc in (first, second):
        await post(sc.url, {"authorization": "Bearer sk-test-123456"})
    (a,), (b,) = await first.validated_events(1), await second.validated_events(1)
    assert a["client_id"] != b["client_id"]
    assert a["client_id"].split(":")[0] != b["client_id"].split(":")[0]  # key version


def settings_with(**values: str) -> Any:
    env = dict(IDENTITY)
    env.update({f"SIDECAR_{k.upper()}": v for k, v in values.items()})
    return load_settings(environ=env)


@pytest.mark.parametrize(("values", "expected"), [
    ({"privacy_profile": "no-such-profile"}, "privacy_profile: privacy profile"),
    # One setting each, so that the error can say where it came from (it named both).
    ({"privacy_profile_routes": "/v1/embeddings=nope"},
     "privacy_profile_routes: privacy profile nope"),
    ({"privacy_profile": "nope", "privacy_profile_routes": "/v1/embeddings=standard"},
     "privacy_profile: privacy profile nope"),
])
def test_an_unknown_profile_is_refused_naming_the_setting(
    values: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_privacy(settings_with(**values))


def test_a_bad_profile_file_names_file_key_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(load_profile("strict").source).read_text()
                    .replace("sample_rate: 0.05", "sample_rate: 1.5"))
    with pytest.raises(ConfigError) as caught:
        build_privacy(settings_with(privacy_profile=str(bad)))
    message = str(caught.value)
    assert str(bad) in message and "sample_rate" in message


def test_a_profile_may_not_record_the_identity_header(tmp_path: Path, key_file: Path) -> None:
    """The raw client identity is never recorded: not even beside its pseudonym."""
    profile = tmp_path / "p.yaml"
    profile.write_text(Path(load_profile("strict").source).read_text()
                       .replace("allow: [content-type,", "allow: [X-Client-Id, content-type,"))
    assert "x-client-id" in load_profile(profile).headers_allow
    with pytest.raises(ConfigError, match="records the x-client-id header, which "
                                          "client_id_source pseudonymises"):
        build_privacy(settings_with(privacy_profile=str(profile),
                                    client_id_source="header:X-Client-Id",
                                    client_id_key_file=str(key_file)))
    assert build_privacy(settings_with(privacy_profile=str(profile),
                                       client_id_source="client_address",
                                       client_id_key_file=str(key_file))).identity


def test_identity_settings_are_checked(tmp_path: Path, key_file: Path) -> None:
    with pytest.raises(ConfigError, match="SIDECAR_CLIENT_ID_SOURCE: expected header:<name>"):
        settings_with(client_id_source="cookie")
    with pytest.raises(ConfigError, match=r"client_id_key_file \(not set\): expected a key file"):
        settings_with(client_id_source="api_key")
    with pytest.raises(ConfigError, match="SIDECAR_CLIENT_ID_KEY_FILE: expected a readable file"):
        settings_with(client_id_source="api_key", client_id_key_file=str(tmp_path / "x"))
    short = tmp_path / "short.key"
    short.write_bytes(b"too-short")
    with pytest.raises(ConfigError, match=r"client_id_key_file: .*at least 16 bytes"):
        build_privacy(settings_with(client_id_source="api_key",
                                    client_id_key_file=str(short)))
    assert build_privacy(settings_with(client_id_source="client_address",
                                       client_id_key_file=str(key_file))).identity


def test_routes_setting_from_yaml_mapping_and_string() -> None:
    from sidecar.config.parsers import route_map

    assert route_map({"/a": "strict", "/b/{id}": "standard"}) == (
        ("/a", "strict"), ("/b/{id}", "standard"))
    assert route_map("/a=strict, /b=standard") == (("/a", "strict"), ("/b", "standard"))
    for bad in ("/a", "a=strict", {"/a": 3}, ["/a"]):
        with pytest.raises(ValueError, match="route templates"):
            route_map(bad)
