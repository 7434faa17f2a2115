"""The real ``inference-sidecar`` console script, run as a subprocess.

Every wait is bounded (subprocess timeouts, polling deadlines); every socket is on
127.0.0.1. The child's environment has no ``SIDECAR_*`` variable except those a test sets.
``serve`` opens a write-ahead log directory: every serve test points ``SIDECAR_WAL_DIR``
into its ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "inference-sidecar"
IDENTITY_ENV = {
    "SIDECAR_MODEL_NAME": "credit-scorer",
    "SIDECAR_MODEL_VERSION": "2.4.1",
    "SIDECAR_POLICY_VERSION": "pol-7",
    "SIDECAR_EVIDENCE_BUNDLE_ID": "eb-2025-01",
}
RUN_TIMEOUT_S = 30.0


def child_env(extra: dict[str, str] | None = None, identity: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.pop("PYTHONWARNINGS", None)
    if identity:
        env.update(IDENTITY_ENV)
    # No masking or detection worker (a second or more of start-up each) unless asked for.
    env["SIDECAR_PRIVACY_PROFILE"] = "metadata-only"
    env["SIDECAR_DETECTORS"] = "off"
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    # No proxy: the environment may name one, and these requests stay on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_console_script_is_installed() -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} not found: is the project installed in this venv?"
    assert os.access(SCRIPT, os.X_OK)


# --- check-config -----------------------------------------------------------------------


def test_check_config_ok_with_env_vars(tmp_path: Path) -> None:
    result = run_cli(
        "check-config",
        env=child_env({"SIDECAR_UPSTREAM_URL": "http://127.0.0.1:8123/"}),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "config ok: model credit-scorer 2.4.1, policy pol-7, evidence eb-2025-01, "
        "upstream http://127.0.0.1:8123"
    )
    assert result.stderr == ""


def test_check_config_flags_beat_env(tmp_path: Path) -> None:
    result = run_cli(
        "check-config", "--model-version", "9.9.9", "--upstream-url", "https://m.internal",
        env=child_env(), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "model credit-scorer 9.9.9" in result.stdout
    assert "upstream https://m.internal" in result.stdout


@pytest.mark.parametrize("how", ["--config", "SIDECAR_CONFIG"])
def test_check_config_reads_a_yaml_file(tmp_path: Path, how: str) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "model_name: from-file\nmodel_version: '3.0'\npolicy_version: p\n"
        "evidence_bundle_id: e\nupstream_url: http://10.0.0.5:9000\n",
        encoding="utf-8",
    )
    if how == "--config":
        result = run_cli("check-config", "--config", str(config),
                         env=child_env(identity=False), cwd=tmp_path)
    else:
        result = run_cli("check-config", env=child_env({"SIDECAR_CONFIG": str(config)},
                                                       identity=False), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "config ok: model from-file 3.0, policy p, evidence e, upstream http://10.0.0.5:9000"
    )


@pytest.mark.parametrize(
    ("missing", "env_var", "flag"),
    [
        ("model_name", "SIDECAR_MODEL_NAME", "--model-name"),
        ("evidence_bundle_id", "SIDECAR_EVIDENCE_BUNDLE_ID", "--evidence-bundle-id"),
    ],
)
def test_missing_required_setting_exits_2_with_one_line(
    tmp_path: Path, missing: str, env_var: str, flag: str
) -> None:
    env = child_env()
    del env[env_var]
    result = run_cli("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("inference-sidecar: config error: ")
    assert repr(missing) in lines[0]
    assert env_var in lines[0]
    assert flag in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_required_setting_also_stops_serve(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    result = run_cli("serve", env=child_env({"SIDECAR_WAL_DIR": str(wal_dir)}, identity=False),
                     cwd=tmp_path)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "'model_name'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not wal_dir.exists()  # stopped before building anything


def test_bad_flag_value_exits_2_naming_the_flag(tmp_path: Path) -> None:
    result = run_cli("check-config", "--listen", "nonsense", env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert lines == [
        "inference-sidecar: config error: flag --listen: expected host:port, "
        "such as 0.0.0.0:8080, got 'nonsense'"
    ]
    assert result.stdout == ""


def test_bad_env_value_exits_2_naming_the_variable(tmp_path: Path) -> None:
    result = run_cli("check-config", env=child_env({"SIDECAR_MAX_BODY_BYTES": "lots"}),
                     cwd=tmp_path)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "environment variable SIDECAR_MAX_BODY_BYTES" in lines[0]
    assert "positive size" in lines[0]


def test_bad_value_in_yaml_file_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("max_headers: 5\nconnect_timeout: soon\n", encoding="utf-8")
    result = run_cli("check-config", "--config", str(config), env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert f"config file {config}, key 'connect_timeout'" in lines[0]
    assert "positive duration" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"listen: a: b\n", "not valid YAML: mapping values are not allowed here at line 1"),
        (b"- a\n- b\n", "expected a mapping"),
        (b"lissen: 127.0.0.1:1\n", "unknown key 'lissen'"),
        (b"model_name: caf\xe9\n", ""),  # Latin-1, not UTF-8
        (b"max_body_bytes: .inf\n", "max_body_bytes"),
    ],
    ids=["invalid-yaml", "not-a-mapping", "unknown-key", "not-utf8", "infinite-size"],
)
def test_bad_config_file_exits_2_without_traceback(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_bytes(content)
    result = run_cli("check-config", "--config", str(config), env=child_env(), cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert expected in lines[0]


def test_unreadable_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run_cli("check-config", "--config", str(missing), env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert stderr_lines(result) == [
        f"inference-sidecar: config error: config file {missing}: cannot read it "
        "(No such file or directory)"
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SIDECAR_KAFKA_SECURITY_PROTOCOL": "sasl_ssl"},
         "kafka_sasl_mechanism (not set): expected a mechanism for security protocol sasl_ssl"),
        ({"SIDECAR_KAFKA_SASL_MECHANISM": "plain"},
         "kafka_sasl_username_file (not set): expected a file path, since SASL is configured"),
        ({"SIDECAR_WAL_MAX_BYTES": "1MiB", "SIDECAR_WAL_SEGMENT_BYTES": "1MiB"},
         "environment variable SIDECAR_WAL_SEGMENT_BYTES: expected at most half of "
         "wal_max_bytes (1048576), got 1048576"),
        ({"SIDECAR_WHEN_FULL": "drop_all"},
         "environment variable SIDECAR_WHEN_FULL: expected one of block, drop_oldest, "
         "drop_newest, got 'drop_all'"),
    ],
    ids=["sasl-without-mechanism", "mechanism-without-files", "segment-too-big", "when-full"],
)
def test_cross_check_errors_exit_2_with_one_line(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    result = run_cli("check-config", env=child_env(env), cwd=tmp_path)
    assert result.returncode == 2
    assert stderr_lines(result) == [f"inference-sidecar: config error: {expected}"]
    assert result.stdout == ""


def test_unreadable_secret_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "secrets" / "ca.pem"
    result = run_cli("check-config", env=child_env({"SIDECAR_KAFKA_SSL_CAFILE": str(missing)}),
                     cwd=tmp_path)
    assert result.returncode == 2
    assert stderr_lines(result) == [
        f"inference-sidecar: config error: environment variable SIDECAR_KAFKA_SSL_CAFILE: "
        f"expected a readable file, cannot read {missing}"
    ]


def test_nul_byte_in_a_secret_path_exits_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_bytes(b'kafka_ssl_cafile: "ca\\0.pem"\n')
    result = run_cli("check-config", "--config", str(config), env=child_env(), cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"inference-sidecar: config error: config file {config}, "
                               "key 'kafka_ssl_cafile': ")


# --- help and usage ---------------------------------------------------------------------


def test_python_dash_m_sidecar_help(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--help"], env=child_env(), cwd=tmp_path,
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: inference-sidecar" in result.stdout
    for command in ("serve", "check-config", "demo"):
        assert command in result.stdout


def test_serve_help_lists_every_setting_flag(tmp_path: Path) -> None:
    result = run_cli("serve", "--help", env=child_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for flag in ("--config", "--upstream-url", "--listen", "--admin-listen", "--max-body-bytes",
                 "--when-full", "--durability", "--durability-interval", "--durability-timeout",
                 "--wal-dir", "--wal-max-bytes", "--wal-segment-bytes", "--kafka-bootstrap",
                 "--kafka-security-protocol", "--kafka-sasl-password-file", "--log-level"):
        assert flag in result.stdout
    assert "SIDECAR_UPSTREAM_URL" in result.stdout
    assert "SIDECAR_WAL_DIR" in result.stdout
    assert "--event-queue-when-full" not in result.stdout  # replaced by --when-full


def test_the_old_event_queue_when_full_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("check-config", "--event-queue-when-full", "drop_oldest",
                     env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --event-queue-when-full" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_config_accepts_the_new_settings_as_flags(tmp_path: Path) -> None:
    result = run_cli(
        "check-config", "--when-full", "drop_newest", "--durability", "batch",
        "--durability-interval", "20ms", "--wal-dir", str(tmp_path / "wal"),
        "--wal-max-bytes", "64MiB", "--wal-segment-bytes", "4MiB",
        env=child_env(), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config ok: ")
    assert not (tmp_path / "wal").exists()  # check-config only checks: no WAL created


def test_version_flag(tmp_path: Path) -> None:
    result = run_cli("--version", env=child_env(), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("inference-sidecar ")


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


# --- serve ------------------------------------------------------------------------------


def _serve_on_busy_port(
    tmp_path: Path, port: int, busy: str
) -> subprocess.CompletedProcess[str]:
    addresses = {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}
    addresses[busy] = f"127.0.0.1:{port}"
    env = child_env({
        "SIDECAR_LISTEN": addresses["listen"],
        "SIDECAR_ADMIN_LISTEN": addresses["admin_listen"],
        "SIDECAR_UPSTREAM_URL": f"http://127.0.0.1:{unused_port()}",
        "SIDECAR_EVENTS_FILE": str(tmp_path / "events.jsonl"),
        "SIDECAR_WAL_DIR": str(tmp_path / "wal"),
    })
    return run_cli("serve", env=env, cwd=tmp_path)


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A serve environment on loopback ports, with its WAL and events file in tmp_path."""
    return child_env({
        "SIDECAR_LISTEN": "127.0.0.1:0",
        "SIDECAR_ADMIN_LISTEN": "127.0.0.1:0",
        "SIDECAR_UPSTREAM_URL": f"http://127.0.0.1:{unused_port()}",
        "SIDECAR_EVENTS_FILE": str(tmp_path / "events.jsonl"),
        "SIDECAR_WAL_DIR": str(tmp_path / "wal"),
        "SIDECAR_DRAIN_TIMEOUT": "2s",
        **extra,
    })


