"""The Dockerfile, without a Docker engine: hadolint, and the hardening issue 6 asks for,
checked instruction by instruction (and against the chart that runs the image)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from deploy_support import (
    DOCKERFILE,
    ROOT,
    chart,
    dockerfile_instructions,
    exec_form,
    final_stage,
    image_env,
)

BIN = Path(sys.executable).parent


def test_hadolint_has_no_findings() -> None:
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_stage_starts_from_a_base_pinned_by_digest() -> None:
    froms = [args for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime"
    for args in froms:
        assert re.match(r"\S+:\S+@sha256:[0-9a-f]{64}(\s|$)", args), args
    assert "distroless" in froms[-1], "the runtime has no shell or package manager"


def test_the_runtime_stage_is_locked_down() -> None:
    stage = final_stage()
    instructions = [i for i, _ in stage]
    # No RUN: the runtime image has no shell to run it with; only the builder's venv.
    assert "RUN" not in instructions
    for instruction, args in stage:
        if instruction == "COPY":
            assert args.startswith("--from=builder"), args
    (user,) = [args for i, args in stage if i == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 10000 and gid.isdigit() and int(gid) != 0
    assert dict(stage)["STOPSIGNAL"] == "SIGTERM"
    assert exec_form(dict(stage)["ENTRYPOINT"]) == ["/opt/venv/bin/inference-sidecar"]
    assert exec_form(dict(stage)["CMD"]) == ["serve"]
    healthcheck = dict(stage)["HEALTHCHECK"]
    exec_form(healthcheck.split(" CMD ", 1)[1])  # exec form too: there is no shell


def test_read_only_root_filesystem_friendly_environment() -> None:
    env = image_env()
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    # An image SIDECAR_* variable would beat the chart's config file: there is none.
    assert not [k for k in env if k.startswith("SIDECAR_")]


def test_oci_labels() -> None:
    labels = " ".join(args for i, args in final_stage() if i == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses",
                "source", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_image_and_chart_agree() -> None:
    """The image's user, ports and working directory are the ones the chart relies on."""
    stage = dict(final_stage())
    values = chart().values
    assert stage["USER"] == "65532:65532"
    assert sorted(int(p) for p in stage["EXPOSE"].split()) == sorted(
        [values["sidecar"]["port"], values["sidecar"]["adminPort"]])
    assert stage["WORKDIR"] == "/var/lib/inference-sidecar"  # the chart's data volume
    deployment = (ROOT / "helm/inference-sidecar/templates/_helpers.tpl").read_text()
    assert "data: /var/lib/inference-sidecar" in deployment
    assert "runAsUser: 65532" in (
        ROOT / "helm/inference-sidecar/templates/deployment.yaml").read_text()


def test_dockerignore_is_an_allow_list_of_what_the_build_copies() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "deny everything, then allow what the wheel is built from"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources: set[str] = set()
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            *srcs, _dest = args.split()
            sources.update(s.rstrip("/") for s in srcs)
    assert sources == allowed
    for source in sources:
        assert (ROOT / source).exists(), source


def test_the_image_installs_exactly_the_locked_dependencies_before_the_source() -> None:
    """requirements-image.txt pins every runtime requirement of pyproject.toml (the
    librdkafka extra too) within its range; the builder installs the lock with --no-deps
    before it copies the source, then the wheel alone."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned: dict[str, str] = {}
    for line in (ROOT / "requirements-image.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[\w.!+-]+", version), line
            pinned[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = [*project["dependencies"], *project["optional-dependencies"]["librdkafka"]]
    for text in needed:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in requirements-image.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{requirement.name}=={pinned[name]} is outside {requirement.specifier}")
    builder = [(i, a) for i, a in dockerfile_instructions() if i in ("COPY", "RUN")]
    lock_copy = builder.index(("COPY", "requirements-image.txt ./"))
    source_copy = next(n for n, (i, a) in enumerate(builder) if a.startswith("sidecar "))
    installs = [(n, a) for n, (i, a) in enumerate(builder) if i == "RUN" and "pip install" in a]
    assert [n for n, _ in installs] == sorted(n for n, _ in installs) and len(installs) == 2
    (first, lock_install), (second, wheel_install) = installs
    assert lock_copy < first < source_copy < second
    assert "--no-deps -r requirements-image.txt" in lock_install
    assert "--no-deps /wheels/" in wheel_install and "pip check" in wheel_install
