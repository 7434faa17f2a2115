"""``JsonLinesSink`` specifics: one CloudEvent per line (``record.value + b"\\n"``),
appending, all-or-nothing batches on disk errors."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import make_event, make_record, make_records

import sidecar.sinks.jsonl as jsonl_module
from sidecar.events.cloudevents import to_record
from sidecar.events.model import InferenceEvent
from sidecar.events.record import Record
from sidecar.sinks.base import SinkError
from sidecar.sinks.jsonl import JsonLinesSink, encode_lines

EVENT_FIELDS = {f.name for f in dataclasses.fields(InferenceEvent)}


def line_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


@pytest.fixture
def sink(path: Path) -> Iterator[JsonLinesSink]:
    made = JsonLinesSink(str(path))
    yield made
    made.close()


WriteFn = Callable[[int, Any], int]


def patch_write(
    monkeypatch: pytest.MonkeyPatch, sink: JsonLinesSink, fake: Callable[[WriteFn, int, Any], int]
) -> None:
    """Route ``os.write`` on the sink's fd through ``fake(real_write, fd, data)``."""
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if fd != sink._fd:
            return real_write(fd, data)
        return fake(real_write, fd, data)

    monkeypatch.setattr(jsonl_module.os, "write", write)


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- format -----------------------------------------------------------------------------


def test_each_line_is_the_records_cloudevent(sink: JsonLinesSink, path: Path) -> None:
    events = [make_event(i) for i in range(5)]
    events[2] = make_event(2, trace_id="t-1", error="upstream_timeout", stream=True)
    records = [to_record(e, i + 1) for i, e in enumerate(events)]
    sink.write(records)
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert lines == [r.value for r in records]
    for line, event in zip(lines, events, strict=True):
        obj = json.loads(line)
        assert obj["specversion"] == "1.0"
        assert obj["id"] == event.inference_id
        assert obj["type"] == "ai.inference.completed"
        assert obj["datacontenttype"] == "application/json"
        assert set(obj["data"]) == EVENT_FIELDS
        assert obj["data"] == dataclasses.asdict(event)
        assert obj["data"]["schema_version"] == "1.2"


def test_only_the_value_is_written_not_key_seq_or_headers(
    sink: JsonLinesSink, path: Path
) -> None:
    record = Record(seq=99, key=b"KEY-MARKER", value=b'{"v":1}',
                    headers=(("h", b"HEADER-MARKER"),))
    sink.write([record])
    assert path.read_bytes() == b'{"v":1}\n'


def test_lines_are_compact_single_lines(sink: JsonLinesSink, path: Path) -> None:
    sink.write([make_record(0, path="/a\nb", error="x\r\ny")])
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1  # newlines inside values are escaped
    assert json.loads(raw)["data"]["path"] == "/a\nb"


def test_non_ascii_is_utf8(sink: JsonLinesSink, path: Path) -> None:
    sink.write([make_record(0, path="/v1/caf\u00e9")])
    assert json.loads(path.read_text(encoding="utf-8"))["data"]["path"] == "/v1/caf\u00e9"


def test_encode_lines_matches_file_content(sink: JsonLinesSink, path: Path) -> None:
    records = make_records(0, 3)
    sink.write(records)
    assert path.read_bytes() == encode_lines(records)
    assert encode_lines(records) == b"".join(r.value + b"\n" for r in records)
    assert encode_lines([]) == b""


# --- files ------------------------------------------------------------------------------


def test_appends_to_an_existing_file(path: Path) -> None:
    path.write_bytes(b'{"earlier": true}\n')
    made = JsonLinesSink(str(path))
    try:
        made.write(make_records(0, 2))
    finally:
        made.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"earlier": true}'
    assert [json.loads(line)["id"] for line in lines[1:]] == ["inf-000000", "inf-000001"]


def test_reopening_appends_after_previous_run(path: Path) -> None:
    for run in range(3):
        made = JsonLinesSink(str(path))
        made.write(make_records(run * 10, 2))
        made.close()
    assert line_ids(path) == ["inf-000000", "inf-000001", "inf-000010", "inf-000011", "inf-000020",
                   "inf-000021"]


def test_creates_missing_parent_directories(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c" / "events.jsonl"
    made = JsonLinesSink(str(deep))
    try:
        made.write(make_records(0, 1))
    finally:
        made.close()
    assert deep.is_file()


def test_file_exists_as_soon_as_the_sink_is_built(path: Path) -> None:
    made = JsonLinesSink(str(path))
    try:
        assert path.is_file()
        assert path.stat().st_size == 0
    finally:
        made.close()


def test_parent_is_a_file_gives_a_clear_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    target = blocker / "events.jsonl"
    with pytest.raises(SinkError) as info:
        JsonLinesSink(str(target))
    message = str(info.value)
    assert message.startswith(f"events file {target}: cannot open it (")
    assert message.endswith(")")
    assert "None" not in message


def test_path_is_a_directory_gives_a_clear_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError) as info:
        JsonLinesSink(str(tmp_path))
    assert str(info.value) == f"events file {tmp_path}: cannot open it (Is a directory)"


def test_unwritable_directory_gives_a_sink_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Permission bits do not stop root, so simulate the EACCES os.open would give.
    def denied(*args: Any, **kwargs: Any) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(jsonl_module.os, "open", denied)
    target = tmp_path / "events.jsonl"
    with pytest.raises(SinkError) as info:
        JsonLinesSink(str(target))
    assert str(info.value) == f"events file {target}: cannot open it (Permission denied)"


