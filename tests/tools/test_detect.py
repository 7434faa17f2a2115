"""``inference-sidecar detect`` (``sidecar/tools/detect.py``) against the real embedded
broker (Tansu, ``tests/kafka_broker.py``): no Kafka mocks. ``detect`` runs as its own
process (``python -m sidecar.tools.detect``), as an operator would run it.

Tansu 0.6.0 serves consumer groups to kafka-python (FindCoordinator, JoinGroup, SyncGroup,
Heartbeat, OffsetCommit/OffsetFetch; members joining together split the partitions) and
creates topics with several partitions (CreateTopics). Its one quirk here: a join
completes only after half the session timeout, at least 1 s (5 s at detect's default of
10 s; max_poll_interval_ms makes no difference), so the tests pass ``--session-timeout 2``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from factories import make_event  # type: ignore[import-not-found]
from kafka_broker import EmbeddedBroker, consume_all, free_port  # type: ignore[import-not-found]

from detectors.config import load_config
from detectors.registry import DetectorSet
from sidecar.events.cloudevents import to_record
from sidecar.tools import detect

with warnings.catch_warnings():  # kafka-python's import-time DeprecationWarning
    warnings.filterwarnings("ignore", r"(read|open)_text is deprecated", DeprecationWarning)
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
ALERT_SCHEMA = json.loads((ROOT / "sidecar/schemas/ai.detector.alert.v1.json").read_text())
EVENTS, ALERTS = "inference.events", "inference.alerts"
RUN_TIMEOUT_S = 40.0
FAST = ("--session-timeout", "2", "--idle-exit", "2")
# Per client: a burst is a decayed count over 10 s above 12. Each replica alone sends the
# attacker's requests every 0.5 s (at most 10 in the window); together, every 0.25 s.
BURST_YAML = """\
detectors:
  - name: burst
    type: rate_burst
    severity: critical
    params: {short_s: 10, long_s: 100, global_short_s: 10, min_count: 12,
             global_min_count: 1000000}
"""
ATTACKER, BENIGN = "k1:attacker", "k1:benign"


@pytest.fixture
def detectors_file(tmp_path: Path) -> Path:
    path = tmp_path / "detectors.yaml"
    path.write_text(BURST_YAML)
    return path


@pytest.fixture
def producers(broker: EmbeddedBroker) -> Iterator[list[Any]]:
    """Two producers: two sidecar replicas writing to the same topic."""
    made = [KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all") for _ in range(2)]
    yield made
    for producer in made:
        producer.close(timeout=5)


def send(producer: Any, n: int, client: str, seconds: float, **send_args: Any) -> dict[str, Any]:
    """Inference event ``n`` of ``client`` at ``seconds`` past midnight, as the sidecar
    records it (CloudEvent, keyed by the client's pseudonym); its ``data``."""
    stamp = f"2025-01-01T00:{int(seconds) // 60:02d}:{seconds % 60:06.3f}Z"
    event = make_event(n, timestamp=stamp, client_id=client,
                       features={"prompt_chars": 40, "prompt_simhash": n})
    record = to_record(event, n)
    producer.send(EVENTS, key=record.key, value=record.value, headers=list(record.headers),
                  **send_args)
    data: dict[str, Any] = json.loads(record.value)["data"]
    return data


def create_topic(broker: EmbeddedBroker, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def command(broker_or_address: EmbeddedBroker | str, group: str, *extra: str) -> list[str]:
    address = getattr(broker_or_address, "bootstrap", broker_or_address)
    return [sys.executable, "-m", "sidecar.tools.detect", "--bootstrap", str(address),
            "--group", group, *extra]


def run_detect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)


def logged(stderr: str, msg: str) -> list[dict[str, Any]]:
    """The JSON log lines with this message."""
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry.get("msg") == msg]


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("inference-sidecar detect: "), result.stderr
    [stopped] = logged(result.stderr, "detect stopped")
    return stopped