def _one_message(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    messages = [line for line in stderr_lines(result) if line.startswith("inference-sidecar:")]
    assert len(messages) == 1, result.stderr
    return messages[0]


def test_serve_with_a_wal_dir_that_cannot_be_created_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    wal_dir = blocker / "wal"
    result = run_cli("serve", env=serve_env(tmp_path, SIDECAR_WAL_DIR=str(wal_dir)),
                     cwd=tmp_path)
    assert result.returncode not in (0, -signal.SIGKILL), result.stderr
    message = _one_message(result)
    assert "cannot listen" not in message  # nothing is wrong with the listeners
    assert str(wal_dir) in message or "write-ahead log" in message, message


def test_serve_on_a_wal_dir_in_use_refuses_to_start(tmp_path: Path) -> None:
    from sidecar.durability.wal import WriteAheadLog

    wal_dir = tmp_path / "wal"
    holder = WriteAheadLog(str(wal_dir), 1 << 20, 64 * 1024, "block")  # holds the lock
    try:
        result = run_cli("serve", env=serve_env(tmp_path), cwd=tmp_path)
    finally:
        holder.close()
    assert result.returncode not in (0, -signal.SIGKILL), result.stderr
    message = _one_message(result)
    assert "in use" in message
    assert "cannot listen" not in message, message


def test_serve_with_a_segment_too_small_for_any_record_exits_2(tmp_path: Path) -> None:
    env = serve_env(tmp_path, SIDECAR_WAL_MAX_BYTES="64KiB", SIDECAR_WAL_SEGMENT_BYTES="16")
    result = run_cli("serve", env=env, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert "SIDECAR_WAL_SEGMENT_BYTES" in _one_message(result)  # the key, by its source


@pytest.mark.parametrize("busy", ["listen", "admin_listen"])
def test_serve_with_port_in_use_fails_with_a_clear_message(
    tmp_path: Path, listening_socket: socket.socket, busy: str
) -> None:
    port = listening_socket.getsockname()[1]
    result = _serve_on_busy_port(tmp_path, port, busy)
    assert result.returncode not in (0, -signal.SIGKILL), result.stderr
    assert "Traceback" not in result.stderr
    message = [line for line in stderr_lines(result) if line.startswith("inference-sidecar:")]
    assert len(message) == 1, result.stderr
    assert "cannot listen" in message[0]
    assert "address already in use" in message[0].lower()
    assert str(port) in message[0]


@pytest.mark.parametrize("busy", ["listen", "admin_listen"])
def test_serve_with_port_in_use_cleans_up_what_it_started(
    tmp_path: Path, listening_socket: socket.socket, busy: str
) -> None:
    # When a listener cannot bind, the components already started (upstream pool,
    # pipeline, readiness probe, the other listener) must be shut down, not leaked:
    # the operator sees only the one "cannot listen" line, no asyncio error logs.
    port = listening_socket.getsockname()[1]
    result = _serve_on_busy_port(tmp_path, port, busy)
    assert result.returncode not in (0, -signal.SIGKILL), result.stderr
    assert "Unclosed" not in result.stderr
    assert len(stderr_lines(result)) == 1, result.stderr


def _wait_for_start(proc: subprocess.Popen[bytes], log_path: Path, deadline_s: float) -> dict[
    str, str
]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"serve exited early with {proc.returncode}: {log_path.read_text()}"
            )
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("msg") == "sidecar started":
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no 'sidecar started' log line within {deadline_s}s: "
                         f"{log_path.read_text()}")


