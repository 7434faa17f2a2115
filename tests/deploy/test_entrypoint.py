"""The image's entrypoint command itself, as the container would run it: the Dockerfile's
ENTRYPOINT + CMD (the venv's console script standing in for /opt/venv), only the
environment the Dockerfile sets plus the identity, PID 1 of its own PID namespace, under
a read-only root with only its working directory (the data volume) and TMPDIR writable.
A real upstream on loopback; SIGTERM, as ``docker stop`` or the kubelet sends it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from deploy_support import final_stage, image_env

from sidecar.telemetry import STAMP_HEADERS

IMAGE_VENV = "/opt/venv"
BIN = Path(sys.executable).parent

# Runs as the namespace's PID 1 until its last line execs the entrypoint (which keeps
# PID 1): make every mount read-only except the two writable directories, like a pod
# with readOnlyRootFilesystem and two volumes, then prove the root is read-only.
READ_ONLY_ROOT = r"""
set -eu
for dir in "$DATA" "$SCRATCH"; do mount --bind "$dir" "$dir"; done
awk '{print $2}' /proc/self/mounts | while read -r mp; do
  case "$mp" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$DATA"|"$SCRATCH") ;;
    *) mount -o remount,bind,ro "$mp" 2>/dev/null || true ;;
  esac
done
if touch /.rw-probe 2>/dev/null || touch "$(dirname "$DATA")/.rw-probe" 2>/dev/null; then
  echo "root filesystem is writable" >&2; exit 97
fi
cd "$DATA"  # the bind mount, not the read-only directory underneath it
unset DATA SCRATCH
exec "$@"
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or sys.platform != "linux",
    reason="needs root and unshare(1) for a PID and mount namespace",
)


def entrypoint_command() -> list[str]:
    stage = dict(final_stage())
    command = json.loads(stage["ENTRYPOINT"]) + json.loads(stage["CMD"])
    assert command[0].startswith(IMAGE_VENV + "/bin/")
    local = BIN / Path(command[0]).name
    assert local.exists(), f"{local}: install the project (pip install -e .)"
    return [str(local), *command[1:]]


def container_env(scratch: Path) -> dict[str, str]:
    env = image_env()
    env["PATH"] = env["PATH"].replace(IMAGE_VENV + "/bin", str(BIN))
    for key in ("HOME", "TMPDIR"):
        assert env[key] == "/tmp"
        env[key] = str(scratch)
    return env


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def runs_this_interpreter(pid: int) -> bool:
    return os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(sys.executable)


def pid1_of(unshare_pid: int) -> int:
    """The host PID of the namespace's init: unshare's only child."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def namespace_pid(host_pid: int) -> int:
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError("no NSpid line")


async def wait_healthy(session: aiohttp.ClientSession, url: str,
                       proc: asyncio.subprocess.Process, log: Path) -> None:
    for _ in range(300):  # 15 s
        try:
            async with session.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError("the entrypoint did not start:\n" + tail(log))


@pytest.mark.slow
async def test_entrypoint_serves_stamped_responses_and_drains_as_pid_1(
    upstream: Any, tmp_path: Path, port_factory: Any
) -> None:
    data, scratch = tmp_path / "data", tmp_path / "scratch"
    data.mkdir()
    scratch.mkdir()
    port, admin = port_factory(), port_factory()
    identity = {
        "SIDECAR_MODEL_NAME": "credit-scorer", "SIDECAR_MODEL_VERSION": "2.3.1",
        "SIDECAR_POLICY_VERSION": "pol-7", "SIDECAR_EVIDENCE_BUNDLE_ID": "eb-2024-11",
    }
    # The settings a pod gives it: identity, the model on loopback, and the two ports
    # (free ones here; 8080/9090 in the pod). Nothing else: the rest are the image's.
    env = {
        **container_env(scratch), **identity,
        "SIDECAR_UPSTREAM_URL": upstream.url,
        "SIDECAR_LISTEN": f"127.0.0.1:{port}", "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "DATA": str(data), "SCRATCH": str(scratch),
    }
    log = tmp_path / "sidecar.log"
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            "unshare", "--pid", "--fork", "--mount-proc", "--mount", "--",
            "/bin/sh", "-c", READ_ONLY_ROOT, "sh", *entrypoint_command(),
            env=env, cwd=data,  # WORKDIR: the data volume
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_healthy(session, f"http://127.0.0.1:{admin}", proc, log)
            init = pid1_of(proc.pid)
            assert namespace_pid(init) == 1
            assert runs_this_interpreter(init)

            ids = []
            for _ in range(5):
                async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                        json={"messages": [{"content": "hi"}]}) as response:
                    assert response.status == 200
                    assert all(h in response.headers for h in STAMP_HEADERS)
                    assert response.headers["x-model-version"] == "2.3.1"
                    assert response.headers["x-policy-version"] == "pol-7"
                    assert response.headers["x-evidence-bundle-id"] == "eb-2024-11"
                    ids.append(response.headers["x-inference-id"])
                    await response.read()

        os.kill(init, signal.SIGTERM)  # what the kubelet does: to PID 1, from outside
        assert await asyncio.wait_for(proc.wait(), 30) == 0, tail(log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # Flushed before exiting: every response has its event, in the working directory
    # (the image's relative defaults: events.jsonl and sidecar-wal/ on the data volume).
    events = [json.loads(line) for line in (data / "events.jsonl").read_bytes().splitlines()]
    assert [e["id"] for e in events] == ids
    assert {e["data"]["model_version"] for e in events} == {"2.3.1"}
    assert (data / "sidecar-wal").is_dir()
    assert "sidecar stopped" in log.read_text()
