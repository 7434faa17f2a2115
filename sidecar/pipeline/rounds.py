"""The log writer's rounds: what one append takes, and what becomes of it afterwards.

A round is the final records the completing stages sent back (events completed after
their ahead record, and the notices they raised), then events from the queue. ``Rounds``
sizes it to what the log can hold, encodes it once, and after the append moves its events
on: finals leave the ``Ledger``, events written ahead go to the stages. ``writer.py``
runs the rounds: when to take one, the append and fsync in its thread, the retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.durability.base import EventLog, full_headroom
from sidecar.durability.framing import frame_size
from sidecar.events.cloudevents import to_record
from sidecar.events.model import AnyEvent, InferenceEvent, carried_alerts
from sidecar.events.queue import EventQueue
from sidecar.events.record import EVENT_SEQ_STEP, Record, next_event_seq
from sidecar.pipeline import ahead
from sidecar.pipeline.handoff import Batch, Handoff

BATCH_MAX = 1024
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


def drop_raw(event: AnyEvent) -> None:
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
class Round:
    """One append: finals first (their seqs fall in the last appended event's block), then
    the events taken from the queue."""

    finals: Batch  # (ahead seq, completed event)
    final_seqs: list[int]
    events: Batch
    completes: list[bool]  # per event: written ahead, to be completed
    records: list[Record] | None = None  # encoded once, in the writer thread
    finals_in: bool = False  # the log refused the round and took its finals alone


class Rounds:
    def __init__(self, queue: EventQueue, event_log: EventLog,
                 completion: Completion | None) -> None:
        self.queue = queue
        self.log = event_log
        self.completion = completion
        self.last_seq = event_log.last_seq  # the last seq given to a record
        # A round takes at most half of what the log holds below its ``full`` mark, and no
        # more than is free below it, going by the largest record seen lately: a round
        # bigger than the log would never fit (the writer would hold it for ever), and
        # one bigger than the free room would be held while the log is not yet ``full``,
        # which admission control reads.
        self._headroom = full_headroom(event_log.max_bytes)
        self._room = (event_log.max_bytes - self._headroom) // 2
        self.record_max = 4096.0  # the largest record frame lately (decays per round)
        self.cap_now = BATCH_MAX  # the cap of the round being taken (see ``cap``)

    def cap(self) -> int:
        """Records in the next round: ``BATCH_MAX``, fewer when the log is too small for
        that many, or (``block`` only: the drop policies make room) when less is free."""
        room = self._room
        if self.log.when_full == "block":
            room = min(room, self.log.max_bytes - self._headroom - self.log.bytes_used)
        return max(1, min(BATCH_MAX, int(room / self.record_max)))

    def take(self, work: Round | None = None) -> Round:
        """A new round, or more for ``work`` (up to the cap)."""
        if work is None:
            work = Round([], [], [], [])
        cap = self.cap_now = self.cap()
        # Finals and notices must fit in the rest of the last event's seq block, at two
        # seqs each at most (``trailing_seqs``); never short in practice (ROOM events with
        # a few alerts each), but never wrong either.
        left = next_event_seq(self.last_seq) - self.last_seq - 1
        space = (left - 2 * len(work.finals)) // 2
        finals = self._take_finals(max(0, min(cap - len(work.finals), space)))
        room = cap - len(work.finals) - len(finals) - len(work.events)
        events, completes = self._take_events(room) if room > 0 else ([], [])
        work.finals += finals
        work.events += events
        work.completes += completes
        return work

    def _take_events(self, max_items: int) -> tuple[Batch, list[bool]]:
        completion = self.completion
        if completion is None or completion.out.closed:
            batch = self.queue.take(max_items)
            for _, event in batch:  # only after shutdown closed the stages: never raw on disk
                drop_raw(event)
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

    def take_finals(self) -> Round:
        """A round of the finals (and notices) the stages returned, alone, as many as the
        last event's seq block has room for. Not cut to the room in the log (``cap``): it
        goes in past ``max_bytes`` (``EventLog.append``'s ``completes``)."""
        left = next_event_seq(self.last_seq) - self.last_seq - 1
        return Round(self._take_finals(max(0, min(BATCH_MAX, left // 2))), [], [], [])

    def settle(self, finals: Batch, publish: bool = False) -> None:
        """``finals`` are in the log: their ahead records leave the ledger (and with
        ``publish``, delivery learns that the log now runs through ``last_seq``)."""
        completion = self.completion
        if completion is None:
            return
        ledger = completion.ledger
        for ahead_seq, _ in finals:
            if not ahead_seq:
                continue  # a notice
            if ledger.open and ledger.open[0] == ahead_seq:
                ledger.open.popleft()
            else:  # not expected: the stages keep order; stay correct anyway
                with contextlib.suppress(ValueError):
                    ledger.open.remove(ahead_seq)
        if publish:
            ledger.publish(self.last_seq)

    def encode(self, work: Round) -> list[Record]:
        """The round's records (writer thread), encoded on the first call only."""
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
            if records:
                self.record_max = max(self.record_max * 0.99,
                                      max(frame_size(r) for r in records))
        return work.records

    def complete(self, work: Round, appended: bool, dropped_newest: int,
                 notices_dropped: Callable[[str, int], None]) -> None:
        """After the append: finals leave the ledger, events written ahead go to the
        stages (not those ``when_full`` refused: they are dropped, and counted)."""
        completion = self.completion
        if completion is None:
            return
        ledger = completion.ledger
        if not work.finals_in:  # else settled when they went in alone
            self.settle(work.finals)
        kept = len(work.events) - max(0, dropped_newest) if appended else 0
        handed: Batch = []
        for i, ((seq, event), completes) in enumerate(
                zip(work.events, work.completes, strict=True)):
            if not completes:
                continue
            if i < kept:
                handed.append((seq, event))
            else:
                if appended:  # else the round was given up on: counted by the caller
                    notices_dropped("log_full_newest", carried_alerts(event))
                drop_raw(event)
        if handed:
            ledger.open.extend(seq for seq, _ in handed)
            completion.out.put_nowait(handed)
        if appended:
            ledger.publish(self.last_seq)