@pytest.mark.slow
def test_serve_answers_healthz_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    log_path = tmp_path / "stderr.log"
    events = tmp_path / "events.jsonl"
    wal_dir = tmp_path / "wal"
    # Nothing listens on the upstream port: readiness is red, liveness must still be green.
    env = serve_env(tmp_path)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(SCRIPT), "serve"], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log_file,
        )
    try:
        started = _wait_for_start(proc, log_path, deadline_s=15.0)
        assert started["model_version"] == "2.4.1"
        assert started["sink"].startswith("jsonl ") and started["durability"] == "sync"
        admin = started["admin_listen"]
        assert admin.startswith("127.0.0.1:")

        status, body = http_get(f"http://{admin}/healthz")
        assert status == 200
        assert json.loads(body) == {"status": "ok"}

        status, body = http_get(f"http://{admin}/readyz")
        assert status == 503
        assert any("upstream" in reason for reason in json.loads(body)["reasons"])

        status, body = http_get(f"http://{admin}/metrics")
        assert status == 200
        assert b"inference_sidecar_build_info" in body
        for metric in (b"inference_sidecar_log_bytes", b"inference_sidecar_log_events",
                       b"inference_sidecar_delivery_lag_seconds",
                       b"inference_sidecar_events_emitted_total"):
            assert metric in body
        assert wal_dir.is_dir()  # serve opened its write-ahead log where it was told

        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10.0)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert returncode == 0, log
    assert "Traceback" not in log
    assert '"msg":"sidecar stopped"' in log
    assert events.exists()  # the sink opened (created) its file
    assert not (tmp_path / "sidecar-wal").exists()  # not the default, relative to cwd


