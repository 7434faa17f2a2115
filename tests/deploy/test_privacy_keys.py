"""The sidecar's privacy keys in the chart: the pseudonymous client id (source + HMAC key)
and the key of the profiles' ``hash`` operator. Like the Kafka credentials, each key comes
from an existing Secret (or volume source) mounted read-only as files; the sidecar config
names only the path. The client-id key directory is mounted whole, never with subPath,
so a rotated Secret reaches the running pod (the sidecar re-reads the key on change)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_support import CLIENT_IDENTITY, HASH_KEY, Rendered, deep_merge, render, scenario

from sidecar.config import load_settings

PRIVACY_KEYS = ("client_id_source", "client_id_key_file", "privacy_hash_key_file")
CLIENT_ID_DIR = "/etc/inference-sidecar/client-id"
HASH_KEY_DIR = "/etc/inference-sidecar/privacy-hash-key"
CSI = {"csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
               "volumeAttributes": {"secretProviderClass": "scorer-keys"}}}


def _key_volume(rendered: Rendered, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sidecar's mount holding the file ``path`` and its volume; checks it is the
    whole volume read-only (no subPath, which would never see a rotated Secret) and that
    no other container mounts it."""
    directory, _, _ = path.rpartition("/")
    mount = rendered.mounts("sidecar")[directory]
    assert mount["readOnly"] is True
    assert "subPath" not in mount and "subPathExpr" not in mount
    for container in rendered.pod["spec"]["containers"]:
        for other in container.get("volumeMounts", []):
            if other["name"] == mount["name"]:
                assert container["name"] == "sidecar" and other is mount, container["name"]
    return mount, rendered.volume(mount["name"])


def test_defaults_set_no_client_identity_and_no_hash_key() -> None:
    rendered = scenario("defaults")
    config = rendered.sidecar_config()
    assert not set(PRIVACY_KEYS) & set(config), config
    volumes = {v["name"] for v in rendered.pod["spec"]["volumes"]}
    assert not volumes & {"client-id-key", "privacy-hash-key"}
    assert CLIENT_ID_DIR not in rendered.mounts("sidecar")
    assert HASH_KEY_DIR not in rendered.mounts("sidecar")


def test_client_identity_reads_its_hmac_key_from_a_mounted_secret() -> None:
    rendered = scenario("client-identity")
    config = rendered.sidecar_config()
    assert config["client_id_source"] == "header:x-client-id"
    assert config["client_id_key_file"] == f"{CLIENT_ID_DIR}/key"
    assert "privacy_hash_key_file" not in config
    mount, volume = _key_volume(rendered, config["client_id_key_file"])
    assert mount["mountPath"] == CLIENT_ID_DIR
    assert volume == {"name": "client-id-key", "secret": {
        "secretName": "scorer-client-id-key", "defaultMode": 0o440}}
    # The key reaches the sidecar only as a file: not in its env, not in a ConfigMap.
    env = rendered.container("sidecar")["env"]
    assert not [e for e in env if "valueFrom" in e or "client-id" in str(e.get("value"))]
    for config_map in rendered.all("ConfigMap"):
        assert "scorer-client-id-key" not in str(config_map["data"])


@pytest.mark.parametrize("source", ["api_key", "client_address", "header:x-tenant"])
def test_every_client_id_source_passes_through(source: str) -> None:
    rendered = render(deep_merge(CLIENT_IDENTITY, {"sidecar": {"clientIdSource": source}}))
    assert rendered.sidecar_config()["client_id_source"] == source


def test_client_id_key_from_a_csi_volume_with_another_file_name() -> None:
    rendered = render({"sidecar": {"clientIdSource": "api_key"},
                       "clientIdKey": {"volume": CSI, "keyFile": "hmac"}})
    config = rendered.sidecar_config()
    assert config["client_id_key_file"] == f"{CLIENT_ID_DIR}/hmac"
    _, volume = _key_volume(rendered, config["client_id_key_file"])
    assert volume == {"name": "client-id-key", **CSI}


def test_a_key_secret_without_a_source_mounts_nothing() -> None:
    rendered = render({"clientIdKey": {"secretName": "scorer-client-id-key"}})
    assert not set(PRIVACY_KEYS) & set(rendered.sidecar_config())
    assert "client-id-key" not in str(rendered.pod["spec"]["volumes"])


def test_the_hash_key_is_a_mounted_secret_file() -> None:
    rendered = scenario("hash-key")
    config = rendered.sidecar_config()
    assert config["privacy_hash_key_file"] == f"{HASH_KEY_DIR}/hash.key"
    assert "client_id_source" not in config and "client_id_key_file" not in config
    _, volume = _key_volume(rendered, config["privacy_hash_key_file"])
    assert volume == {"name": "privacy-hash-key", "secret": {
        "secretName": "scorer-privacy-hash-key", "defaultMode": 0o440}}
    csi = render({"privacyHashKey": {"volume": CSI}})
    assert csi.sidecar_config()["privacy_hash_key_file"] == f"{HASH_KEY_DIR}/key"
    assert csi.volume("privacy-hash-key") == {"name": "privacy-hash-key", **CSI}


def test_both_keys_together_load_as_sidecar_settings(tmp_path: Path) -> None:
    """With the files where the pod mounts them, the sidecar accepts the rendered config."""
    rendered = render(deep_merge(CLIENT_IDENTITY, HASH_KEY))
    config = rendered.sidecar_config()
    text = rendered.one("ConfigMap", "-config")["data"]["sidecar.yaml"]
    text = text.replace("/etc/inference-sidecar", str(tmp_path / "etc"))
    for key in ("client_id_key_file", "privacy_hash_key_file"):
        path = tmp_path / "etc" / config[key].removeprefix("/etc/inference-sidecar/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"k" * 32)
    (tmp_path / "sidecar.yaml").write_text(text)
    settings = load_settings(str(tmp_path / "sidecar.yaml"), environ={})
    assert settings.client_id_source == "header:x-client-id"
    assert settings.client_id_key_file == str(tmp_path / "etc" / "client-id" / "key")
    assert settings.privacy_hash_key_file == str(
        tmp_path / "etc" / "privacy-hash-key" / "hash.key")