def test_a_client_split_over_two_replicas_is_seen_as_one_and_offsets_are_committed(
    broker: EmbeddedBroker, producers: list[Any], detectors_file: Path
) -> None:
    create_topic(broker, EVENTS, 3)
    replica_a, replica_b = producers
    seen_by: tuple[list[Any], list[Any]] = ([], [])
    for i in range(10):  # interleaved: each replica serves every other request
        seen_by[0].append(send(replica_a, i, ATTACKER, 0.5 * i))
        seen_by[1].append(send(replica_b, 100 + i, ATTACKER, 0.5 * i + 0.25))
    for i in range(5):
        send(replica_a, 200 + i, BENIGN, 2.0 * i)
    for producer in producers:
        producer.flush(10)
    config = load_config(detectors_file)  # the premise: neither replica alone is a burst
    for events in seen_by:
        alone = DetectorSet(config.specs)
        assert not [alert for event in events for alert in alone.update(event)]
    together = DetectorSet(config.specs)
    assert [alert for pair in zip(*seen_by, strict=True) for event in pair
            for alert in together.update(event)]
    attacker_ids = [event["inference_id"] for events in seen_by for event in events]

    first = summary(run_detect(*command(broker, "detectors", "--detectors", str(detectors_file),
                                        *FAST)))
    assert (first["records"], first["events"], first["malformed"]) == (25, 25, 0)
    assert first["alerts"] == {"burst": 1}
    [record] = consume_all(broker.bootstrap, ALERTS, 20.0, min_records=1)
    envelope = json.loads(record.value)
    jsonschema.validate(envelope, ALERT_SCHEMA)
    data = envelope["data"]
    assert data["inference_id"] in attacker_ids
    assert envelope["id"] == data["alert_id"] == f"{data['inference_id']}/burst"
    assert (data["client_id"], data["detector_type"], data["severity"]) == (
        ATTACKER, "rate_burst", "critical")
    assert data["statistic"] > data["threshold"] == 12
    assert envelope["time"] == data["timestamp"]  # the inference's time: replays agree
    assert record.key == ATTACKER.encode()
    assert dict(record.headers)["ce_type"] == b"ai.detector.alert"

    # The same group again: only what came since is read (the offsets were committed).
    for i in range(3):
        send(replica_a, 300 + i, BENIGN, 20.0 + i)
    replica_a.flush(10)
    second = summary(run_detect(*command(broker, "detectors", "--detectors", str(detectors_file),
                                         *FAST)))
    assert (second["records"], second["alerts"]) == (3, {})
    assert len(consume_all(broker.bootstrap, ALERTS, 10.0, min_records=1)) == 1


def test_two_members_of_one_group_split_the_partitions(
    broker: EmbeddedBroker, producers: list[Any], detectors_file: Path, tmp_path: Path
) -> None:
    create_topic(broker, EVENTS, 4)
    logs = [tmp_path / f"member-{i}.log" for i in range(2)]
    members = []
    for log in logs:
        with log.open("w") as stderr:
            members.append(subprocess.Popen(
                # No --idle-exit: on a busy machine the second member can take longer to
                # join than any idle clock, and the first must not leave meanwhile. The
                # members stop on SIGTERM once the group has committed every record.
                command(broker, "pair", "--detectors", str(detectors_file),
                        "--session-timeout", "2"),
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL))
    try:
        owned = wait_for_split(logs, members, 4)
        for partition in range(4):  # ten events on each partition
            for i in range(10):
                send(producers[0], partition * 10 + i, f"k1:c{partition}", float(i),
                     partition=partition)
        producers[0].flush(10)
        wait_for_commits(broker, "pair", {partition: 10 for partition in range(4)})
        for member in members:
            member.send_signal(signal.SIGTERM)
        statuses = [member.wait(RUN_TIMEOUT_S) for member in members]
    finally:
        for member in members:
            if member.poll() is None:
                member.kill()
                member.wait()
    texts = [log.read_text() for log in logs]
    assert statuses == [0, 0], texts
    assert all(logged(text, "partitions assigned")[-1]["partitions"] == sorted(partitions)
               for text, partitions in zip(texts, owned, strict=True)), texts  # no rebalance
    read = [logged(text, "detect stopped")[0]["records"] for text in texts]
    assert read == [10 * len(partitions) for partitions in owned], (read, owned)
    assert sum(read) == 40


