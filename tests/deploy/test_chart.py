"""The Helm chart, rendered by real Helm: the invariants of issue 6 on the manifests, for
the default values and for each override a platform engineer is expected to use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from deploy_support import (
    BASE_VALUES,
    CHART_DIR,
    CUSTOM_PROFILE,
    DETECTORS,
    KAFKA_TLS_SASL,
    PROFILE_TEXT,
    SCENARIOS,
    SECRET_MARKERS,
    Rendered,
    chart,
    deep_merge,
    example_values,
    render,
    scenario,
)
from prometheus_client import generate_latest

from sidecar.config import load_settings
from sidecar.privacy.profile import load_profile
from sidecar.telemetry import Metrics


@pytest.fixture(scope="module", params=list(SCENARIOS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return scenario(request.param)


# --- every scenario ---------------------------------------------------------------------

def test_service_exposes_only_the_sidecar_proxy_port(rendered: Rendered) -> None:
    service = rendered.one("Service", "inference-sidecar")
    sidecar_ports = {p["name"]: p["containerPort"] for p in rendered.container("sidecar")["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["proxy"]
    assert sidecar_ports["proxy"] == int(rendered.sidecar_config()["listen"].split(":")[1])
    assert service["spec"]["selector"].items() <= rendered.pod["metadata"]["labels"].items()
    # Nothing in the pod publishes the model's port; other Services only the admin port.
    assert "ports" not in rendered.container("model")
    for other in rendered.all("Service"):
        if other is not service:
            assert [p["targetPort"] for p in other["spec"]["ports"]] == ["admin"]


def test_the_model_is_reached_on_localhost_only(rendered: Rendered) -> None:
    config = rendered.sidecar_config()
    port = rendered.values["model"].get("port", 8000)
    assert config["upstream_url"] == f"http://127.0.0.1:{port}"
    env = {e["name"]: e.get("value") for e in rendered.container("model")["env"]}
    assert env["MODEL_HOST"] == "127.0.0.1" and env["MODEL_PORT"] == str(port)


def _check_restricted(pod_sc: dict[str, Any], container: dict[str, Any]) -> None:
    """The Kubernetes "restricted" Pod Security Standard (v1.30), for one container."""
    sc = container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, container["name"]
    assert sc.get("runAsUser", pod_sc.get("runAsUser")) not in (0, None), container["name"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert "ALL" in sc["capabilities"]["drop"]
    assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
    assert seccomp["type"] in ("RuntimeDefault", "Localhost")
    assert sc["readOnlyRootFilesystem"] is True  # beyond the standard: the issue asks it


def test_pod_and_both_containers_meet_the_restricted_standard(rendered: Rendered) -> None:
    spec = rendered.pod["spec"]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host)
    allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
               "persistentVolumeClaim", "projected", "secret"}
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= allowed, volume
    assert [c["name"] for c in spec["containers"]] == ["model", "sidecar"]
    assert not spec.get("initContainers")
    for container in spec["containers"]:
        _check_restricted(pod_sc, container)
        assert "hostPort" not in str(container.get("ports", ""))
    assert spec["automountServiceAccountToken"] is False
    assert rendered.one("ServiceAccount")["automountServiceAccountToken"] is False


def test_identity_labels_are_on_the_pod(rendered: Rendered) -> None:
    identity = rendered.values["identity"]
    labels = rendered.pod["metadata"]["labels"]
    assert labels["model-name"] == identity["modelName"]
    assert labels["model-version"] == str(identity["modelVersion"])
    assert labels["evidence-bundle-id"] == identity["evidenceBundleId"]
    assert labels["risk-tier"] == identity["riskTier"]
    config = rendered.sidecar_config()
    assert (config["model_name"], config["model_version"], config["policy_version"],
            config["evidence_bundle_id"]) == (
        identity["modelName"], str(identity["modelVersion"]), identity["policyVersion"],
        identity["evidenceBundleId"])


def test_probes_use_the_admin_port(rendered: Rendered) -> None:
    sidecar = rendered.container("sidecar")
    admin = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["admin"]
    assert rendered.sidecar_config()["admin_listen"] == f"0.0.0.0:{admin}"
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert sidecar["startupProbe"]["httpGet"]["port"] == "admin"
    # The model binds 127.0.0.1: its readiness is the sidecar's, which probes it. By
    # number: the kubelet looks a named port up in the probed container's own ports.
    assert rendered.container("model")["readinessProbe"]["httpGet"] == {
        "path": "/readyz", "port": admin}


def test_resources_are_set_on_both_containers(rendered: Rendered) -> None:
    for name in ("model", "sidecar"):
        resources = rendered.container(name)["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (name, kind)


def test_pdb_covers_the_pods(rendered: Rendered) -> None:
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        rendered.pod["metadata"]["labels"].items())
    assert pdb["spec"]["maxUnavailable"] == 1


def test_the_write_ahead_log_is_on_a_mounted_volume(rendered: Rendered) -> None:
    config = rendered.sidecar_config()
    mounts = rendered.mounts("sidecar")
    (data,) = [m for path, m in mounts.items() if config["wal_dir"].startswith(path + "/")]
    assert config["events_file"].startswith(data["mountPath"] + "/")
    assert not data.get("readOnly")
    volume = rendered.volume(data["name"])
    assert volume.get("emptyDir", {}).get("sizeLimit") or set(volume) - {"name", "emptyDir"}
    # Scratch space under the read-only root, in both containers.
    assert "/tmp" in mounts and "/tmp" in rendered.mounts("model")
    assert rendered.mounts("sidecar")["/etc/inference-sidecar/config"]["readOnly"] is True


def test_no_secret_value_in_env_or_manifests(rendered: Rendered) -> None:
    assert not rendered.all("Secret"), "the chart never holds secrets; it mounts them"
    for container in rendered.pod["spec"]["containers"]:
        for env in container.get("env", []):
            assert "secretKeyRef" not in env.get("valueFrom", {}), env
            assert not re.search(r"(?i)pass|secret|token|key", env["name"]), env
        assert "envFrom" not in container
    text = rendered.yaml_text()
    assert not any(marker in text for marker in SECRET_MARKERS)


def test_the_rendered_config_is_a_valid_sidecar_config(
    rendered: Rendered, tmp_path: Path
) -> None:
    # The mounted files, where the pod would have them (load_settings checks they exist).
    text = rendered.one("ConfigMap", "-config")["data"]["sidecar.yaml"]
    text = text.replace("/etc/inference-sidecar", str(tmp_path / "etc"))
    for key, value in yaml.safe_load(text).items():
        if key.endswith(("_file", "cafile", "certfile", "keyfile")) and key != "events_file":
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            Path(value).write_bytes(b"k" * 32)
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    env = {e["name"]: e["value"] for e in rendered.container("sidecar")["env"]}
    assert env["SIDECAR_CONFIG"] == "/etc/inference-sidecar/config/sidecar.yaml"
    settings = load_settings(str(path), environ={})
    assert settings.upstream_url.startswith("http://127.0.0.1:")
    assert settings.listen[0] == settings.admin_listen[0] == "0.0.0.0"
    grace = rendered.pod["spec"]["terminationGracePeriodSeconds"]
    pre_stop = rendered.container("sidecar")["lifecycle"]["preStop"]["sleep"]["seconds"]
    # requests get drain_timeout, then the event flush up to drain_timeout more
    assert grace > 2 * settings.drain_timeout + pre_stop + 5, "SIGKILL would cut the drain"
    # the model serves until the last request the sidecar may relay has had its time
    model_stop = rendered.container("model")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert model_stop >= pre_stop + settings.drain_timeout, "the model would stop first"


def test_network_policy_admits_only_the_sidecar_ports(rendered: Rendered) -> None:
    policy = rendered.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= (
        rendered.pod["metadata"]["labels"].items())
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ports = {p["name"]: p["containerPort"] for p in rendered.container("sidecar")["ports"]}
    ingress_ports = [port["port"] for rule in policy["ingress"] for port in rule["ports"]]
    assert sorted(ingress_ports) == sorted(ports.values())
    dns, *rest = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    kafka = rendered.values.get("kafka", {})
    if kafka.get("bootstrap"):
        (brokers,) = rest
        assert [t["ipBlock"]["cidr"] for t in brokers["to"]] == kafka["egress"]["cidrs"]
        assert [p["port"] for p in brokers["ports"]] == kafka["egress"]["ports"]
    else:
        assert rest == []


# --- overrides --------------------------------------------------------------------------

def test_kafka_tls_and_sasl_come_from_mounted_secret_files() -> None:
    rendered = scenario("kafka-tls-sasl")
    config = rendered.sidecar_config()
    mounts = rendered.mounts("sidecar")
    assert config["kafka_bootstrap"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert config["kafka_security_protocol"] == "sasl_ssl"
    assert config["kafka_client"] == "librdkafka"
    assert config["kafka_sasl_mechanism"] == "scram-sha-512"
    expected = {
        "kafka_ssl_cafile": ("kafka-tls", "ca.crt"), "kafka_ssl_certfile": ("kafka-tls", "tls.crt"),
        "kafka_ssl_keyfile": ("kafka-tls", "tls.key"),
        "kafka_sasl_username_file": ("kafka-sasl", "username"),
        "kafka_sasl_password_file": ("kafka-sasl", "password"),
    }
    for key, (secret, file) in expected.items():
        directory, _, name = config[key].rpartition("/")
        assert name == file and mounts[directory]["readOnly"] is True, key
        volume = rendered.volume(mounts[directory]["name"])
        assert volume["secret"]["secretName"] == secret
        assert volume["secret"]["defaultMode"] == 0o440
    assert not any("password" in k and "file" not in k for k in config)


def test_kafka_credentials_from_a_csi_volume() -> None:
    csi = {"csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                   "volumeAttributes": {"secretProviderClass": "kafka"}}}
    rendered = render(deep_merge(KAFKA_TLS_SASL, {
        "kafka": {"sasl": {"secretName": "", "volume": csi}}}))
    assert rendered.volume("kafka-sasl") == {"name": "kafka-sasl", **csi}


def test_a_custom_privacy_profile_is_mounted_and_selected(tmp_path: Path) -> None:
    rendered = scenario("custom-profile")
    config = rendered.sidecar_config()
    data = rendered.one("ConfigMap", "-privacy-profiles")["data"]
    assert data == {"team.yaml": PROFILE_TEXT}
    path = "/etc/inference-sidecar/privacy-profiles/team.yaml"
    assert config["privacy_profile"] == path
    assert config["privacy_profile_routes"] == {"/v1/embeddings": "metadata-only",
                                                "/v1/chat/completions": path}
    assert rendered.mounts("sidecar")["/etc/inference-sidecar/privacy-profiles"]["readOnly"]
    # The profile text the chart ships is one the sidecar accepts.
    (tmp_path / "team.yaml").write_text(data["team.yaml"])
    assert load_profile(tmp_path / "team.yaml").name == "team-profile"
    assert "privacy-profiles" not in str(render().pod["spec"]["volumes"])


def test_detectors_are_mounted_and_named_only_when_set() -> None:
    rendered = scenario("detectors")
    data = rendered.one("ConfigMap", "-detectors")["data"]
    assert data == {"detectors.yaml": DETECTORS["detectors"]}
    env = {e["name"]: e["value"] for e in rendered.container("sidecar")["env"]}
    assert env["SIDECAR_DETECTORS"] == "/etc/inference-sidecar/detectors/detectors.yaml"
    assert rendered.mounts("sidecar")["/etc/inference-sidecar/detectors"]["readOnly"] is True
    default = render()
    assert "SIDECAR_DETECTORS" not in str(default.container("sidecar")["env"])
    assert not [c for c in default.all("ConfigMap") if c["metadata"]["name"].endswith("-detectors")]


def test_service_monitor_scrapes_the_admin_port() -> None:
    rendered = scenario("service-monitor")
    monitor = rendered.one("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("admin", "/metrics")
    metrics = rendered.one("Service", "-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        metrics["metadata"]["labels"].items())
    assert monitor["spec"]["podTargetLabels"] == [
        "model-name", "model-version", "evidence-bundle-id", "risk-tier"]
    assert not render().all("ServiceMonitor")


EDITED_PROFILE = deep_merge(CUSTOM_PROFILE, {"privacyProfiles": {"custom": {
    "team.yaml": PROFILE_TEXT.replace("retention_class: metadata", "retention_class: short")}}})


@pytest.mark.parametrize(("before", "after", "changes"), [
    ({}, {"sidecar": {"drainTimeout": "20s"}}, "checksum/config"),
    ({}, {"kafka": KAFKA_TLS_SASL["kafka"]}, "checksum/config"),
    (CUSTOM_PROFILE, EDITED_PROFILE, "checksum/privacy-profiles"),
    (DETECTORS, {"detectors": "detectors: []\n"}, "checksum/detectors"),
    ({}, {"podLabels": {"team": "risk"}}, None),
])
def test_checksums_roll_the_pods_when_a_file_changes(
    before: dict[str, Any], after: dict[str, Any], changes: str | None
) -> None:
    old = render(before).pod["metadata"]["annotations"]
    new = render(deep_merge(before, after)).pod["metadata"]["annotations"]
    checksums = [k for k in old if k.startswith("checksum/")]
    assert len(checksums) == 3
    assert [k for k in checksums if old[k] != new[k]] == ([changes] if changes else [])


def test_a_version_that_looks_like_a_number_stays_a_string() -> None:
    rendered = render({"identity": {"modelVersion": "1.10"}})
    assert rendered.sidecar_config()["model_version"] == "1.10"
    assert rendered.pod["metadata"]["labels"]["model-version"] == "1.10"


def test_images_must_be_pinned_by_digest() -> None:
    with pytest.raises(helm_python.HelmError, match=r"model\.image\.digest is required"):
        render({"model": {"image": {"digest": ""}}})
    with pytest.raises(helm_python.HelmError, match=r"sidecar\.image\.digest is required"):
        render({"sidecar": {"image": {"digest": ""}}})
    relaxed = render({"images": {"requireDigest": False}, "model": {"image": {"digest": ""}}})
    assert relaxed.container("model")["image"] == "ghcr.io/acme/scorer:2.3.1"
    pinned = render().container("sidecar")["image"]
    assert re.fullmatch(r"ghcr\.io/.+:0\.1\.0@sha256:[0-9a-f]{64}", pinned)


def test_kafka_without_broker_cidrs_is_refused_under_the_network_policy() -> None:
    kafka = deep_merge(KAFKA_TLS_SASL, {"kafka": {"egress": {"cidrs": []}}})
    with pytest.raises(helm_python.HelmError, match=r"kafka\.egress\.cidrs is required"):
        render(kafka)
    render(deep_merge(kafka, {"networkPolicy": {"enabled": False}}))


def test_a_broker_port_the_network_policy_would_block_is_refused() -> None:
    kafka = deep_merge(KAFKA_TLS_SASL, {"kafka": {"bootstrap": "kafka-0.kafka:9093,k:9094"}})
    with pytest.raises(helm_python.HelmError, match=r"kafka\.egress\.ports must include "
                       r"9094 \(kafka\.bootstrap k:9094\)"):
        render(kafka)
    render(deep_merge(kafka, {"kafka": {"egress": {"ports": [9093, 9094]}}}))


def test_model_args_may_refer_to_values() -> None:
    rendered = render({"model": {"port": 8123,
                                 "args": ["--port", "{{ .Values.model.port }}"]}})
    assert rendered.container("model")["args"] == ["--port", "8123"]
    assert rendered.sidecar_config()["upstream_url"] == "http://127.0.0.1:8123"


def test_extra_config_cannot_move_the_upstream_off_localhost() -> None:
    rendered = render({"sidecar": {"extraConfig": {"upstream_url": "http://evil:80",
                                                   "stamp_body": True}}})
    config = rendered.sidecar_config()
    assert config["upstream_url"] == "http://127.0.0.1:8000" and config["stamp_body"] is True


# --- dashboard, lint, example -----------------------------------------------------------

def _real_metric_names() -> set[str]:
    metrics = Metrics({k: "x" for k in ("model_name", "model_version", "policy_version",
                                         "evidence_bundle_id")})
    text = generate_latest(metrics.registry).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))


def test_dashboard_ships_as_a_labelled_configmap_with_real_metric_names() -> None:
    config_map = render().one("ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["inference-sidecar.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m)
            for m in re.findall(r"\binference_sidecar_\w+", " ".join(exprs))}
    assert used <= _real_metric_names(), used - _real_metric_names()
    assert {"inference_sidecar_drift_status", "inference_sidecar_alerts_total"} <= used
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "latency", "stamped versions", "delivery lag", "dropped",
                  "drift", "alerts"):
        assert topic in titles, topic


def test_helm_lint_is_clean_with_the_example_values() -> None:
    report = helm_python.lint(CHART_DIR, example_values(), strict=True, namespace="models")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_example_values_file_renders_a_complete_install() -> None:
    rendered = scenario("example")
    kinds = sorted({o["kind"] for o in rendered.objects})
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
                     "Service", "ServiceAccount", "ServiceMonitor"]
    assert rendered.sidecar_config()["client_id_key_file"].startswith(
        "/etc/inference-sidecar/client-id/")
    assert yaml.safe_load(json.dumps(BASE_VALUES))  # the fixture itself is plain data


def test_every_model_probe_on_the_admin_port_gets_its_number() -> None:
    # named ports are looked up in the probed container's own ports: the model has none
    probe = {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 5}
    tcp = {"tcpSocket": {"port": "admin"}}
    rendered = render({"model": {"readinessProbe": probe, "livenessProbe": tcp,
                                 "startupProbe": probe}, "sidecar": {"adminPort": 9191}})
    model = rendered.container("model")
    for kind in ("readinessProbe", "startupProbe"):
        assert model[kind]["httpGet"] == {"path": "/readyz", "port": 9191}
        assert model[kind]["periodSeconds"] == 5
    assert model["livenessProbe"] == {"tcpSocket": {"port": 9191}}
    other = {"exec": {"command": ["true"]}}
    assert render({"model": {"livenessProbe": other}}).container("model")["livenessProbe"] \
        == other


def test_a_readiness_probe_of_another_kind_replaces_the_default_httpget() -> None:
    # Values merge over the default {httpGet: /readyz}: both handlers would be rendered,
    # and the API server refuses a probe with two.
    model = render({"model": {"readinessProbe": {"exec": {"command": ["/bin/ready"]}}}}) \
        .container("model")
    assert model["readinessProbe"] == {"exec": {"command": ["/bin/ready"]},
                                       "periodSeconds": 10, "failureThreshold": 3}


@pytest.mark.parametrize("ports", [
    {"sidecar": {"port": 8000}}, {"sidecar": {"adminPort": 8000}},
    {"sidecar": {"adminPort": 8080}}])
def test_ports_that_collide_in_the_pod_are_refused(ports: dict[str, Any]) -> None:
    # One network namespace: the second listener would fail to bind, a crash loop.
    with pytest.raises(helm_python.HelmError, match=r"model\.port \(8000\), sidecar\.port "
                       r"\(\d+\) and sidecar\.adminPort \(\d+\) must differ"):
        render(ports)


@pytest.mark.parametrize("release", ["1234", "r" * 53])
def test_any_valid_release_name_renders_valid_names_and_labels(release: str) -> None:
    values = deep_merge(BASE_VALUES, {"serviceMonitor": {"enabled": True}})
    files = chart().render(values, name=release, namespace="models")
    objects = [doc for path, text in files.items() if path.endswith(".yaml")
               for doc in yaml.safe_load_all(text) if doc]
    for obj in objects:
        if obj["kind"] == "Service":  # a DNS label (ConfigMaps may have 253 characters)
            assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        for value in obj["metadata"].get("labels", {}).values():
            assert isinstance(value, str), obj["metadata"]  # "1234" must not be a number
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] \
        == release
