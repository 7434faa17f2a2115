"""Events written ahead: the log writer with completing stages, and delivery of ahead and
final records (``sidecar/pipeline/ahead.py``).

Real ``MemoryLog``/``WriteAheadLog``, real ``LogWriter`` and ``Delivery``; the completing
stages are one fake stage task (held until the test releases it), since what is tested
here is the writer's and delivery's side of the contract. ``tests/integration/
test_written_ahead.py`` proves the same with the real worker stages and SIGKILL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from factories import IDENTITY, WAIT_S, harness_fixture, make_event, sample, wait_until

from detectors.base import Alert
from sidecar.detection.observed import Observed
from sidecar.durability.base import EventLog
from sidecar.durability.memory import MemoryLog
from sidecar.durability.wal import WriteAheadLog
from sidecar.events.cloudevents import to_record
from sidecar.events.model import AnyEvent, InferenceEvent
from sidecar.events.notices import alert_event
from sidecar.events.queue import EventQueue
from sidecar.events.record import EVENT_SEQ_STEP, Record, event_number, is_notice
from sidecar.pipeline import ahead
from sidecar.pipeline import rounds as rounds_module
from sidecar.pipeline import writer as writer_module
from sidecar.pipeline.ahead import Ledger, Mark
from sidecar.pipeline.delivery import Delivery
from sidecar.pipeline.handoff import Handoff
from sidecar.pipeline.rounds import Completion
from sidecar.pipeline.writer import LogWriter
from sidecar.sinks.memory import MemorySink
from sidecar.telemetry import Metrics

RAW = object()  # stands for the raw references a stage reads (never serialised)


def completing(n: int, **overrides: Any) -> InferenceEvent:
    """Event ``n`` with raw references a stage must take off: it is written ahead."""
    event = make_event(n, privacy={"profile": "strict", "failure": "not_masked"}, **overrides)
    event.observed = RAW
    return event


def origin(event: InferenceEvent) -> dict[str, Any]:
    """What an alert takes from its inference."""
    return {"inference_id": event.inference_id, "timestamp": event.timestamp,
            "route": event.route, **IDENTITY}


class FakeStage:
    """Completes events in order, once ``release`` is set: sets ``features``, drops the raw
    references, as the detection stage does."""

    def __init__(self, source: Handoff, back: Handoff) -> None:
        self.source, self.back = source, back
        self.release = asyncio.Event()
        self.release.set()
        self.seen = 0
        self.alerting = False  # each event raises an alert, which follows its batch
        self.alert_message = "burst"

    async def run(self) -> None:
        try:
            while True:
                batch = await self.source.get_batch(256)
                if not batch:
                    return
                self.seen += len(batch)
                await self.release.wait()
                for _, event in batch:
                    assert isinstance(event, InferenceEvent)
                    del event.observed
                    event.features = {"completed": True}
                if self.alerting:
                    batch = batch + [(0, alert_event(
                        Alert("rate", "warning", self.alert_message, kind="abuse",
                              inference_id=event.inference_id), origin(event)))
                        for _, event in batch]
                await self.back.put_batch(batch)
        finally:
            self.back.close()


class Harness:
    def __init__(self, log: EventLog | None = None, mode: str = "sync") -> None:
        self.log: EventLog = log if log is not None else KeepingLog()
        self.metrics = Metrics(IDENTITY)
        self.sink = MemorySink()
        self.queue = EventQueue(10_000, "block", first_seq=self.log.next_seq,
                                on_accept=self.log.note_accepted)
        self.ledger = Ledger(self.log.last_seq)
        out, back = Handoff(rounds_module.ROOM), Handoff(2048)
        self.stage = FakeStage(out, back)
        self.delivery = Delivery(self.log, self.sink, self.metrics, self.ledger)
        self.drops: list[tuple[str, int]] = []
        self.notices_dropped: list[tuple[str, int]] = []
        self.writer = LogWriter(
            self.queue, self.log, mode, 0.01, on_appended=self.delivery.notify,
            on_disk_error=lambda failing: None,
            on_drop=lambda reason, n: self.drops.append((reason, n)),
            on_notices_dropped=lambda reason, n: self.notices_dropped.append((reason, n)),
            completion=Completion(out, back, self.ledger))
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.stage.run()), loop.create_task(self.writer.run()),
                      loop.create_task(self.delivery.run())]

    def put(self, events: list[AnyEvent]) -> list[int]:
        return [self.queue.put(event) for event in events]

    def sent(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.sink.records]

    async def stop(self) -> None:
        self.queue.close()
        self.stage.release.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks[:2]), WAIT_S)
        await asyncio.wait_for(self.delivery.stop(self.tasks[2], WAIT_S), WAIT_S + 5)
        self.writer.shutdown()

    async def cleanup(self) -> None:
        if self.tasks and not all(t.done() for t in self.tasks):
            await self.stop()
        self.log.close()


make_harness = harness_fixture(Harness)


class KeepingLog(MemoryLog):
    """A MemoryLog that also keeps every record appended to it, for the test to look at."""

    def __init__(self, max_bytes: int = 1 << 30, when_full: str = "block") -> None:
        super().__init__(max_bytes, when_full)
        self.kept: list[Record] = []
        self.rounds: list[list[tuple[bool, int | None]]] = []  # parts, per append

    def append(self, records: Sequence[Record], completes: bool = False) -> None:
        super().append(records, completes)
        self.kept.extend(records)
        self.rounds.append([ahead.part(r) for r in records])


def appended(log: EventLog) -> list[Record]:
    assert isinstance(log, KeepingLog)
    return list(log.kept)


async def test_a_sync_response_is_released_by_its_ahead_record_before_the_stage_is_done(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.stage.release.clear()  # the stage holds what it gets
    h.start()
    (seq,) = h.put([completing(1)])
    waiter = h.writer.durability.wait(seq)
    assert waiter is not None
    await asyncio.wait_for(waiter, WAIT_S)  # released although the stage holds the event
    await wait_until(lambda: h.stage.seen == 1)
    records = appended(h.log)
    assert [ahead.part(r) for r in records] == [(True, None)]
    data = orjson.loads(records[0].value)["data"]
    assert data["features"] is None and data["inference_id"] == "inf-000001"
    assert h.sink.records == []  # the ahead record alone is never sent while its final is due


async def test_the_final_record_follows_in_the_same_event_block_and_is_sent_once(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.start()
    (seq,) = h.put([completing(1)])
    await wait_until(lambda: len(h.sink.records) == 1)
    records = appended(h.log)
    assert [ahead.part(r) for r in records] == [(True, None), (False, seq)]
    final = records[1]
    assert final.seq > seq and event_number(final.seq) == event_number(seq)
    sent = h.sink.records[0]
    assert not any(name.startswith("sidecar-") for name, _ in sent.headers)
    assert orjson.loads(sent.value)["data"]["features"] == {"completed": True}
    await h.stop()
    assert len(h.sink.records) == 1 and h.log.stats().records_pending == 0


async def test_events_with_nothing_to_complete_are_written_once_and_all_arrive(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.start()
    events: list[AnyEvent] = [completing(n) if n % 2 else make_event(n) for n in range(1, 41)]
    seqs = h.put(events)
    await h.stop()
    sent = h.sent()
    assert sorted(e["id"] for e in sent) == sorted(f"inf-{n:06d}" for n in range(1, 41))
    assert len(sent) == 40  # exactly once each
    for envelope in sent:
        n = int(envelope["id"].rsplit("-", 1)[1])
        assert (envelope["data"]["features"] == {"completed": True}) == bool(n % 2)
    assert h.log.stats().records_pending == 0  # everything acked
    # Numbering: each event its own block, in the order they were accepted.
    assert seqs == [seqs[0] + i * EVENT_SEQ_STEP for i in range(40)]


async def test_at_most_room_events_are_with_the_stages_and_order_is_kept(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rounds_module, "ROOM", 3)
    h = make_harness()
    h.stage.release.clear()
    h.start()
    h.put([completing(n) for n in range(1, 11)] + [make_event(11)])
    await wait_until(lambda: h.stage.seen == 3)
    await asyncio.sleep(0.05)  # give the writer every chance to take more
    assert h.stage.seen == 3 and len(h.ledger.open) == 3
    assert len(h.queue) == 8  # the rest waits in the queue, the plain event behind them too
    assert [ahead.part(r)[0] for r in appended(h.log)] == [True] * 3
    h.stage.release.set()
    await wait_until(lambda: len(h.sink.records) == 11)
    assert h.stage.seen == 10


async def test_an_ahead_record_waiting_for_its_final_is_never_trimmed(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.stage.release.clear()
    h.start()
    h.put([completing(1), make_event(2), make_event(3)])
    await wait_until(lambda: len(h.sink.records) == 2)  # the two plain ones
    assert h.log.stats().records_pending == 3  # acked only below the waiting ahead record
    h.stage.release.set()
    await wait_until(lambda: len(h.sink.records) == 3)
    await wait_until(lambda: h.log.stats().records_pending == 0)


async def test_the_log_gauges_count_an_event_written_ahead_once(
    make_harness: Callable[..., Harness],
) -> None:
    """Until delivery takes them, a completed event is two records in the log (ahead and
    final): ``log_events`` counts it once, ``log_records`` twice."""
    h = make_harness()
    h.metrics.bind_pipeline(lambda: len(h.queue), h.log.stats, lambda: 0.0)
    loop = asyncio.get_running_loop()
    h.tasks = [loop.create_task(h.stage.run()), loop.create_task(h.writer.run())]
    h.put([completing(n) if n % 2 else make_event(n) for n in range(1, 11)])
    await wait_until(lambda: len(appended(h.log)) == 15)  # 5 ahead + 5 final + 5 plain
    stats = h.log.stats()
    assert (stats.events_pending, stats.records_pending) == (10, 15)
    assert sample(h.metrics, "inference_sidecar_log_events") == 10
    assert sample(h.metrics, "inference_sidecar_log_records") == 15
    h.tasks.append(loop.create_task(h.delivery.run()))
    await wait_until(lambda: len(h.sink.records) == 10)
    await wait_until(lambda: h.log.stats().records_pending == 0)
    assert sample(h.metrics, "inference_sidecar_log_events") == 0
    assert sample(h.metrics, "inference_sidecar_log_records") == 0
    await h.stop()


async def test_in_sync_mode_finals_ride_with_the_next_events_or_go_after_a_linger(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writer_module, "FINALS_LINGER_S", 0.3)
    h = make_harness()
    assert isinstance(h.log, KeepingLog)
    h.start()
    (first,) = h.put([completing(1)])
    await wait_until(lambda: h.stage.seen == 1)
    await asyncio.sleep(0.1)  # the final is back by now, and waits for company
    assert h.log.rounds == [[(True, None)]]
    h.put([make_event(2)])
    await wait_until(lambda: len(h.log.rounds) == 2)
    assert h.log.rounds[1] == [(False, first), (False, None)]  # one round, one fsync
    # With no traffic, a final goes on its own once the linger is over.
    h.put([completing(3)])
    await wait_until(lambda: len(h.sink.records) == 3, timeout=5)
    assert h.log.rounds[-1] == [(False, h.log.kept[-2].seq)]


# --- ahead records whose final will not come ---------------------------------------------


def previous_run(directory: Path, completed: set[int], count: int) -> list[int]:
    """A log as a run that crashed leaves it: ``count`` ahead records, finals only for
    the event numbers in ``completed``."""
    log = WriteAheadLog(str(directory), 1 << 26, 1 << 20, "block")
    seq = log.next_seq
    heads: list[int] = []
    for n in range(1, count + 1):
        event = completing(n)
        del event.observed
        log.append([ahead.ahead(to_record(event, seq))])
        heads.append(seq)
        seq += EVENT_SEQ_STEP
    finals = []
    for i, n in enumerate(sorted(completed)):
        event = completing(n, features={"completed": True})
        del event.observed
        finals.append(ahead.final(to_record(event, heads[-1] + 1 + i), heads[n - 1]))
    log.append(finals)
    log.sync()
    log.close()
    return heads


async def test_after_a_crash_ahead_records_without_a_final_are_sent_marked_lost(
    make_harness: Callable[..., Harness], tmp_path: Path,
) -> None:
    previous_run(tmp_path / "wal", completed={2, 4}, count=5)
    h = make_harness(log=WriteAheadLog(str(tmp_path / "wal"), 1 << 26, 1 << 20, "block"))
    h.start()
    await wait_until(lambda: len(h.sink.records) == 5)
    by_id = {e["id"]: e["data"] for e in h.sent()}
    assert sorted(by_id) == [f"inf-{n:06d}" for n in range(1, 6)]
    for n in (2, 4):
        assert by_id[f"inf-{n:06d}"]["features"] == {"completed": True}
    for n in (1, 3, 5):
        data = by_id[f"inf-{n:06d}"]
        assert data["privacy"]["failure"] == ahead.LOST_IN_CRASH
        assert data["features"] is None and data["payload"] is None
    assert h.metrics.events_incomplete.labels(ahead.LOST_IN_CRASH)._value.get() == 3
    await wait_until(lambda: h.log.stats().records_pending == 0)
    # The new run's own events are not confused with the old ones.
    h.put([completing(6)])
    await wait_until(lambda: len(h.sink.records) == 6)
    assert h.sent()[-1]["data"]["features"] == {"completed": True}


async def test_alerts_follow_their_batch_as_notices_with_odd_seqs(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    h.stage.alerting = True
    h.start()
    h.put([completing(n) for n in range(1, 6)])
    await wait_until(lambda: len(h.sink.records) == 10)  # 5 events (completed), 5 alerts
    kept = appended(h.log)
    alerts = [r for r in kept if dict(r.headers)["ce_type"] == b"ai.detector.alert"]
    assert len(alerts) == 5
    assert all(is_notice(r.seq) for r in alerts)
    assert not any(is_notice(r.seq) for r in kept if r not in alerts)
    await h.stop()


async def filled_with_alerts_held(h: Harness, completing_events: int, last: int) -> Harness:
    """``h`` started with events whose alerts the stage holds back (each larger than any
    room a full log leaves) and fillers after them, until event ``last``; nothing is
    delivered, so nothing frees the log."""
    h.stage.alerting = True
    h.stage.alert_message = "burst " * 1200
    h.stage.release.clear()
    h.sink.fail_next = 10**9
    h.start()
    h.put([completing(n) for n in range(1, completing_events + 1)])
    await wait_until(lambda: h.stage.seen == completing_events)
    h.put([make_event(n, path="/" + "p" * 4000) for n in range(completing_events + 1, last)])
    return h


async def test_alerts_a_full_log_refuses_are_counted_as_dropped_notices(
    make_harness: Callable[..., Harness],
) -> None:
    log = MemoryLog(64 * 1024, "drop_newest")
    h = await filled_with_alerts_held(make_harness(log=log), 3, 40)
    await wait_until(lambda: bool(h.drops))
    await wait_until(lambda: len(h.queue) == 0)
    assert h.notices_dropped == []
    pending = log.stats().records_pending
    h.stage.release.set()
    # The three finals fit, the three alerts (in one round or more) did not: they are
    # counted as lost notices, not as lost events.
    await wait_until(lambda: sum(n for _, n in h.notices_dropped) == 3)
    assert {reason for reason, _ in h.notices_dropped} == {"log_full_newest"}
    assert log.stats().notices_dropped == 3
    assert log.stats().records_pending == pending + 3  # the finals
    assert all(reason == "log_full_newest" for reason, _ in h.drops)
    h.sink.fail_next = 0
    await h.stop()


async def test_under_block_the_alerts_of_events_in_the_log_go_in_even_at_shutdown(
    make_harness: Callable[..., Harness],
) -> None:
    # They complete events already in the log, as their finals do (EventLog.append's
    # ``completes``): a full log takes them; the fillers after them are what it refuses.
    log = KeepingLog(32 * 1024, "block")
    h = await filled_with_alerts_held(make_harness(log=log), 2, 20)
    await wait_until(lambda: h.writer.blocked)  # the rest of the fillers wait, unwritten
    h.writer.give_up_at = time.monotonic()  # shutdown: a full log is given up on at once
    h.stage.release.set()
    h.queue.close()
    await wait_until(lambda: sum(1 for r in log.kept if is_notice(r.seq)) == 2)
    await wait_until(lambda: any(reason == "log_full_at_shutdown" for reason, _ in h.drops))
    assert h.notices_dropped == [] and log.stats().notices_dropped == 0
    h.sink.fail_next = 0
    await h.stop()


async def test_an_ahead_record_whose_final_the_log_refused_is_sent_marked_log_full() -> None:
    log = MemoryLog(1 << 20)
    metrics = Metrics(IDENTITY)
    sink = MemorySink()
    ledger = Ledger(log.last_seq)
    delivery = Delivery(log, sink, metrics, ledger)
    head = log.next_seq
    log.append([ahead.ahead(to_record(completing(1), head))])
    # The writer appended (or tried to) its final right after, then an unrelated event.
    ledger.mark = Mark(appended=head + EVENT_SEQ_STEP, bound=head + 1)
    log.append([to_record(make_event(2), head + EVENT_SEQ_STEP)])
    task = asyncio.get_running_loop().create_task(delivery.run())
    delivery.notify()
    await wait_until(lambda: len(sink.records) == 2)
    first, second = (orjson.loads(r.value) for r in sink.records)
    assert first["id"] == "inf-000002"
    assert second["id"] == "inf-000001"
    assert second["data"]["privacy"]["failure"] == ahead.LOG_FULL
    assert not any(name.startswith("sidecar-") for name, _ in sink.records[1].headers)
    assert await delivery.stop(task, WAIT_S)
    log.close()


async def test_an_ahead_record_still_open_is_not_taken_for_lost() -> None:
    log = MemoryLog(1 << 20)
    sink = MemorySink()
    ledger = Ledger(log.last_seq)
    delivery = Delivery(log, sink, Metrics(IDENTITY), ledger)
    head = log.next_seq
    log.append([ahead.ahead(to_record(make_event(1), head))])
    ledger.open.append(head)
    ledger.publish(head)  # the writer's view: appended through head, head still open
    task = asyncio.get_running_loop().create_task(delivery.run())
    delivery.notify()
    for _ in range(20):
        delivery.notify()
        await asyncio.sleep(0.005)
    assert sink.records == []
    ledger.open.popleft()
    log.append([ahead.final(to_record(make_event(1, features={}), head + 1), head)])
    ledger.publish(head + 1)
    delivery.notify()
    await wait_until(lambda: len(sink.records) == 1)
    assert orjson.loads(sink.records[0].value)["data"]["features"] == {}
    assert await delivery.stop(task, WAIT_S)
    log.close()


def test_orphan_marks_the_event_and_keeps_everything_else() -> None:
    event = make_event(7, privacy={"profile": "strict", "failure": "not_masked",
                                   "payload_captured": True})
    record = ahead.ahead(to_record(event, EVENT_SEQ_STEP))
    out = ahead.orphan(record, ahead.LOST_IN_CRASH)
    before, after = orjson.loads(record.value), orjson.loads(out.value)
    assert after["data"]["privacy"] == {"profile": "strict", "failure": "lost_in_crash",
                                        "payload_captured": False}
    after["data"]["privacy"] = before["data"]["privacy"]
    assert after == before
    assert out.seq == record.seq and out.key == record.key
    assert [h for h in out.headers if h[0].startswith("sidecar-")] == []
    assert ahead.part(out) == (False, None)


async def test_a_round_given_up_at_shutdown_counts_its_notices_and_carried_gate_alerts(
) -> None:
    log = MemoryLog(64 * 1024, "block")
    log.append([Record(EVENT_SEQ_STEP, b"k", b"x" * 65_400)])  # full; nothing acks it
    drops: list[tuple[str, int]] = []
    alerts: list[tuple[str, int]] = []
    queue = EventQueue(10, first_seq=log.next_seq)
    out, back = Handoff(rounds_module.ROOM), Handoff(2048)
    writer = LogWriter(queue, log, "sync", 0.01, on_appended=lambda: None,
                       on_disk_error=lambda failing: None,
                       on_drop=lambda reason, n: drops.append((reason, n)),
                       on_notices_dropped=lambda reason, n: alerts.append((reason, n)),
                       completion=Completion(out, back, Ledger(log.last_seq)))
    done = make_event(3)
    back.put_nowait([(0, alert_event(Alert("sig", "critical", "x", kind="security",
                                           inference_id=done.inference_id), origin(done)))])
    refused = completing(4, status=403)
    refused.observed = Observed(b'{"prompt": "x"}', "application/json", {})
    refused.observed.enforced = [Alert("sig", "critical", "blocked", kind="security",
                                       inference_id=refused.inference_id)]
    queue.put(refused)
    queue.close()
    back.close()
    writer.give_up_at = time.monotonic()
    await asyncio.wait_for(writer.run(), WAIT_S)
    writer.shutdown()
    assert sum(n for reason, n in drops if reason == "log_full_at_shutdown") == 1
    # the refused event's gate alert; the notice of an event in the log went in (past
    # max_bytes, as finals do under block)
    assert alerts == [("log_full_at_shutdown", 1)]
    assert [r.seq for r in log.read(10, 1 << 20) if is_notice(r.seq)] != []


async def fill_until_blocked(h: Harness, put: int = 0, limit: int = 20_000,
                             must_block: bool = True) -> int:
    """Events that the stages complete, one a loop turn, until the log refuses a round
    (``h.writer.blocked``; with ``must_block``, waited for) or ``limit`` events in all;
    the count put so far."""
    while not h.writer.blocked and put < limit:
        h.put([completing(put + 1, path="/" + "p" * 200)])
        put += 1
        await asyncio.sleep(0)
    if must_block:
        await wait_until(lambda: h.writer.blocked)
    return put


@pytest.mark.parametrize("kind", ["memory", "wal"])
async def test_a_full_log_under_block_takes_the_finals_it_waits_for_and_recovers(
    make_harness: Callable[..., Harness], kind: str, tmp_path: Path,
) -> None:
    """The log fills with events written ahead while the stage still holds them. Their
    finals must go in (past max_bytes, by what the stages hold), or the log could not be
    trimmed past them, and the finals would wait for a trim that needs them: refused
    requests for good, nothing delivered (found by review)."""
    log: EventLog = (MemoryLog(128 * 1024, "block") if kind == "memory" else
                     WriteAheadLog(str(tmp_path / "wal"), 128 * 1024, 64 * 1024, "block"))
    h = make_harness(log=log)
    h.stage.release.clear()  # a slow stage: it holds what it gets
    h.start()
    put = await fill_until_blocked(h)
    assert h.sink.records == []  # nothing deliverable: every event waits for its final
    h.stage.release.set()
    await wait_until(lambda: not h.writer.blocked and len(h.queue) == 0, timeout=30)
    await wait_until(lambda: len(h.sink.records) >= put, timeout=30)  # cheap to poll
    assert len({r["id"] for r in h.sent()}) == put
    assert all(r["data"]["features"] == {"completed": True} for r in h.sent())
    assert h.drops == [] and h.notices_dropped == []
    await h.stop()


async def test_while_blocked_the_finals_go_in_by_batches_not_one_per_retry(
    make_harness: Callable[..., Harness],
) -> None:
    log = KeepingLog(1024 * 1024, "block")
    h = make_harness(log=log)
    h.stage.release.clear()
    h.start()
    put = await fill_until_blocked(h)
    open_before, appends_before = len(h.ledger.open), len(log.rounds)
    assert open_before > 500
    h.stage.release.set()
    await wait_until(lambda: not h.writer.blocked, timeout=30, poll_s=0)
    # one final per retry (5 ms) kept the log refusing requests for seconds; now rounds
    # of up to BATCH_MAX finals, as the stages return them
    appends_while_blocked = len(log.rounds) - appends_before
    assert appends_while_blocked < open_before / 10, (appends_while_blocked, open_before)
    await wait_until(lambda: len(h.sink.records) >= put, timeout=30)  # cheap to poll
    assert len({r["id"] for r in h.sent()}) == put
    await h.stop()


async def test_a_disk_error_on_finals_while_blocked_is_retried_before_anything_else(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finals a failing disk refuses while the log is full are retried there and then,
    ahead of the round in hand: the writer stays blocked until they are in, then goes
    on. (Held back for a later retry, they could be overtaken by the round, and their
    seqs, then below the log's end, killed the writer; found by review.)"""
    class Flaky(KeepingLog):
        failing = False
        failed = taken = 0

        def append(self, records: Sequence[Record], completes: bool = False) -> None:
            if completes and self.failing and self.taken:  # after the first batch of them
                self.failed += 1
                raise OSError(5, "injected EIO")
            super().append(records, completes)
            self.taken += completes

    monkeypatch.setattr(rounds_module, "BATCH_MAX", 100)  # finals in several rounds
    log = Flaky(1024 * 1024, "block")
    h = make_harness(log=log)
    h.stage.release.clear()
    h.start()
    put = await fill_until_blocked(h)
    log.failing = True
    h.stage.release.set()
    await wait_until(lambda: log.failed >= 3)
    await asyncio.sleep(1.0)  # delivery trimmed past the first batch: room for the round
    assert h.writer.blocked  # still refusing: nothing went around the failing finals
    log.failing = False  # the disk recovers
    await wait_until(lambda: not h.writer.blocked and len(h.queue) == 0, timeout=30)
    for _ in range(3):  # the log fills and empties again: the writer goes on
        put = await fill_until_blocked(h, put, put + 5000, must_block=False)
        await wait_until(lambda: not h.writer.blocked and len(h.queue) == 0, timeout=30)
    await wait_until(lambda: len(h.sink.records) >= put, timeout=30)  # cheap to poll
    assert len({r["id"] for r in h.sent()}) == put
    assert h.drops == [] and h.notices_dropped == []
    assert not h.tasks[1].done()
    await h.stop()