def wait_for_commits(broker: EmbeddedBroker, group: str, offsets: dict[int, int]) -> None:
    """Until the group's committed offsets on the events topic reach ``offsets``."""
    from kafka.structs import TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        committed: dict[int, int] = {}
        while time.monotonic() < deadline:
            found = admin.list_group_offsets(
                {group: [TopicPartition(EVENTS, p) for p in offsets]})[group]
            committed = {tp.partition: meta.offset for tp, meta in found.items()}
            if committed == offsets:
                return
            time.sleep(0.2)
    finally:
        admin.close()
    raise AssertionError(f"group {group} committed {committed}, expected {offsets}")


def wait_for_split(logs: list[Path], members: list[Any], partitions: int) -> list[set[int]]:
    """Each member's partitions once the group has settled: every partition owned by
    exactly one member, none idle."""
    deadline = time.monotonic() + 20.0
    owned: list[set[int]] = []
    while time.monotonic() < deadline:
        owned = []
        for log in logs:
            assigned = logged(log.read_text(), "partitions assigned")
            owned.append(set(assigned[-1]["partitions"]) if assigned else set())
        if all(owned) and sorted(p for o in owned for p in o) == list(range(partitions)):
            return owned
        assert all(m.poll() is None for m in members), [log.read_text() for log in logs]
        time.sleep(0.1)
    raise AssertionError(f"the group did not split {partitions} partitions: {owned}",
                         [log.read_text() for log in logs])


def test_sigterm_stops_cleanly_and_commits_what_was_acknowledged(
    broker: EmbeddedBroker, producers: list[Any], detectors_file: Path, tmp_path: Path
) -> None:
    create_topic(broker, EVENTS, 1)
    log = tmp_path / "detect.log"
    with log.open("w") as stderr:
        member = subprocess.Popen(  # no --idle-exit: runs until signalled
            command(broker, "service", "--detectors", str(detectors_file),
                    "--session-timeout", "2"),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        wait_for_split([log], [member], 1)
        for i in range(10):
            send(producers[0], i, ATTACKER, 0.5 * i)
            send(producers[1], 100 + i, ATTACKER, 0.5 * i + 0.25)
        for producer in producers:
            producer.flush(10)
        assert len(consume_all(broker.bootstrap, ALERTS, 20.0, min_records=1)) == 1
        member.send_signal(signal.SIGTERM)
        status = member.wait(15)
    finally:
        if member.poll() is None:
            member.kill()
            member.wait()
    text = log.read_text()
    assert status == 0 and "Traceback" not in text, text
    [first] = logged(text, "detect stopped")
    assert first["alerts"] == {"burst": 1}
    assert text.strip().splitlines()[-1].startswith("inference-sidecar detect: ")
    second = summary(run_detect(*command(broker, "service", "--detectors", str(detectors_file),
                                         *FAST)))
    assert first["records"] + second["records"] == 20  # each read once, by one of the runs
    assert len(consume_all(broker.bootstrap, ALERTS, 10.0, min_records=1)) == 1


def test_malformed_records_are_skipped_and_counted(
    broker: EmbeddedBroker, producers: list[Any]
) -> None:
    producer = producers[0]
    for n in range(3):
        send(producer, n, BENIGN, float(n))
    for value in (b"not json at all", b"[1, 2]", b'{"specversion": "1.0"}',
                  b'{"type": "ai.inference.completed", "data": "not an object"}',
                  b'{"type": 5, "data": {}}', None):
        producer.send(EVENTS, key=BENIGN.encode(), value=value)  # same partition
    producer.send(EVENTS, key=BENIGN.encode(),
                  value=b'{"type": "ai.detector.alert", "data": {}}')  # not for the detectors
    send(producer, 3, BENIGN, 3.0)
    producer.flush(10)
    result = run_detect(*command(broker, "robust", *FAST))  # the shipped detectors
    stopped = summary(result)
    counts = {key: stopped[key] for key in ("records", "events", "skipped", "malformed")}
    assert counts == {"records": 11, "events": 4, "skipped": 1, "malformed": 6}
    warned = logged(result.stderr, "malformed record skipped")
    assert [w["offset"] for w in warned] == [3, 4, 5, 6, 7, 8]
    assert "not json" not in result.stderr and "not an object" not in result.stderr
    assert re.search(r"11 records: 4 events, 1 skipped, 6 malformed; alerts: 0$",
                     result.stderr.strip())


@pytest.mark.parametrize(("flags", "expected"), [
    (("--detectors", "{file}"),
     "inference-sidecar: config error: {file}: detectors[0].params.min_count: must be > 0"),
    (("--security-protocol", "carrier-pigeon"),
     "inference-sidecar: config error: --security-protocol: expected one of"),
    (("--events-topic", "bad topic"),
     "inference-sidecar: config error: --events-topic: expected 1-249 of"),
])
def test_configuration_errors_name_the_key_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], expected: str
) -> None:
    bad = tmp_path / "detectors.yaml"
    bad.write_text(BURST_YAML.replace("min_count: 12", "min_count: -1"))
    argv = [flag.format(file=bad) for flag in flags]
    status = detect.main(["--bootstrap", f"127.0.0.1:{free_port()}", "--group", "g", *argv])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith(expected.format(file=bad)), lines


