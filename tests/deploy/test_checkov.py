"""checkov over the chart's rendered manifests (every value set the chart tests use) and
over the Dockerfile: zero failed checks. Skips, each with its reason, live in
helm/.checkov.yaml; nothing else is skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from deploy_support import DOCKERFILE, ROOT, SCENARIOS, scenario

BIN = Path(sys.executable).parent
CONFIG = ROOT / "helm" / ".checkov.yaml"


def checkov(*args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(BIN / "checkov"), "--config-file", str(CONFIG), "--output", "json", *args],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def failures(reports: list[dict[str, Any]]) -> list[str]:
    return [f"{c['check_id']} {c['check_name']} ({c['resource']})"
            for report in reports for c in report["results"]["failed_checks"]]


def test_rendered_manifests_pass_checkov(tmp_path: Path) -> None:
    for name in SCENARIOS:
        (tmp_path / f"{name}.yaml").write_text(scenario(name).yaml_text())
    reports = checkov("--framework", "kubernetes", "--directory", str(tmp_path))
    assert not failures(reports), "\n".join(failures(reports))
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed >= 100 * len(SCENARIOS) // 2, passed  # it really scanned every file


def test_dockerfile_passes_checkov() -> None:
    reports = checkov("--framework", "dockerfile", "--file", str(DOCKERFILE))
    assert not failures(reports), "\n".join(failures(reports))
    assert sum(r["summary"]["passed"] for r in reports) > 20


def test_every_skip_is_justified() -> None:
    text = CONFIG.read_text()
    skips = yaml.safe_load(text)["skip-check"]
    for check in skips:
        before = text.split(f"- {check}")[0].rstrip().splitlines()
        assert before[-1].lstrip().startswith("#") and check in "\n".join(before[-12:]), check
