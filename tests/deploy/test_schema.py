"""values.schema.json: a wrong value fails at install time (Helm validates before it
renders), naming the key."""

from __future__ import annotations

import json
from typing import Any

import helm_python
import pytest
from deploy_support import BASE_VALUES, CHART_DIR, chart, deep_merge, render

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "missing identity": ({"identity": {"evidenceBundleId": ""}}, "/identity/evidenceBundleId"),
    "bad risk tier": ({"identity": {"riskTier": "extreme"}}, "/identity/riskTier"),
    "label-unsafe version": ({"identity": {"modelVersion": "2.3 beta"}},
                             "/identity/modelVersion"),
    "version too long for a label": ({"identity": {"modelVersion": "v" * 64}},
                                     "/identity/modelVersion"),
    "negative replicas": ({"replicaCount": -1}, "/replicaCount"),
    "replicas as text": ({"replicaCount": "two"}, "/replicaCount"),
    "bad digest": ({"model": {"image": {"digest": "sha256:abc"}}}, "/model/image/digest"),
    "latest tag": ({"model": {"image": {"tag": "latest"}}}, "/model/image/tag"),
    "no model image": ({"model": {"image": {"repository": ""}}}, "/model/image/repository"),
    "port out of range": ({"model": {"port": 70000}}, "/model/port"),
    "unknown durability": ({"sidecar": {"durability": "eventually"}}, "/sidecar/durability"),
    "unknown when_full": ({"sidecar": {"whenFull": "panic"}}, "/sidecar/whenFull"),
    "bad duration": ({"sidecar": {"drainTimeout": "soon"}}, "/sidecar/drainTimeout"),
    # what the sidecar would refuse at start-up: a crash loop, not an install error
    "zero drain timeout": ({"sidecar": {"drainTimeout": "0s"}}, "/sidecar/drainTimeout"),
    "zero log size": ({"sidecar": {"walMaxBytes": "0GiB"}}, "/sidecar/walMaxBytes"),
    # every replica and the rollout's surge pod on one claim: the second cannot lock it
    "a shared claim for the log": (
        {"wal": {"volume": {"persistentVolumeClaim": {"claimName": "wal"}}}}, "/wal/volume"),
    "bad client id source": ({"sidecar": {"clientIdSource": "cookie"}},
                             "/sidecar/clientIdSource"),
    "header source without a name": ({"sidecar": {"clientIdSource": "header:"}},
                                     "/sidecar/clientIdSource"),
    "client id source without a key secret": (
        {"sidecar": {"clientIdSource": "header:x-client-id"}}, "/clientIdKey"),
    "client id key as a value": (
        {"sidecar": {"clientIdSource": "api_key"},
         "clientIdKey": {"secretName": "k", "key": "hmac-key-material"}}, "/clientIdKey"),
    "client id key file outside its directory": (
        {"clientIdKey": {"secretName": "k", "keyFile": ".."}}, "/clientIdKey/keyFile"),
    "hash key as a value": ({"privacyHashKey": {"value": "hmac-key-material"}},
                            "/privacyHashKey"),
    "hash key with an empty file name": ({"privacyHashKey": {"secretName": "k", "keyFile": ""}},
                                         "/privacyHashKey/keyFile"),
    "client id around the chart": (
        {"sidecar": {"extraConfig": {"client_id_source": "api_key"}}},
        "invalid propertyName 'client_id_source'"),
    # no NetworkPolicy egress, no TLS/SASL mounts: events would pile up in the log
    "brokers around the chart": (
        {"sidecar": {"extraConfig": {"kafka_bootstrap": "k:9092"}}},
        "invalid propertyName 'kafka_bootstrap'"),
    "hash key path around the chart": (
        {"sidecar": {"extraConfig": {"privacy_hash_key_file": "/tmp/k"}}},
        "invalid propertyName 'privacy_hash_key_file'"),
    "privileged sidecar": ({"sidecar": {"securityContext": {"privileged": True}}},
                           "/sidecar/securityContext/privileged"),
    "writable sidecar root": (
        {"sidecar": {"securityContext": {"readOnlyRootFilesystem": False}}},
        "/sidecar/securityContext/readOnlyRootFilesystem"),
    "model as root": ({"model": {"securityContext": {"runAsUser": 0}}},
                      "/model/securityContext/runAsUser"),
    "model escalating": ({"model": {"securityContext": {"allowPrivilegeEscalation": True}}},
                         "/model/securityContext/allowPrivilegeEscalation"),
    "added capability": ({"model": {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}},
                         "/model/securityContext/capabilities/add"),
    "unconfined seccomp": (
        {"model": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}},
        "/model/securityContext/seccompProfile/type"),
    "secret into model env": (
        {"model": {"env": [{"name": "API_KEY", "valueFrom": {
            "secretKeyRef": {"name": "s", "key": "k"}}}]}}, "/model/env/0/valueFrom"),
    "a password as a value": ({"kafka": {"sasl": {"password": "s3cr3t-password"}}},
                              "/kafka/sasl"),
    "sasl without credentials": (
        {"kafka": {"bootstrap": "k:9093", "securityProtocol": "sasl_ssl",
                   "sasl": {"mechanism": "plain"}}}, "/kafka/sasl"),
    "sasl mechanism over plaintext": (
        {"kafka": {"bootstrap": "k:9093", "sasl": {"mechanism": "plain", "secretName": "s"}}},
        "/kafka/securityProtocol"),
    "bad bootstrap": ({"kafka": {"bootstrap": "kafka without port"}}, "/kafka/bootstrap"),
    "unknown kafka client": ({"kafka": {"client": "franz-go"}}, "/kafka/client"),
    "bad broker cidr": ({"kafka": {"egress": {"cidrs": ["kafka.internal"]}}},
                        "/kafka/egress/cidrs/0"),
    "bad profile file name": ({"privacyProfiles": {"custom": {"../x.yaml": "name: x"}}},
                              "invalid propertyName '../x.yaml'"),
    "misspelt top-level key": ({"idenity": {"modelName": "x"}}, "idenity"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_values_fail_validation_and_rendering(case: str) -> None:
    override, where = BAD[case]
    values = deep_merge(BASE_VALUES, override)
    with pytest.raises(helm_python.HelmValuesError) as excinfo:
        chart().validate_schema(values)
    assert where in str(excinfo.value), str(excinfo.value)
    with pytest.raises(helm_python.HelmValuesError):
        render(override)


def test_identity_is_required() -> None:
    values = {k: v for k, v in BASE_VALUES.items() if k != "identity"}
    with pytest.raises(helm_python.HelmValuesError, match="identity"):
        chart().validate_schema(values)


def test_the_base_values_are_valid() -> None:
    chart().validate_schema(BASE_VALUES)


def test_every_default_value_is_described_by_the_schema() -> None:
    """``additionalProperties: false`` everywhere the chart owns the keys: a default the
    schema does not know about would make every install fail."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(chart().values) <= set(schema["properties"])
