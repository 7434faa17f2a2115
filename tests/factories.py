"""Helpers shared by the test modules: events and records, the ids and seqs to compare
them by, metric samples, waiting, a sink and a log that record what is done to them, and
two fixtures (fast delivery retries, per-test harnesses).

Not a conftest: a helper module. Test modules import it with ``from factories import ...``
(pytest runs with ``--import-mode=importlib``; ``tests/conftest.py`` puts ``tests/`` on
``sys.path``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
import pytest

from sidecar.durability.base import LogFull
from sidecar.durability.framing import frame_size
from sidecar.durability.memory import MemoryLog
from sidecar.events.cloudevents import to_record
from sidecar.events.model import InferenceEvent
from sidecar.events.record import Record
from sidecar.pipeline import delivery as delivery_module
from sidecar.sinks.memory import MemorySink
from sidecar.telemetry import Metrics

WAIT_S = 10.0

# The model every test event comes from; also the identity the tests' ``Metrics`` carry.
IDENTITY = {
    "model_name": "credit-scorer",
    "model_version": "2.4.1",
    "policy_version": "pol-7",
    "evidence_bundle_id": "eb-2025-01",
}


# --- events and records -----------------------------------------------------------------


def make_event(n: int, *, timed: bool = False, **overrides: Any) -> InferenceEvent:
    """Event number ``n`` (inference id ``inf-{n:06d}``): a 200 from the credit-scorer.

    ``timed``: a latency of ``12.5 + n`` ms instead of the default 0, so each event
    carries a float of its own. ``overrides`` set any other field.
    """
    values: dict[str, Any] = {
        "inference_id": f"inf-{n:06d}",
        "timestamp": "2025-01-01T00:00:00.000Z",
        **IDENTITY,
        "method": "POST",
        "route": "/v1/{name}/predict",
        "path": "/v1/credit/predict",
        "client_address": "127.0.0.1",
        "status": 200,
        "outcome": "ok",
    }
    if timed:
        values["latency_ms"] = 12.5 + n
    values.update(overrides)
    return InferenceEvent(**values)


def make_record(n: int, *, timed: bool = False, **overrides: Any) -> Record:
    """Event ``n`` as the pipeline encodes it, with seq ``n + 1``."""
    return to_record(make_event(n, timed=timed, **overrides), seq=n + 1)


def make_records(start: int, count: int, *, timed: bool = False) -> list[Record]:
    """Records of events ``start`` to ``start + count - 1``."""
    return [make_record(i, timed=timed) for i in range(start, start + count)]


EVENT_FRAME = frame_size(to_record(make_event(0), 1))  # one default event, framed in a log


def expected_ids(numbers: Iterable[int]) -> list[str]:
    """The inference ids of the events with these numbers."""
    return [f"inf-{n:06d}" for n in numbers]


def ids(records: Sequence[Record]) -> list[str]:
    """The CloudEvent ids in the records' values."""
    return [orjson.loads(r.value)["id"] for r in records]


def seqs(records: Sequence[Record]) -> list[int]:
    return [r.seq for r in records]


# --- metrics ----------------------------------------------------------------------------


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def delivered(metrics: Metrics, sink: str = "memory") -> float:
    return sample(metrics, "inference_sidecar_events_delivered_total", {"sink": sink})


def failures(metrics: Metrics, sink: str = "memory") -> float:
    return sample(metrics, "inference_sidecar_delivery_failures_total", {"sink": sink})


def retried(metrics: Metrics, sink: str = "memory") -> float:
    return sample(metrics, "inference_sidecar_events_retried_total", {"sink": sink})


# --- waiting ----------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], bool], timeout: float = WAIT_S, poll_s: float = 0.002
) -> None:
    """Poll ``predicate`` every ``poll_s`` until it holds; time out after ``timeout``."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(poll_s)

    await asyncio.wait_for(poll(), timeout)


async def readyz_degraded(admin_url: str, want: bool) -> list[str]:
    """/readyz's ``degraded`` list once it is non-empty (``want``) or empty; polled for at
    most 10 s, /readyz answering 200 throughout."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(admin_url + "/readyz") as response:
                assert response.status == 200
                body = await response.json()
            if bool(body["degraded"]) == want:
                break
            await asyncio.sleep(0.1)
    degraded: list[str] = body["degraded"]
    return degraded


