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

from sidecar.durability.base import EventLog, LogFull
from sidecar.events.model import carried_alerts
from sidecar.events.queue import EventQueue
from sidecar.events.record import trailing_seqs
from sidecar.logs import get_logger
from sidecar.pipeline.rounds import BATCH_MAX, Completion, Round, Rounds
from sidecar.pipeline.waiters import Durability

log = get_logger("writer")

# batch and memory modes only (sync responses wait for their batch): each round costs
# a hand-off to the writer thread and back, and the context switches and GIL hand-overs
# that come with it cost more CPU than encoding the round's events. 10 ms rather than
# 2 ms (and delivery's 25 ms) took 8-30 us of CPU an event off the sidecar at 2,300-3,900
# events/s (bench/RESULTS.md). batch mode lingers at most a fifth of its fsync interval.
LINGER_S = 0.010
FINALS_LINGER_S = 0.02  # sync mode: finals wait this long for events to ride along with
RETRY_S = 0.005
DISK_RETRY_MAX_S = 1.0


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
        self.rounds = Rounds(queue, event_log, completion)
        self._on_appended = on_appended
        self._on_disk_error = on_disk_error
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-wal")
        self._last_sync = time.monotonic()
        self._dirty = False
        self._appended = False  # whether the round in hand is in the log already
        self._finals_unseen = False  # its finals went in alone: delivery not told yet
        self._dropped_newest = 0  # of the round in hand, by when_full
        self._on_drop = on_drop
        self._on_notices_dropped = on_notices_dropped  # alerts and policy changes lost
        self.give_up_at: float | None = None  # monotonic deadline, set at shutdown
        # While the writer holds a round a full log refused, ``blocked`` tells admission
        # control to refuse new requests (503s).
        self.blocked = False

    # --- writer thread -----------------------------------------------------------------

    def _append(self, work: Round) -> None:
        before = self.log.stats()
        records = self.rounds.encode(work)
        if work.finals_in:  # a retry: the finals went in when the log first refused
            records = records[len(work.finals):]
        try:
            self.log.append(records)
        except LogFull:
            if not work.finals or work.finals_in:
                raise
            # The finals complete events the log holds and cannot trim past until they
            # are in: they go in now (past max_bytes if need be, by what the stages hold;
            # see EventLog.append), and the new events wait for room, as before. Waiting
            # with the finals too jammed the log for good.
            self.log.append(records[:len(work.finals)], completes=True)
            work.finals_in = self._dirty = self._finals_unseen = True
            raise
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

    def _sync_due(self, work: Round) -> bool:
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

    def _persist(self, work: Round) -> None:
        """Writer thread: append (once), then fsync if due. One hand-off per round; after a
        failed fsync the retry must not append the round again."""
        if not self._appended:
            self._append(work)
            self._appended = True
        if self._sync_due(work):
            self._sync()

    # --- on the loop -------------------------------------------------------------------

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

    async def _wait_for_events(self, work: Round) -> None:
        """A round of finals alone releases no response and costs a round trip to the
        writer thread that the next events would queue behind: let the finals ride with
        the next events instead, unless they wait longer than FINALS_LINGER_S."""
        if len(self.queue) or self.queue.closed or len(work.finals) >= BATCH_MAX // 2:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.notify_on(future)
        with contextlib.suppress(TimeoutError):  # not wait_for: see detection/runtime.py
            async with asyncio.timeout(FINALS_LINGER_S):
                await future
        self.rounds.take(work)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            work = self.rounds.take()
            if not work.finals and not work.events:
                if self._finished():
                    await self._retry(loop, self._sync, 0)  # the last fsync: best effort
                    return
                await self._wait()
                continue
            if (self.mode != "sync" and len(work.finals) + len(work.events) < self.rounds.cap_now
                    and not self.queue.closed):
                # Nothing waits on this round: let it grow, one hand-off for many events.
                await asyncio.sleep(self.linger)
                self.rounds.take(work)
            elif not work.events:
                await self._wait_for_events(work)
            await self._write(loop, work)

    async def _write(self, loop: asyncio.AbstractEventLoop, work: Round) -> None:
        # Finals take the seqs after the last record's: the block of the last event
        # appended, which no event in the queue can reach (ROOM < EVENT_SEQ_STEP).
        rounds = self.rounds
        work.final_seqs = trailing_seqs(rounds.last_seq,
                                        [not ahead_seq for ahead_seq, _ in work.finals])
        last = work.events[-1][0] if work.events else (
            work.final_seqs[-1] if work.final_seqs else rounds.last_seq)
        self._appended, self._dropped_newest = False, 0
        gave_up = await self._retry(loop, functools.partial(self._persist, work),
                                    len(work.events), work)
        rounds.last_seq = max(rounds.last_seq, last)
        if self._appended:
            self._on_appended()
        if gave_up and not self._appended:  # counted before _complete drops what they carry
            self._on_drop(gave_up, len(work.events))
            finals_lost = not work.finals_in  # else they went in alone, notices too
            self._notices_dropped(gave_up, finals_lost * sum(1 for seq, _ in work.finals
                                                             if not seq)
                                  + sum(carried_alerts(event) for _, event in work.events))
            # Not kept: their responses must not go out as if they were, which the next
            # round's advance (past these seqs) would do.
            self.durability.fail_through(last)
        rounds.complete(work, self._appended, self._dropped_newest, self._notices_dropped)
        if gave_up:
            return
        if self.mode in ("sync", "memory"):
            self.durability.advance(rounds.last_seq)

    async def _complete_while_blocked(self, loop: asyncio.AbstractEventLoop,
                                      work: Round) -> None:
        """The log refuses ``work``'s events, and can be trimmed only past events whose
        finals are in: those finals go in meanwhile, ``work``'s own (the writer thread
        appended them alone) and any the stages return, ahead of the waiting events."""
        rounds = self.rounds
        if self._finals_unseen:
            self._finals_unseen = False
            rounds.last_seq = max(rounds.last_seq, work.final_seqs[-1])
            rounds.settle(work.finals, publish=True)
            self._on_appended()
        finals = rounds.take_finals()
        if not finals.finals:
            return
        finals.final_seqs = trailing_seqs(rounds.last_seq,
                                          [not ahead_seq for ahead_seq, _ in finals.finals])
        # Until they are in (a failing disk: retried here, ahead of the waiting events,
        # which could not go first without taking seqs below theirs) or shutdown gives up.
        step = functools.partial(self.log.append, rounds.encode(finals), completes=True)
        gave_up = await self._retry(loop, step, 0)
        self.blocked = True  # the round in hand still waits (_retry cleared it)
        if gave_up:
            self._notices_dropped(gave_up, sum(1 for seq, _ in finals.finals if not seq))
            return  # their events go out from their ahead records, marked (pipeline/ahead.py)
        self._dirty = True
        rounds.last_seq = max(rounds.last_seq, finals.final_seqs[-1])
        rounds.settle(finals.finals, publish=True)
        self._on_appended()

    async def _retry(
        self, loop: asyncio.AbstractEventLoop, step: Callable[[], None], events: int,
        work: Round | None = None,
    ) -> str | None:
        """Run ``step`` in the writer thread until it succeeds (None), or until shutdown
        gives up: then the drop reason. While a full log refuses ``work``, the finals of
        events already in the log still go in (``_complete_while_blocked``)."""
        delay = RETRY_S
        failing = False
        while True:
            try:
                await loop.run_in_executor(self._executor, step)
                break
            except LogFull:
                self.blocked = True  # admission control refuses new requests meanwhile
                drop, pause = "log_full_at_shutdown", RETRY_S  # block: wait for a trim
                if work is not None:
                    await self._complete_while_blocked(loop, work)
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