@pytest.mark.slow
def test_serve_with_events_file_on_a_stdout_pipe(tmp_path: Path) -> None:
    # events_file=/dev/stdout is how a container ships events to its log collector; under
    # a container runtime stdout is a pipe. One request (502: no upstream) makes one event,
    # which must come out on stdout; SIGTERM must still exit 0.
    log_path = tmp_path / "stderr.log"
    env = serve_env(tmp_path, SIDECAR_EVENTS_FILE="/dev/stdout")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(SCRIPT), "serve"], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=log_file,
        )
    try:
        started = _wait_for_start(proc, log_path, deadline_s=15.0)
        status, _ = http_get(f"http://{started['listen']}/v1/models/x/predict")
        assert status == 502
        time.sleep(0.3)  # let the pipeline pick the event up before shutdown
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10.0)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, log
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert len(events) == 1, (stdout, log)
    # One CloudEvent per line; the inference event is its data.
    assert events[0]["specversion"] == "1.0"
    assert events[0]["type"] == "ai.inference.completed"
    data = events[0]["data"]
    assert events[0]["id"] == data["inference_id"]
    assert data["status"] == 502
    assert data["path"] == "/v1/models/x/predict"


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_an_invalid_privacy_profile_exits_2_naming_file_key_and_reason(
    tmp_path: Path, command: str
) -> None:
    profile = tmp_path / "mine.yaml"
    profile.write_text("name: mine\nsample_rate: 2\n")
    env = child_env({"SIDECAR_PRIVACY_PROFILE": str(profile),
                     "SIDECAR_WAL_DIR": str(tmp_path / "wal")})
    result = run_cli(command, env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "inference-sidecar: config error: environment variable SIDECAR_PRIVACY_PROFILE: ")
    assert str(profile) in lines[0]
    assert "Traceback" not in result.stderr