@pytest.mark.parametrize(("flag", "value"), [
    ("--session-timeout", "inf"), ("--session-timeout", "nan"), ("--session-timeout", "0.05"),
    ("--idle-exit", "nan"), ("--idle-exit", "inf"), ("--delivery-timeout", "nan"),
    ("--max-events", "0"),
])
def test_numbers_that_cannot_work_are_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    # Before: --session-timeout inf or nan crashed once connected, 0.05 failed as "cannot
    # connect" (heartbeats go at least 100 ms apart), --idle-exit nan never exited.
    with pytest.raises(SystemExit) as stopped:
        detect.main(["--bootstrap", f"127.0.0.1:{free_port()}", "--group", "g", flag, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and "Traceback" not in err, err


def test_no_broker_exits_1_with_one_clear_line() -> None:
    port = free_port()
    started = time.monotonic()
    result = run_detect(*command(f"127.0.0.1:{port}", "g", "--idle-exit", "60"))
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 15
    assert "Traceback" not in result.stderr
    assert f"inference-sidecar: kafka: no broker reachable: 127.0.0.1:{port}" in result.stderr


def test_a_broker_that_answers_nothing_exits_1_after_a_bounded_wait(
    broker: EmbeddedBroker,
) -> None:
    broker.pause()  # SIGSTOP: connections are accepted, nothing is answered
    try:
        started = time.monotonic()
        result = run_detect(*command(broker, "g", "--delivery-timeout", "3", "--idle-exit", "60"))
        elapsed = time.monotonic() - started
    finally:
        broker.resume()
    assert result.returncode == 1, result.stderr
    assert elapsed < 15, elapsed
    assert "Traceback" not in result.stderr
    assert f"inference-sidecar: kafka: cannot connect to {broker.bootstrap}" in result.stderr


def test_a_broker_lost_while_idle_is_a_failure_not_the_end_of_the_stream(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """--idle-exit means "nothing new to read"; a broker that went away is not that, and
    a batch job reading exit 0 would take a partial run for a complete one."""
    create_topic(broker, EVENTS, 1)
    log = tmp_path / "detect.log"
    with log.open("w") as stderr:
        member = subprocess.Popen(
            command(broker, "g", "--session-timeout", "2", "--idle-exit", "3"),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        wait_for_split([log], [member], 1)
        broker.stop()
        status = member.wait(RUN_TIMEOUT_S)
    finally:
        if member.poll() is None:
            member.kill()
            member.wait()
    text = log.read_text()
    assert status == 1, text
    assert "Traceback" not in text, text
    assert f"inference-sidecar: kafka: no broker reachable: {broker.bootstrap}" in text, text


def test_it_is_a_subcommand_of_the_sidecar_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sidecar.cli import main

    bad = tmp_path / "detectors.yaml"
    bad.write_text(BURST_YAML.replace("min_count: 12", "min_count: -1"))
    status = main(["detect", "--bootstrap", f"127.0.0.1:{free_port()}", "--group", "g",
                   "--detectors", str(bad)])
    assert status == 2
    assert "detectors[0].params.min_count: must be > 0" in capsys.readouterr().err