def record_sleeps(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, task_name: str
) -> list[float]:
    """The delays the task named ``task_name`` asks ``asyncio.sleep`` for, from now on.

    That task's sleeps return at once; every other task sleeps as usual (``module.asyncio``
    is the asyncio module, shared by all of them).
    """
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: Any) -> Any:
        task = asyncio.current_task()
        if task is None or task.get_name() != task_name:
            return await real_sleep(delay, *args)
        delays.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(module.asyncio, "sleep", recording_sleep)
    return delays


# --- a sink and a log that record what is done to them ----------------------------------


class RecordingSink(MemorySink):
    """A MemorySink that records each write's thread and size, counts closes, and can
    hold a write until the test opens ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.write_threads: list[int] = []
        self.batches: list[int] = []
        self.attempts = 0
        self.closed = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def write(self, records: Sequence[Record]) -> None:
        self.write_threads.append(threading.get_ident())
        self.attempts += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S), "test never opened the gate"
        super().write(records)
        self.batches.append(len(records))

    def close(self) -> None:
        self.closed += 1
        super().close()


class RecordingLog(MemoryLog):
    """A real ``MemoryLog`` that also records what was done to it (appends, fsyncs, reads,
    acks and the threads doing them), fails on demand and can hold an fsync."""

    def __init__(self, max_bytes: int = 1 << 26, when_full: str = "block") -> None:
        super().__init__(max_bytes, when_full)
        self.appended: list[list[int]] = []  # seqs of each successful append
        self.refused_full = 0  # appends that raised LogFull
        self.syncs = 0
        self.synced_through = 0  # last_seq at the latest successful sync
        self.reads = 0
        self.acks: list[int] = []
        self.fail_appends = 0  # the next N appends raise ENOSPC (and store nothing)
        self.fail_syncs = 0  # the next N syncs raise EIO
        self.append_threads: set[int] = set()
        self.sync_threads: set[int] = set()
        self.sync_gate: threading.Event | None = None  # when set, sync waits for it
        self.in_sync = threading.Event()

    @property
    def threads(self) -> set[int]:
        """The threads that appended or synced."""
        return self.append_threads | self.sync_threads

    def append(self, records: Sequence[Record], completes: bool = False) -> None:
        self.append_threads.add(threading.get_ident())
        if self.fail_appends > 0:
            self.fail_appends -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        try:
            super().append(records, completes)
        except LogFull:
            self.refused_full += 1
            raise
        self.appended.append([r.seq for r in records])

    def sync(self) -> None:
        self.sync_threads.add(threading.get_ident())
        self.in_sync.set()
        if self.sync_gate is not None:
            assert self.sync_gate.wait(WAIT_S), "test never opened the sync gate"
        if self.fail_syncs > 0:
            self.fail_syncs -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().sync()
        self.syncs += 1
        self.synced_through = self.last_seq

    def read(self, max_records: int, max_bytes: int) -> list[Record]:
        self.reads += 1
        return super().read(max_records, max_bytes)

    def ack(self, seq: int) -> None:
        self.acks.append(seq)
        super().ack(seq)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivery retries a failed batch after 5 ms, backing off to at most 20 ms.

    A test module takes it with ``from factories import fast_retries as fast_retries``:
    the redundant alias tells ruff the import is meant (tests use it by name only).
    """
    monkeypatch.setattr(delivery_module, "RETRY_INITIAL_S", 0.005)
    monkeypatch.setattr(delivery_module, "RETRY_MAX_S", 0.02)


class CleansUp(Protocol):
    async def cleanup(self) -> None: ...


H = TypeVar("H", bound=CleansUp)


def harness_fixture(build: Callable[..., H]) -> object:
    """A fixture that gives a test a factory of ``build`` harnesses (keyword arguments go to
    ``build``), and cleans up every harness it made once the test is over.

    A test module names it by assigning it: ``make_harness = harness_fixture(Harness)``;
    each harness's ``cleanup`` stops what the test left running.
    """

    async def make_harnesses() -> AsyncIterator[Callable[..., H]]:
        made: list[H] = []

        def factory(**kwargs: Any) -> H:
            harness = build(**kwargs)
            made.append(harness)
            return harness

        yield factory
        for harness in made:
            await harness.cleanup()

    return pytest.fixture(make_harnesses)
