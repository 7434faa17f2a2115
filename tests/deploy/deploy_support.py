"""Helpers shared by the deployment tests: render the chart, pick objects, read the
Dockerfile's instructions."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "inference-sidecar"
EXAMPLES = CHART_DIR / "examples"
DOCKERFILE = ROOT / "Dockerfile"
RELEASE, NAMESPACE = "scorer", "models"

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64

# The least a user must give: the identity and both images pinned by digest.
BASE_VALUES: dict[str, Any] = {
    "identity": {
        "modelName": "credit-scorer",
        "modelVersion": "2.3.1",
        "policyVersion": "pol-7",
        "evidenceBundleId": "eb-2024-11",
        "riskTier": "high",
    },
    "model": {"image": {"repository": "ghcr.io/acme/scorer", "tag": "2.3.1", "digest": DIGEST_A}},
    "sidecar": {"image": {"digest": DIGEST_B}},
}

# Values a test may set that are secret: none may ever appear in a rendered manifest.
SECRET_MARKERS = ("s3cr3t-password", "BEGIN PRIVATE KEY", "hmac-key-material")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


def render_raw(values: Mapping[str, Any]) -> dict[str, str]:
    """Template path -> rendered text (schema validated by Helm first)."""
    return chart().render(dict(values), name=RELEASE, namespace=NAMESPACE)


class Rendered:
    """The objects of one rendering, by kind and name."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.files = render_raw(values)
        self.objects: list[dict[str, Any]] = [
            doc
            for path, text in sorted(self.files.items())
            if path.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.all(kind) if o["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{kind} *{suffix}: {[o['metadata']['name'] for o in found]}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]

    def container(self, name: str) -> dict[str, Any]:
        (found,) = [c for c in self.pod["spec"]["containers"] if c["name"] == name]
        return found

    def sidecar_config(self) -> dict[str, Any]:
        text = self.one("ConfigMap", "-config")["data"]["sidecar.yaml"]
        loaded: dict[str, Any] = yaml.safe_load(text)
        return loaded

    def volume(self, name: str) -> dict[str, Any]:
        (found,) = [v for v in self.pod["spec"]["volumes"] if v["name"] == name]
        return found

    def mounts(self, container: str) -> dict[str, dict[str, Any]]:
        return {m["mountPath"]: m for m in self.container(container).get("volumeMounts", [])}

    def yaml_text(self) -> str:
        return "\n---\n".join(yaml.safe_dump(o) for o in self.objects)


def render(override: Mapping[str, Any] | None = None) -> Rendered:
    return Rendered(deep_merge(BASE_VALUES, override or {}))


def example_values() -> dict[str, Any]:
    (path,) = EXAMPLES.glob("*.yaml")
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


# --- the value sets the tests render ---------------------------------------------------

KAFKA_TLS_SASL = {
    "kafka": {
        "bootstrap": "kafka-0.kafka:9093,kafka-1.kafka:9093",
        "securityProtocol": "sasl_ssl",
        "client": "librdkafka",
        "tls": {"secretName": "kafka-tls", "certFile": "tls.crt", "keyFile": "tls.key"},
        "sasl": {"mechanism": "scram-sha-512", "secretName": "kafka-sasl"},
        "egress": {"cidrs": ["10.40.0.0/16", "10.41.0.0/16"], "ports": [9093]},
    },
}
PROFILE_TEXT = (Path(__file__).resolve().parents[2] / "privacy_profiles" / "metadata-only.yaml"
                ).read_text().replace("name: metadata-only", "name: team-profile")
CUSTOM_PROFILE = {
    "sidecar": {"privacyProfile": "team.yaml",
                "privacyProfileRoutes": {"/v1/embeddings": "metadata-only",
                                         "/v1/chat/completions": "team.yaml"}},
    "privacyProfiles": {"custom": {"team.yaml": PROFILE_TEXT}},
}
DETECTORS = {"detectors": (
    "version: 1\ndetectors:\n  - name: latency-drift\n    type: adwin\n"
    "    feature: latency_ms\n")}
SERVICE_MONITOR = {"serviceMonitor": {"enabled": True}}
CLIENT_IDENTITY = {
    "sidecar": {"clientIdSource": "header:x-client-id"},
    "clientIdKey": {"secretName": "scorer-client-id-key"},
}
HASH_KEY = {"privacyHashKey": {"secretName": "scorer-privacy-hash-key", "keyFile": "hash.key"}}

SCENARIOS = {
    "defaults": {},
    "kafka-tls-sasl": KAFKA_TLS_SASL,
    "custom-profile": CUSTOM_PROFILE,
    "detectors": DETECTORS,
    "service-monitor": SERVICE_MONITOR,
    "client-identity": CLIENT_IDENTITY,
    "hash-key": HASH_KEY,
    "example": None,  # the example values file, as the README installs it
}


def scenario(name: str) -> Rendered:
    if name == "example":
        return Rendered(example_values())
    return render(SCENARIOS[name])


# --- Dockerfile --------------------------------------------------------------------------

def dockerfile_instructions(path: Path = DOCKERFILE) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        instruction, _, args = logical.partition(" ")
        yield instruction.upper(), args.strip()
        logical = ""


def final_stage(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions(path):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages[-1]


def exec_form(args: str) -> list[str]:
    """An exec-form JSON array (ENTRYPOINT, CMD); anything else is a test failure."""
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), args
    return parsed


def image_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ENV of the final stage (``KEY=value`` pairs; values without spaces)."""
    env: dict[str, str] = {}
    for instruction, args in final_stage(path):
        if instruction == "ENV":
            for pair in re.findall(r"(\w+)=(\S+)", args):
                env[pair[0]] = pair[1]
    return env