def test_a_later_check_names_the_config_file_and_key_the_setting_came_from(
    tmp_path: Path,
) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("privacy_profile: nonexistent\n", encoding="utf-8")
    env = child_env()
    del env["SIDECAR_PRIVACY_PROFILE"]  # the file's value, not the environment's
    result = run_cli("check-config", "--config", str(config), env=env, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = stderr_lines(result)
    assert line.startswith(f"inference-sidecar: config error: config file {config}, "
                           f"key 'privacy_profile': privacy profile nonexistent")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_an_invalid_detectors_file_exits_2_naming_file_key_and_reason(
    tmp_path: Path, command: str
) -> None:
    bad = tmp_path / "detectors.yaml"
    bad.write_text("version: 1\ndetectors:\n  - {name: d, type: adwin}\n")  # no feature
    env = child_env({"SIDECAR_DETECTORS": str(bad), "SIDECAR_WAL_DIR": str(tmp_path / "wal")})
    result = run_cli(command, env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"inference-sidecar: config error: environment variable SIDECAR_DETECTORS: {bad}: ")
    assert "detectors[0].feature" in lines[0]


def test_a_valid_detectors_file_passes_check_config(tmp_path: Path) -> None:
    good = tmp_path / "detectors.yaml"
    good.write_text("version: 1\ndetectors:\n  - {name: d, type: adwin, feature: latency_ms}\n")
    result = run_cli("check-config", env=child_env({"SIDECAR_DETECTORS": str(good)}),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("key", "make", "expected"), [
    ("events_file", "dir", "a directory, expected a file"),
    ("events_file", "file_in_the_way", "is not a directory"),
    ("wal_dir", "file", "not a directory"),
])
def test_check_config_refuses_the_paths_serve_would(
    tmp_path: Path, key: str, make: str, expected: str
) -> None:
    path = tmp_path / "x"
    if make == "dir":
        path.mkdir()
    elif make == "file":
        path.write_text("")
    else:
        (tmp_path / "blocker").write_text("")
        path = tmp_path / "blocker" / "sub" / "events.jsonl"
    env = {f"SIDECAR_{key.upper()}": str(path), "SIDECAR_DURABILITY": "batch"}
    result = run_cli("check-config", env=child_env(env), cwd=tmp_path)
    assert result.returncode == 2
    [line] = stderr_lines(result)
    # where the setting came from, as every other config error says
    assert line.startswith(f"inference-sidecar: config error: environment variable "
                           f"SIDECAR_{key.upper()}: {path}: ")
    assert line.endswith(expected)


def test_check_config_accepts_an_events_file_in_directories_still_to_be_made(
    tmp_path: Path
) -> None:
    # the sink creates them, as it always did
    env = {"SIDECAR_EVENTS_FILE": str(tmp_path / "new" / "dir" / "events.jsonl")}
    assert run_cli("check-config", env=child_env(env), cwd=tmp_path).returncode == 0


def test_a_route_profile_s_error_names_privacy_profile_routes(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_bytes(b"k" * 32)
    config = tmp_path / "sidecar.yaml"
    config.write_text('privacy_profile_routes: {/v1/chat/completions: standard}\n'
                      'client_id_source: "header:accept"\n', encoding="utf-8")
    env = child_env({"SIDECAR_CLIENT_ID_KEY_FILE": str(key)})  # privacy_profile from env
    result = run_cli("check-config", "--config", str(config), env=env, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = stderr_lines(result)
    assert line.startswith(f"inference-sidecar: config error: config file {config}, key "
                           f"'privacy_profile_routes': profile 'standard' records the accept")


@pytest.mark.parametrize(("args", "error"), [
    (("--model-version", "1", "--model-version", "2"), "--model-version given twice"),
    (("--config", "a.yaml", "--config", "b.yaml"), "--config given twice"),
    (("--model-ver", "3"), "unrecognized arguments: --model-ver 3"),  # no abbreviations
])
def test_a_flag_given_twice_or_abbreviated_is_one_line_usage_error(
        tmp_path: Path, args: tuple[str, ...], error: str) -> None:
    result = run_cli("check-config", *args, env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(f"error: {error}" + (
        " (see --help)" if "twice" in error else ""))
    assert len(result.stderr.splitlines()) <= 2  # not the sixty settings' usage


def test_a_misspelt_environment_variable_is_named(tmp_path: Path) -> None:
    # Otherwise ignored without a word: the model version stamped would be the file's.
    result = run_cli("check-config", env=child_env({"SIDECAR_MODEL_VERSON": "2",
                                                    "SIDECAR_SERVICE_HOST": "10.0.0.1"}),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stderr_lines(result) == [
        "inference-sidecar: warning: environment variable SIDECAR_MODEL_VERSON is not a "
        "setting; did you mean SIDECAR_MODEL_VERSION?"]


def test_a_detector_feature_no_event_has_is_refused(tmp_path: Path) -> None:
    # A typo loaded, and the detector never saw a value: a drift monitor that never fires.
    detectors = tmp_path / "detectors.yaml"
    detectors.write_text("detectors:\n  - {name: d, type: adwin, feature: latncy_ms}\n")
    result = run_cli("check-config", env=child_env({"SIDECAR_DETECTORS": str(detectors)}),
                     cwd=tmp_path)
    assert result.returncode == 2
    [line] = stderr_lines(result)
    assert line.endswith(f"{detectors}: detectors[0].feature: no event field 'latncy_ms'; "
                         "did you mean latency_ms?")
