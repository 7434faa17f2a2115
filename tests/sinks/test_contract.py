"""The ``Sink`` contract (``sidecar/sinks/base.py``), checked for every sink.

Sinks take batches of ``Record``s (CloudEvents JSON already encoded by the pipeline) and
must store each record's ``value`` whole and in order. A new sink is one more ``SinkCase``
in ``SINK_CASES``: how to build it in a temporary directory, how to read back the values
it stored and, optionally, how to make its next write fail (for the "a failed write stores
nothing" half of the contract). The Kafka sink has its own tests against a real broker
(``tests/kafka``): a failed batch there may be stored twice, which the contract allows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from factories import make_event, make_record, make_records

import sidecar.sinks.jsonl as jsonl_module
from sidecar.events.cloudevents import to_record
from sidecar.events.record import Record
from sidecar.sinks.base import Sink, SinkError
from sidecar.sinks.isolated import ProcessSink
from sidecar.sinks.jsonl import JsonLinesSink
from sidecar.sinks.memory import MemorySink


def values(batch: list[Record]) -> list[bytes]:
    return [r.value for r in batch]


# --- per-sink adapters ------------------------------------------------------------------


def _read_jsonl(sink: Any) -> list[bytes]:
    return _read_lines(sink.path)


def _read_lines(path: str) -> list[bytes]:
    with open(path, "rb") as fh:
        data = fh.read()
    assert data == b"" or data.endswith(b"\n"), "the last line is torn"
    return data.splitlines()


def _make_process_jsonl(directory: Path) -> ProcessSink:
    # Named apart from the in-process file sink: names label metrics, and must be unique.
    return ProcessSink(functools.partial(JsonLinesSink, str(directory / "events.jsonl")),
                       name="jsonl-process", reply_timeout_s=10)


def _read_process_jsonl(sink: Any) -> list[bytes]:
    path = sink._factory.args[0]  # the path given to the child's sink
    # The child (and so the file) starts on the first non-empty write: no file, no values.
    return _read_lines(path) if os.path.exists(path) else []


def _read_memory(sink: Any) -> list[bytes]:
    stored = list(sink.records)
    assert all(isinstance(r, Record) for r in stored)
    return [r.value for r in stored]


@contextlib.contextmanager
def _jsonl_disk_full(sink: Any) -> Iterator[None]:
    real_write = os.write

    def failing_write(fd: int, data: Any) -> int:
        if fd != sink._fd:
            return real_write(fd, data)
        real_write(fd, bytes(data[: max(1, len(data) // 2)]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonl_module.os, "write", failing_write)
        yield


@contextlib.contextmanager
def _process_jsonl_file_too_large(sink: Any) -> Iterator[None]:
    # The child's file-size limit (RLIMIT_FSIZE) lowered to the file's size: its next
    # write gets EFBIG (Python ignores SIGXFSZ), which the file sink in the child turns
    # into a SinkError that crosses back. The limit is lifted again on the way out.
    if sink.pid is None:
        sink._child._start()  # the child starts on the first write; the limit needs it now
    limits = resource.prlimit(sink.pid, resource.RLIMIT_FSIZE)
    size = os.path.getsize(sink._factory.args[0])
    resource.prlimit(sink.pid, resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(sink.pid, resource.RLIMIT_FSIZE, limits)


@contextlib.contextmanager
def _memory_fails(sink: Any) -> Iterator[None]:
    sink.fail_next = 1  # consumed by the next write
    yield


@dataclass(frozen=True)
class SinkCase:
    id: str
    make: Callable[[Path], Sink]
    read_back: Callable[[Any], list[bytes]]  # the stored values, in order
    # A context manager under which the sink's next write fails; None if it cannot be made.
    failing: Callable[[Any], contextlib.AbstractContextManager[None]] | None = None


SINK_CASES = [
    SinkCase("jsonl", lambda d: JsonLinesSink(str(d / "events.jsonl")), _read_jsonl,
             _jsonl_disk_full),
    SinkCase("memory", lambda d: MemorySink(), _read_memory, _memory_fails),
    SinkCase("process-jsonl", _make_process_jsonl, _read_process_jsonl,
             _process_jsonl_file_too_large),
]


@pytest.fixture(params=SINK_CASES, ids=[c.id for c in SINK_CASES])
def case(request: pytest.FixtureRequest) -> SinkCase:
    value: SinkCase = request.param
    return value


@pytest.fixture
def sink(case: SinkCase, tmp_path: Path) -> Iterator[Sink]:
    made = case.make(tmp_path)
    yield made
    made.close()


@pytest.fixture(
    params=[c for c in SINK_CASES if c.failing is not None],
    ids=[c.id for c in SINK_CASES if c.failing is not None],
)
def failing_case(request: pytest.FixtureRequest) -> SinkCase:
    value: SinkCase = request.param
    return value


# --- the contract -----------------------------------------------------------------------


def test_name_is_a_non_empty_string(sink: Sink) -> None:
    assert isinstance(sink.name, str)
    assert sink.name.strip() == sink.name != ""


def test_sink_names_are_unique(tmp_path: Path) -> None:
    # Names label the sink metrics: two sinks with one name would share a series.
    sinks = [c.make(tmp_path / c.id) for c in SINK_CASES]
    try:
        names = [s.name for s in sinks]
        assert len(names) == len(set(names)), names
    finally:
        for made in sinks:
            made.close()


def test_has_the_protocol_methods(sink: Sink) -> None:
    assert callable(sink.write)
    assert callable(sink.close)
    assert isinstance(sink.healthy, bool)


def test_healthy_when_new(sink: Sink) -> None:
    assert sink.healthy is True


def test_a_batch_reads_back_the_same_values_in_order(case: SinkCase, sink: Sink) -> None:
    batch = make_records(0, 25, timed=True)
    sink.write(batch)
    assert case.read_back(sink) == values(batch)
    assert sink.healthy is True


def test_batches_accumulate_in_order(case: SinkCase, sink: Sink) -> None:
    first = make_records(0, 3, timed=True)
    second = make_records(3, 7, timed=True)
    sink.write(first)
    sink.write(second)
    assert case.read_back(sink) == values(first + second)


def test_any_sequence_is_a_batch(case: SinkCase, sink: Sink) -> None:
    # The protocol takes Sequence[Record]: a tuple must work like a list.
    batch = tuple(make_records(0, 3, timed=True))
    sink.write(batch)
    assert case.read_back(sink) == [r.value for r in batch]


def test_an_empty_batch_stores_nothing(case: SinkCase, sink: Sink) -> None:
    sink.write([])
    assert case.read_back(sink) == []
    assert sink.healthy is True


def test_every_field_survives(case: SinkCase, sink: Sink) -> None:
    full = make_event(
        1, trace_id="4bf92f3577b34da6a3ce929d0e0e4736", request_id="req-\u00e9\u4e2d",
        status=504, outcome="timeout", error="upstream_timeout", upstream_status=None,
        latency_ms=0.1 + 0.2, upstream_latency_ms=1e-9, ttfb_ms=123456.789,
        request_bytes=2**40, response_bytes=0, stream=True, chunks=17,
        client_address=None, path="/v1/caf\u00e9/predict",
    )
    record = to_record(full, 1)
    sink.write([record])
    (stored,) = case.read_back(sink)
    assert stored == record.value
    document = orjson.loads(stored)
    assert document["id"] == full.inference_id
    assert document["data"] == dataclasses.asdict(full)


def test_a_large_batch(case: SinkCase, sink: Sink) -> None:
    batch = make_records(0, 2000, timed=True)
    sink.write(batch)
    stored = case.read_back(sink)
    assert [orjson.loads(v)["id"] for v in stored] == [f"inf-{i:06d}" for i in range(2000)]
    assert stored == values(batch)


def test_close_works_and_keeps_what_was_written(case: SinkCase, tmp_path: Path) -> None:
    made = case.make(tmp_path)
    batch = make_records(0, 4, timed=True)
    made.write(batch)
    made.close()
    assert case.read_back(made) == values(batch)


def test_close_without_any_write(case: SinkCase, tmp_path: Path) -> None:
    made = case.make(tmp_path)
    made.close()
    assert case.read_back(made) == []


def test_write_is_usable_from_a_worker_thread(case: SinkCase, sink: Sink) -> None:
    # Delivery calls write() and close() from its single worker thread.
    from concurrent.futures import ThreadPoolExecutor

    batch = make_records(0, 10, timed=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(sink.write, batch).result(timeout=10)
    assert case.read_back(sink) == values(batch)


def test_a_failed_write_stores_nothing_and_the_retry_stores_it_once(
    failing_case: SinkCase, tmp_path: Path
) -> None:
    assert failing_case.failing is not None
    made = failing_case.make(tmp_path)
    try:
        before = make_records(0, 3, timed=True)
        made.write(before)
        batch = make_records(3, 5, timed=True)
        with failing_case.failing(made), pytest.raises(SinkError):
            made.write(batch)
        assert failing_case.read_back(made) == values(before)
        made.write(batch)  # delivery's retry of the same batch
        assert made.healthy is True
        assert failing_case.read_back(made) == values(before + batch)
    finally:
        made.close()


def test_healthy_is_false_after_a_failed_write(failing_case: SinkCase, tmp_path: Path) -> None:
    # base.py: "healthy -- False while the last write failed; readiness reports it."
    assert failing_case.failing is not None
    made = failing_case.make(tmp_path)
    try:
        made.write([make_record(0, timed=True)])
        assert made.healthy is True
        with failing_case.failing(made), pytest.raises(SinkError):
            made.write([make_record(1, timed=True)])
        assert made.healthy is False
    finally:
        made.close()


def test_sink_error_message_is_for_the_operator(failing_case: SinkCase, tmp_path: Path) -> None:
    assert failing_case.failing is not None
    made = failing_case.make(tmp_path)
    try:
        with failing_case.failing(made), pytest.raises(SinkError) as info:
            made.write([make_record(0, timed=True)])
        assert str(info.value).strip()
    finally:
        made.close()
