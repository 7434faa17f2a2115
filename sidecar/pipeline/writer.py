"""The log writer: queue → CloudEvents records → durable log (→ fsync), and back from the
stages that complete events.

Events the detection and privacy stages still have to complete are written at once as
*ahead* records and handed to those stages (``Completion``); they come back completed and
are appended again as *final* records (``sidecar/pipeline/ahead.py``). So a response
waiting for its event's fsync never waits for the stages. At most ``ROOM`` events are
with the stages at a time: beyond that, events needing them stay in the queue, which
fills, and its ``when_full`` applies.

Encoding, appending and fsync run in the writer's own thread; the task on the loop only
moves batches and wakes whoever waits. Durability modes:

- ``sync``: every batch is fsynced before ``Durability.advance`` releases the responses
  waiting for it. Batches form while the previous fsync runs, so one fsync covers many
  events under load (group commit).
- ``batch``: fsync at most every ``interval``; a crash loses at most that window, which
  the log counts on restart (``lost_on_crash``).
- ``memory``: the log is in memory; nothing survives the process.

A full log under ``block`` (``LogFull``) or a failing disk keeps the batch and retries;
the queue in front absorbs the wait, and admission control refuses new requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sidecar.durability.base import EventLog, LogFull, full_headroom
from sidecar.durability.framing import frame_size
from sidecar.events.cloudevents import to_record
from sidecar.events.model import AnyEvent, InferenceEvent, carried_alerts
from sidecar.events.queue import EventQueue
from sidecar.events.record import EVENT_SEQ_STEP, Record, next_event_seq, trailing_seqs
from sidecar.logs import get_logger
from sidecar.pipeline import ahead
from sidecar.pipeline.handoff import Batch, Handoff
from sidecar.pipeline.waiters import Durability

log = get_logger("writer")

BATCH_MAX = 1024
# batch and memory modes only (sync responses wait for their batch): each round costs
# a hand-off to the writer thread and back, and the context switches and GIL hand-overs
# that come with it cost more CPU than encoding the round's events. 10 ms rather than
# 2 ms (and delivery's 25 ms) took 8-30 us of CPU an event off the sidecar at 2,300-3,900
# events/s (bench/RESULTS.md). batch mode lingers at most a fifth of its fsync interval.
LINGER_S = 0.010
FINALS_LINGER_S = 0.02  # sync mode: finals wait this long for events to ride along with
RETRY_S = 0.005
DISK_RETRY_MAX_S = 1.0
# Events with the completing stages at once: bounds the raw captures held in memory.
# Each one's final record takes a seq in the block of the last event appended before it.
ROOM = 4096
assert ROOM < EVENT_SEQ_STEP


def needs_completion(event: AnyEvent) -> bool:
    """Whether a stage still has to complete ``event``: it carries raw references for the
    detectors (``observed``) or for masking (``capture``)."""
    return isinstance(event, InferenceEvent) and (
        getattr(event, "observed", None) is not None
        or getattr(event, "capture", None) is not None)


def _drop_raw(event: AnyEvent) -> None:
    for name in ("observed", "capture"):
        if getattr(event, name, None) is not None:
            delattr(event, name)


@dataclass
class Completion:
    """The stages that complete events after their ahead record: the writer hands them
    events through ``out`` and takes them back, completed and in order, from ``back``."""

    out: Handoff
    back: Handoff
    ledger: ahead.Ledger
    # Completes what it can at once, before the append (the privacy stage's memo): such
    # an event is written once, whole, and never goes to the stages.
    settle: Callable[[AnyEvent], None] | None = None


@dataclass
class _Round:
    """One append: finals first (their seqs fall in the last appended event's block), then
    the events taken from the queue."""

    finals: Batch  # (ahead seq, completed event)
    final_seqs: list[int]
    events: Batch
    completes: list[bool]  # per event: written ahead, to be completed
    records: list[Record] | None = None  # encoded once, in the writer thread


class LogWriter:
    def __init__(
        self,
        queue: EventQueue,
        event_log: EventLog,
        mode: str,
        interval: float,
        on_appended: Callable[[], None],
        on_disk_error: Callable[[bool], None],
        on_drop: Callable[[str, int], None],
        durability_timeout: float = 5.0,
        on_notices_dropped: Callable[[str, int], None] | None = None,
        completion: Completion | None = None,
    ) -> None:
        self.queue = queue
        self.log = event_log
        self.mode = mode
        self.interval = interval
        self.linger = LINGER_S if mode != "batch" else min(LINGER_S, interval / 5)
        self.durability = Durability(durability_timeout)
        self.completion = completion
        self._on_appended = on_appended
        self._on_disk_error = on_disk_error
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-wal")
        self._last_sync = time.monotonic()
        self._dirty = False
        self._appended = False  # whether the round in hand is in the log already
        self._dropped_newest = 0  # of the round in hand, by when_full
        self._last_seq = event_log.last_seq  # the last seq given to a record
        self._on_drop = on_drop
        self._on_notices_dropped = on_notices_dropped  # alerts and policy changes lost
        self.give_up_at: float | None = None  # monotonic deadline, set at shutdown
        # A round takes at most half of what the log holds below its ``full`` mark, and no
        # more than is free below it, going by the largest record seen lately: a round
        # bigger than the log would never fit (the writer would hold it for ever), and
        # one bigger than the free room would be held while the log is not yet ``full``,
        # which admission control reads. While the writer holds a round a full log
        # refused, ``blocked`` tells admission control to refuse new requests (503s).
        self._headroom = full_headroom(event_log.max_bytes)
        self._room = (event_log.max_bytes - self._headroom) // 2
        self._record_max = 4096.0  # the largest record frame lately (decays per round)
        self.blocked = False  # holding a round the full log refused (``block``)
        self._round_cap = BATCH_MAX  # the cap of the round being taken (see ``_cap``)

    # --- writer thread -----------------------------------------------------------------

    def _encode(self, work: _Round) -> list[Record]:
        if work.records is None:
            # ahead seq 0: a notice a stage raised (an alert), written whole after the
            # final record of its inference
            records = [ahead.final(to_record(event, seq), ahead_seq) if ahead_seq
                       else to_record(event, seq)
                       for (ahead_seq, event), seq in zip(work.finals, work.final_seqs,
                                                          strict=True)]
            for (seq, event), completes in zip(work.events, work.completes, strict=True):
                record = to_record(event, seq)
                records.append(ahead.ahead(record) if completes else record)
            work.records = records
        return work.records

    def _append(self, work: _Round) -> None:
        before = self.log.stats()
        records = self._encode(work)
        if records:
            largest = max(frame_size(r) for r in records)
            self._record_max = max(self._record_max * 0.99, largest)
        self.log.append(records)
        self._dirty = True
        after = self.log.stats()
        self._dropped_newest = after.dropped_newest - before.dropped_newest
        if after.dropped_oldest != before.dropped_oldest:
            self._on_drop("log_full_oldest", after.dropped_oldest - before.dropped_oldest)
        if self._dropped_newest:
            self._on_drop("log_full_newest", self._dropped_newest)
        notices = after.notices_dropped - before.notices_dropped
        if notices:
            reason = "log_full_oldest" if self.log.when_full == "drop_oldest" else "log_full_newest"
            self._notices_dropped(reason, notices)

    def _notices_dropped(self, reason: str, count: int) -> None:
        if count and self._on_notices_dropped is not None:
            self._on_notices_dropped(reason, count)

    def _sync_due(self, work: _Round) -> bool:
        # sync: a round of final records alone releases no response; a crash before its
        # fsync costs those events their payloads (sent from their ahead records), so it
        # waits for the next round's fsync or the interval, as in batch mode.
        if self.mode == "sync" and work.events:
            return True
        return time.monotonic() - self._last_sync >= self.interval

    def _sync(self) -> None:
        if self._dirty:
            self.log.sync()
            self._dirty = False
        self._last_sync = time.monotonic()

    def _persist(self, work: _Round) -> None:
        """Writer thread: append (once), then fsync if due. One hand-off per round; after a
        failed fsync the retry must not append the round again."""
        if not self._appended:
            self._append(work)
            self._appended = True
        if self._sync_due(work):
            self._sync()

    # --- on the loop -------------------------------------------------------------------

    def _take_events(self, max_items: int) -> tuple[Batch, list[bool]]:
        completion = self.completion
        if completion is None or completion.out.closed:
            batch = self.queue.take(max_items)
            for _, event in batch:  # only after shutdown closed the stages: never raw on disk
                _drop_raw(event)
            return batch, [False] * len(batch)
        room = ROOM - len(completion.ledger.open)
        completes: list[bool] = []

        settle = completion.settle

        def admit(event: AnyEvent) -> bool:
            nonlocal room
            if settle is not None:
                settle(event)
            needed = needs_completion(event)
            if needed:
                if room <= 0:
                    return False
                room -= 1
            completes.append(needed)
            return True

        return self.queue.take_while(max_items, admit), completes

    def _take_finals(self, max_items: int) -> Batch:
        return [] if self.completion is None else self.completion.back.take(max_items)

    def _cap(self) -> int:
        """Records in the next round: ``BATCH_MAX``, fewer when the log is too small for
        that many, or (``block`` only: the drop policies make room) when less is free."""
        room = self._room
        if self.log.when_full == "block":
            room = min(room, self.log.max_bytes - self._headroom - self.log.bytes_used)
        return max(1, min(BATCH_MAX, int(room / self._record_max)))

    def _take(self, work: _Round | None = None) -> _Round:
        if work is None:
            work = _Round([], [], [], [])
        cap = self._round_cap = self._cap()
        # Finals and notices must fit in the rest of the last event's seq block, at two
        # seqs each at most (``trailing_seqs``); never short in practice (ROOM events with
        # a few alerts each), but never wrong either.
        left = next_event_seq(self._last_seq) - self._last_seq - 1
        space = (left - 2 * len(work.finals)) // 2
        finals = self._take_finals(max(0, min(cap - len(work.finals), space)))
        room = cap - len(work.finals) - len(finals) - len(work.events)
        events, completes = self._take_events(room) if room > 0 else ([], [])
        work.finals += finals
        work.events += events
        work.completes += completes
        return work

    def _finished(self) -> bool:
        if not self.queue.closed or len(self.queue):
            return False
        completion = self.completion
        if completion is None:
            return True
        if not completion.out.closed:
            completion.out.close()  # nothing more to complete: the stages drain and stop
        return completion.back.closed and not len(completion.back)

    async def _wait(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not len(self.queue):  # else the queue waits for room: only finals make some
            self.queue.notify_on(future)
        if self.completion is not None:
            self.completion.back.notify_on(future)
        await future

    async def _wait_for_events(self, work: _Round) -> None:
        """A round of finals alone releases no response and costs a round trip to the
        writer thread that the next events would queue behind: let the finals ride with
        the next events instead, unless they wait longer than FINALS_LINGER_S."""
        if len(self.queue) or self.queue.closed or len(work.finals) >= BATCH_MAX // 2:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.notify_on(future)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, FINALS_LINGER_S)
        self._take(work)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            work = self._take()
            if not work.finals and not work.events:
                if self._finished():
                    await self._retry(loop, self._sync, 0)  # the last fsync: best effort
                    return
                await self._wait()
                continue
            if (self.mode != "sync" and len(work.finals) + len(work.events) < self._round_cap
                    and not self.queue.closed):
                # Nothing waits on this round: let it grow, one hand-off for many events.
                await asyncio.sleep(self.linger)
                self._take(work)
            elif not work.events:
                await self._wait_for_events(work)
            await self._write(loop, work)

    async def _write(self, loop: asyncio.AbstractEventLoop, work: _Round) -> None:
        # Finals take the seqs after the last record's: the block of the last event
        # appended, which no event in the queue can reach (ROOM < EVENT_SEQ_STEP).
        work.final_seqs = trailing_seqs(self._last_seq,
                                        [not ahead_seq for ahead_seq, _ in work.finals])
        last = work.events[-1][0] if work.events else (
            work.final_seqs[-1] if work.final_seqs else self._last_seq)
        self._appended, self._dropped_newest = False, 0
        gave_up = await self._retry(loop, functools.partial(self._persist, work),
                                    len(work.events))
        self._last_seq = max(self._last_seq, last)
        if self._appended:
            self._on_appended()
        if gave_up and not self._appended:  # counted before _complete drops what they carry
            self._on_drop(gave_up, len(work.events))
            self._notices_dropped(gave_up, sum(1 for seq, _ in work.finals if not seq)
                                  + sum(carried_alerts(event) for _, event in work.events))
            # Not kept: their responses must not go out as if they were, which the next
            # round's advance (past these seqs) would do.
            self.durability.fail_through(last)
        self._complete(work, appended=self._appended)
        if gave_up:
            return
        if self.mode in ("sync", "memory"):
            self.durability.advance(self._last_seq)

    def _complete(self, work: _Round, appended: bool) -> None:
        """After the append: finals leave the ledger, events written ahead go to the
        stages (not those ``when_full`` refused: they are dropped, and counted)."""
        completion = self.completion
        if completion is None:
            return
        ledger = completion.ledger
        for ahead_seq, _ in work.finals:
            if not ahead_seq:
                continue  # a notice
            if ledger.open and ledger.open[0] == ahead_seq:
                ledger.open.popleft()
            else:  # not expected: the stages keep order; stay correct anyway
                with contextlib.suppress(ValueError):
                    ledger.open.remove(ahead_seq)
        kept = len(work.events) - max(0, self._dropped_newest) if appended else 0
        handed: Batch = []
        for i, ((seq, event), completes) in enumerate(
                zip(work.events, work.completes, strict=True)):
            if not completes:
                continue
            if i < kept:
                handed.append((seq, event))
            else:
                if appended:  # else the round was given up on: counted by the caller
                    self._notices_dropped("log_full_newest", carried_alerts(event))
                _drop_raw(event)
        if handed:
            ledger.open.extend(seq for seq, _ in handed)
            completion.out.put_nowait(handed)
        if appended:
            ledger.publish(self._last_seq)

    async def _retry(
        self, loop: asyncio.AbstractEventLoop, step: Callable[[], None], events: int
    ) -> str | None:
        """Run ``step`` in the writer thread until it succeeds (None), or until shutdown
        gives up: then the drop reason."""
        delay = RETRY_S
        failing = False
        while True:
            try:
                await loop.run_in_executor(self._executor, step)
                break
            except LogFull:
                self.blocked = True  # admission control refuses new requests meanwhile
                drop, pause = "log_full_at_shutdown", RETRY_S  # block: wait for a trim
            except OSError as exc:
                drop, pause, delay = "disk_error_at_shutdown", delay, min(delay * 2,
                                                                         DISK_RETRY_MAX_S)
                failing = True
                self._on_disk_error(True)
                log.error("event log write failed; events kept for retry", extra={"fields": {
                    "reason": exc.strerror or type(exc).__name__, "events": events}})
            if self.give_up_at is not None and time.monotonic() > self.give_up_at:
                log.error("event log unavailable at shutdown; giving up",
                          extra={"fields": {"reason": drop, "events": events}})
                return drop
            await asyncio.sleep(pause)
        self.blocked = False
        if failing:
            self._on_disk_error(False)
        return None

    async def run_periodic_sync(self) -> None:
        """In batch mode (and for final records in sync mode), fsync at least every
        ``interval`` even when traffic stops."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            if self._dirty and time.monotonic() - self._last_sync >= self.interval:
                try:
                    await loop.run_in_executor(self._executor, self._sync)
                except OSError as exc:
                    log.error("event log fsync failed", extra={"fields": {
                        "reason": exc.strerror or type(exc).__name__}})

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
