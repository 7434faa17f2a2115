"""``inference-sidecar replay`` over recorded events made from the detector scenarios: a
prompt-injection attacker (``tests/detectors/attacks.py``) hidden in benign traffic
(``scenarios.py`` with realistic clients and prompts), written as the file sink writes
them (CloudEvents, one a line), plus lines a real file can hold besides: another event
type, blank and malformed lines.
"""

from __future__ import annotations

import doctest
import importlib
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.config import load_config
from sidecar import telemetry
from sidecar.cli import main
from sidecar.tools import recorded, replay, report, series, sweep
from sidecar.tools.series import Series

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT / "tests" / "detectors"))
attacks = importlib.import_module("attacks")

ATTACK_DETECTOR = "prompt-signatures"
N_BENIGN, START, ATTACK_EVENTS = 5_000, 3_000, 200
# A threshold sweep: fewer near-duplicates needed, more campaigns seen (benign traffic has
# stock prompts that repeat innocently).
SWEEP = "repeated-prompts.params.min_count=3,5,10,25"


def envelope(data: dict[str, Any], kind: str = "ai.inference.completed") -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": data.get("inference_id", "x"),
                         "source": "urn:inference-sidecar:demo", "type": kind,
                         "time": data.get("timestamp"), "datacontenttype": "application/json",
                         "data": data})


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The events file, and the index (among inference events) of the first attack."""
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    events = list(attacks.with_attack("prompt_injection", N_BENIGN, 1, START,
                                      attack_events=ATTACK_EVENTS))
    first_attack = next(i for i, e in enumerate(events) if e.get("_attack"))
    lines = [envelope({k: v for k, v in e.items() if not k.startswith("_")}) for e in events]
    lines.insert(2, b"{not json")  # line 3
    lines.insert(10, b"")  # blank: ignored
    lines.insert(20, envelope({"detector": "x"}, kind="ai.detector.alert"))
    lines.insert(30, b'["a", "list"]')  # line 31
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, first_attack


def table(out: str) -> dict[str, list[str]]:
    """The per-detector table's rows by detector name."""
    names = {spec.name for spec in load_config().specs}
    return {cells[0]: cells for line in out.splitlines()
            if (cells := line.split()) and cells[0] in names and len(cells) >= 6}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["replay", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_replay_finds_the_attack_writes_the_report_and_sweeps(
    recording: tuple[Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, first_attack = recording
    html_path = tmp_path / "report.html"
    status, out, err = run(capsys, "--events", str(path), "--report", str(html_path),
                           "--sweep", SWEEP, "--quiet")
    assert status == 0, err
    assert err == ""
    rows = table(out)
    assert set(rows) == {spec.name for spec in load_config().specs}
    alerts = {name: int(cells[3]) for name, cells in rows.items()}
    assert alerts[ATTACK_DETECTOR] > 0
    assert {name: n for name, n in alerts.items() if name != ATTACK_DETECTOR and n} == {}
    attack_row = rows[ATTACK_DETECTOR]
    assert attack_row[1:3] == ["signatures", "monitor"]
    assert attack_row[4] == "1"  # one attacker
    assert attack_row[5] == str(first_attack)  # first alert: the attack's first event
    assert re.match(r"2025-01-01T\d\d:\d\d:\d\d", attack_row[6])
    skipped = {name: cells[-1] for name, cells in rows.items()}
    assert skipped["latency-adwin"] == "0" and int(skipped["finish-reason-mix"]) > 1_000
    total = N_BENIGN + ATTACK_EVENTS
    assert re.search(r"replayed (\d+) inference events", out)[1] == str(  # type: ignore[index]
        sum(1 for _ in recorded.Recorded(str(path)).events()))
    assert int(re.search(r"replayed (\d+)", out)[1]) <= total  # type: ignore[index]
    assert "skipped 1 other events: ai.detector.alert 1" in out
    assert "skipped 2 malformed lines: line 3 (not JSON), 31 (not a JSON object)" in out

    counts = [int(line.split()[-1]) for line in out.split("sweep: alerts per setting")[1]
              .splitlines()[2:6]]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1], counts

    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<(script|link|img|iframe)\b", page, re.I)
    sections = re.findall(r'<section class="detector" id="([^"]+)">(.*?)</section>', page, re.S)
    assert [name for name, _ in sections] == list(rows)
    for name, body in sections:
        assert body.count("<svg") == 1, name
        # finish-reason-mix reads 1 event in 5 (those with a payload): its windows
        # (2,200 events) are still filling at the end.
        if name not in ("prompt-signatures", "finish-reason-mix"):
            assert "<polyline" in body, f"{name}: no curve"
        assert body.count('<circle class="alert"') == alerts[name], name
    assert "Sweep: alerts per setting" in page
    assert len(page) < 2_000_000


def test_replay_runs_as_a_process(recording: tuple[Path, int], tmp_path: Path) -> None:
    path, _ = recording
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "replay", "--events", str(path), "--report",
         str(tmp_path / "r.html")], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # stderr is not a terminal: no progress bar
    assert int(table(result.stdout)[ATTACK_DETECTOR][3]) > 0
    assert (tmp_path / "r.html").stat().st_size > 10_000


def stderr_on_a_terminal(*argv: str, cwd: Path) -> bytes:
    """Run replay with stderr on a pseudo-terminal (100 columns); what it wrote there."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    child = subprocess.Popen([sys.executable, "-m", "sidecar", "replay", *argv], cwd=cwd,
                             stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side
                    break
                if not chunk:
                    break
                out += chunk
            elif child.poll() is not None:
                break
        assert child.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="a pseudo-terminal")
def test_a_progress_bar_on_a_terminal_unless_quiet(
    recording: tuple[Path, int], tmp_path: Path
) -> None:
    argv = ("--events", str(recording[0]), "--report", str(tmp_path / "r.html"))
    assert re.search(rb"replay:\s+\d+%\|", stderr_on_a_terminal(*argv, cwd=tmp_path))
    assert stderr_on_a_terminal(*argv, "--quiet", cwd=tmp_path) == b""


def test_a_detectors_file_gives_one_plot_per_detector(
    recording: tuple[Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = recording
    config = tmp_path / "detectors.yaml"
    config.write_text("detectors:\n"
                      "  - {name: lat-kswin, type: kswin, feature: latency_ms}\n"
                      "  - {name: chat-only, type: policy, params: {routes: [/v1/chat]}}\n")
    out_path = tmp_path / "r.html"
    status, out, _ = run(capsys, "--events", str(path), "--detectors", str(config),
                         "--report", str(out_path), "--quiet")
    assert status == 0
    assert f"detectors: {config}" in out
    page = out_path.read_text()
    assert page.count('<section class="detector"') == 2 and page.count("<svg") == 2
    assert "1e-05" in page  # KSWIN's alpha on a log axis
    assert int(out.split("chat-only")[1].split()[2]) > 1_000  # every non-chat route


@pytest.mark.parametrize(
    ("text", "key"),
    [("detectors:\n  - {name: a, type: adwin, feature: x, params: {delta: 2}}",
      "detectors[0].params.delta"),
     ("detectors:\n  - {name: a, type: nope}", "detectors[0].type"),
     ("detectors: [\n", "(file)")],
)
def test_an_invalid_detectors_file_is_one_line_and_exit_2(
    recording: tuple[Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    text: str, key: str,
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    status, out, err = run(capsys, "--events", str(recording[0]), "--detectors", str(config),
                           "--report", str(tmp_path / "r.html"))
    assert status == 2 and out == ""
    assert err.startswith(f"inference-sidecar: config error: {config}: {key}: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_a_missing_events_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    status, _, err = run(capsys, "--events", str(missing))
    assert status == 2
    assert err == (f"inference-sidecar: replay: events file {missing}: cannot read it "
                   "(No such file or directory)\n")
    status, _, err = run(capsys, "--events", str(tmp_path))  # a directory
    assert status == 2 and err.count("\n") == 1


def test_an_unreadable_events_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # stat() needs no read permission: the file passed the check, then its first read
    # raised PermissionError with a traceback. (As root permissions do not stop a read,
    # so the refusal is the one open() would give a user.)
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    real_open = open

    def refusing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(events):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    status, _, err = run(capsys, "--events", str(events))
    assert status == 2
    assert err == (f"inference-sidecar: replay: events file {events}: cannot read it "
                   "(Permission denied)\n")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("nope.params.delta=1", "no detector 'nope'"),
     ("latency-adwin.params.nope=1", "type adwin has no parameter 'nope'"),
     ("latency-adwin.delta=1", "KEY must be DETECTOR.params.PARAM"),
     ("latency-adwin.params.delta=", "expected KEY=V1,V2"),
     ("request-rate-burst.params.factor=2,-1",
      "with request-rate-burst.params.factor=-1: detectors[0].params.factor: must be > 0"),
     ("request-rate-burst.params.max_clients=1.5",
      "detectors[0].params.max_clients: must be int"),
     ("latency-adwin.mode=enforce", "detectors[0].mode: type adwin cannot decide"),
     # Not YAML (a list is split at its commas): a traceback before.
     ("latency-adwin.params.delta=[1,2]", "--sweep value '[1' is not a YAML value"),
     ("latency-adwin.params.delta=@x", "--sweep value '@x' is not a YAML value")],
)
def test_a_bad_sweep_is_one_line_and_exit_2(
    recording: tuple[Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    value: str, expected: str,
) -> None:
    status, out, err = run(capsys, "--events", str(recording[0]), "--sweep", value,
                           "--report", str(tmp_path / "r.html"))
    assert status == 2 and out == ""
    assert err.startswith("inference-sidecar: config error: ") and expected in err, err
    assert err.count("\n") == 1


def test_bare_data_lines_are_events_and_bad_lines_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mixed.jsonl"
    data = {"latency_ms": 12.0, "timestamp": "2025-01-01T00:00:00Z", "client_id": "c"}
    path.write_bytes(b"\n".join([
        orjson.dumps(data), b"", b"\xff\xfe not utf-8", b"42", b'{"specversion": "1.0"}',
        orjson.dumps({"specversion": "1.0", "type": "ai.inference.completed", "data": [1]}),
        envelope(data, kind="ai.detector.policy_changed"), envelope(data)]) + b"\n")
    status, out, _ = run(capsys, "--events", str(path), "--report", str(tmp_path / "r.html"),
                         "--quiet")
    assert status == 0
    assert "replayed 2 inference events" in out and "(8 lines)" in out
    assert ("skipped 2 other events: None 1, ai.detector.policy_changed 1") in out
    assert ("skipped 3 malformed lines: line 3 (not JSON), 4 (not a JSON object), "
            "6 (an inference event without a data object)") in out


def test_bare_alerts_and_policy_changes_are_not_inference_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What `jq -c .data events.jsonl` gives: every event's data, alerts too. Before, each
    # alert replayed as one more inference (its client and time fed the rate detectors).
    path = tmp_path / "bare.jsonl"
    inference = {"event_type": "ai.inference.completed", "latency_ms": 12.0,
                 "timestamp": "2025-01-01T00:00:00Z", "client_id": "c"}
    old_inference = {k: v for k, v in inference.items() if k != "event_type"}
    alert = {"alert_id": "i/x.1", "detector": "x", "timestamp": "2025-01-01T00:00:00Z",
             "client_id": "c", "inference_id": "i"}
    change = {"change_id": "p1", "digest": "sha256:0", "timestamp": "2025-01-01T00:00:00Z"}
    path.write_bytes(b"\n".join(orjson.dumps(d) for d in (
        inference, alert, old_inference, change, alert)) + b"\n")
    status, out, _ = run(capsys, "--events", str(path), "--report", str(tmp_path / "r.html"),
                         "--quiet")
    assert status == 0
    assert "replayed 2 inference events" in out
    assert "skipped 3 other events: ai.detector.alert 2, ai.detector.policy_changed 1" in out


def test_a_file_of_nothing_but_malformed_lines_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_events = tmp_path / "detectors.yaml"  # passed by mistake: it exited 0, "replayed 0"
    not_events.write_text("detectors:\n  - name: x\n    type: adwin\n")
    status, out, err = run(capsys, "--events", str(not_events), "--quiet")
    assert status == 2 and out == ""
    assert err == (f"inference-sidecar: replay: events file {not_events}: no event in it "
                   "(3 malformed lines, the first at line 1: not JSON)\n")
    empty = tmp_path / "empty.jsonl"  # a quiet day: still a recording
    empty.write_text("")
    status, out, _ = run(capsys, "--events", str(empty), "--report",
                         str(tmp_path / "r.html"), "--quiet")
    assert status == 0 and "replayed 0 inference events" in out


def test_the_event_type_names_are_the_naming_specs() -> None:
    assert (recorded.INFERENCE, recorded.ALERT, recorded.POLICY_CHANGED) == (
        telemetry.EVENT_TYPE_INFERENCE, telemetry.EVENT_TYPE_ALERT,
        telemetry.EVENT_TYPE_POLICY_CHANGED)


def test_series_keeps_spikes_and_dips_in_at_most_2000_points() -> None:
    s = Series()
    for i in range(200_000):
        value = 100.0 if i == 123_457 else 1e-9 if i == 7_777 else 1.0 + (i % 10) / 10
        s.add(i, value, None if 50_000 <= i < 60_000 else 5.0)
    points = s.points()
    assert len(points) <= 2_000
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    assert (123_457, 100.0, 5.0) in points and (7_777, 1e-9, 5.0) in points
    assert any(p[2] is None for p in points)  # the gap in the threshold stays a gap
    assert min(p[1] for p in points if p[1] != 1e-9) == 1.0  # type: ignore[type-var]


def test_a_report_keeps_every_alert_and_draws_finite_coordinates() -> None:
    run_ = series.DetectorRun("d", "rate_burst", "monitor", True)
    for i in range(50_000):
        run_.series.add(i, float(i % 100), 50.0)
        if i % 97 == 0:
            run_.alert(i, None, i + 1, float(i % 100), 50.0, f"c{i % 3}", "burst")
    svg = report.plot(run_, 50_000, series.TimeAxis())
    assert svg.count("<circle") == run_.alerts == len(range(0, 50_000, 97))
    coordinates = [float(x) for x in re.findall(r'"?(-?[\d.]+),(-?[\d.]+)', svg)[0]]
    assert all(math.isfinite(x) for x in coordinates)
    assert len(svg) < 400_000


HEAVY = ("river", "scipy", "tqdm", "detectors.registry")


@pytest.mark.parametrize("code", ["import sidecar.tools.replay",
                                  "import sidecar.cli; sidecar.cli.build_parser()"])
def test_importing_the_command_line_does_not_load_the_detectors(code: str) -> None:
    check = f"{code}; import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("module", [recorded, replay, report, series, sweep])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.failed == 0
    assert result.attempted > 0 or module is report