# --- disk errors mid-batch --------------------------------------------------------------


def test_enospc_mid_batch_truncates_back_and_reports(
    sink: JsonLinesSink, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink.write(make_records(0, 3))
    before = path.read_bytes()

    def half_then_enospc(real: WriteFn, fd: int, data: Any) -> int:
        real(fd, bytes(data[: len(data) // 2]))
        raise enospc()

    patch_write(monkeypatch, sink, half_then_enospc)
    with pytest.raises(SinkError) as info:
        sink.write(make_records(3, 4))
    assert str(info.value) == f"events file {path}: write failed (No space left on device)"
    assert sink.healthy is False
    assert path.read_bytes() == before  # no torn line, no partial batch

    monkeypatch.undo()
    sink.write(make_records(3, 4))  # the retry
    assert sink.healthy is True
    assert path.read_bytes() == before + encode_lines(make_records(3, 4))
    assert line_ids(path) == [f"inf-{i:06d}" for i in range(7)]


def test_a_batch_is_on_disk_before_write_returns(
    sink: JsonLinesSink, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivery trims the log once ``write`` returns: the lines must be synced by then."""
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    sink.write(make_records(0, 3))
    assert len(synced) == 1


def test_a_failed_sync_truncates_back_and_reports(
    sink: JsonLinesSink, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink.write(make_records(0, 3))
    before = path.read_bytes()

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(SinkError, match="write failed"):
        sink.write(make_records(3, 4))
    assert path.read_bytes() == before and sink.healthy is False


def test_enospc_after_several_short_writes(
    sink: JsonLinesSink, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink.write(make_records(0, 2))
    before = path.read_bytes()
    calls = {"n": 0}

    def short_writes_then_enospc(real: WriteFn, fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] > 3:
            raise enospc()
        return real(fd, bytes(data[:7]))

    patch_write(monkeypatch, sink, short_writes_then_enospc)
    with pytest.raises(SinkError):
        sink.write(make_records(2, 3))
    assert calls["n"] == 4
    assert path.read_bytes() == before
    assert sink.healthy is False


def test_enospc_on_the_first_byte(
    sink: JsonLinesSink, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nothing_then_enospc(real: WriteFn, fd: int, data: Any) -> int:
        raise enospc()

    patch_write(monkeypatch, sink, nothing_then_enospc)
    with pytest.raises(SinkError):
        sink.write(make_records(0, 1))
    assert path.read_bytes() == b""
    assert sink.healthy is False


def test_eio_is_reported_like_enospc(
    sink: JsonLinesSink, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio(real: WriteFn, fd: int, data: Any) -> int:
        real(fd, bytes(data[:1]))
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    patch_write(monkeypatch, sink, eio)
    with pytest.raises(SinkError, match=r"write failed \(Input/output error\)"):
        sink.write(make_records(0, 2))
    assert path.read_bytes() == b""


def test_failing_truncate_still_raises_sink_error(
    sink: JsonLinesSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_enospc(real: WriteFn, fd: int, data: Any) -> int:
        real(fd, bytes(data[:3]))
        raise enospc()

    def broken_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    patch_write(monkeypatch, sink, half_then_enospc)
    monkeypatch.setattr(jsonl_module.os, "ftruncate", broken_truncate)
    with pytest.raises(SinkError, match="No space left on device"):
        sink.write(make_records(0, 2))
    assert sink.healthy is False


def test_short_writes_without_errors_complete_the_batch(
    sink: JsonLinesSink, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def five_bytes_at_a_time(real: WriteFn, fd: int, data: Any) -> int:
        return real(fd, bytes(data[:5]))

    patch_write(monkeypatch, sink, five_bytes_at_a_time)
    records = make_records(0, 4)
    sink.write(records)
    assert sink.healthy is True
    assert path.read_bytes() == encode_lines(records)


def test_recovery_after_repeated_failures(
    sink: JsonLinesSink, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_enospc(real: WriteFn, fd: int, data: Any) -> int:
        real(fd, bytes(data[: len(data) // 2]))
        raise enospc()

    patch_write(monkeypatch, sink, half_then_enospc)
    for _ in range(3):
        with pytest.raises(SinkError):
            sink.write(make_records(0, 5))
        assert path.read_bytes() == b""
    monkeypatch.undo()
    sink.write(make_records(0, 5))
    assert path.read_bytes() == encode_lines(make_records(0, 5))
    assert sink.healthy is True


def test_close_closes_the_file_descriptor(path: Path) -> None:
    made = JsonLinesSink(str(path))
    fd = made._fd
    made.write(make_records(0, 1))
    made.close()
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


def test_events_file_can_be_a_pipe(tmp_path: Path) -> None:
    # events_file=/dev/stdout (a pipe under a container runtime) or a FIFO is a common
    # deployment. Either the batch goes through or the sink raises SinkError: any other
    # exception breaks the "write stores all or raises SinkError" contract the pipeline
    # relies on.
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer won't block
    try:
        made = JsonLinesSink(str(fifo))
        try:
            records = make_records(0, 2)
            try:
                made.write(records)
            except SinkError:
                return  # refusing cleanly is within the contract
            assert os.read(reader, 1 << 16) == encode_lines(records)
        finally:
            made.close()
    finally:
        os.close(reader)
