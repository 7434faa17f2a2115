"""The ``EventLog`` contract shared by the on-disk ``WriteAheadLog`` and ``MemoryLog``.

The log sits between the request path and delivery: a writer thread appends encoded
``Record``s (and syncs them), a delivery thread reads, acks and, after a failure, rewinds;
the event loop only looks at ``stats``/``full`` and notes accepted sequence numbers.
Delivery is at-least-once: a rewind or a restart may hand out records again, but an
unacked record is never silently lost, only dropped by ``when_full`` and then counted.

``tests/durability/test_log_contract.py`` runs the same checks over every implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar.events.record import Record

WHEN_FULL = ("block", "drop_oldest", "drop_newest")

# ``full`` leaves this much room (or 1/16 of ``max_bytes`` if that is smaller) for the
# next batch, so a producer that checks ``full`` first rarely meets ``LogFull``.
FULL_HEADROOM = 64 * 1024


class LogFull(Exception):
    """``when_full="block"``: the batch does not fit; nothing of it was appended (unless
    it was appended with ``completes``: see ``EventLog.append``).

    The caller keeps the batch and retries after delivery has acked (and so trimmed) some
    of the log, or refuses new work upstream.
    """


class LogLocked(OSError):
    """Another ``WriteAheadLog`` (in this or another process) has the directory open.

    Two writers on one directory would interleave segments and corrupt both logs.
    """


@dataclass(frozen=True, slots=True)
class LogStats:
    """A consistent snapshot, safe to take from any thread (metrics, readiness)."""

    bytes_used: int  # bytes not yet trimmed, framing included (see each log's docs)
    records_pending: int  # appended and not yet acked (dropped ones excluded)
    # Of those, the records that start an event: an event written ahead (pipeline/ahead.py)
    # is two records until the first is acked, and counts once here.
    events_pending: int
    # Drops count events: records that start an event block (``starts_event``); a final
    # record (pipeline/ahead.py) is not an event of its own.
    dropped_oldest: int  # events deleted by drop_oldest before delivery read them
    dropped_newest: int  # events refused by drop_newest
    corrupt_skipped: int  # records skipped because their checksum/framing was bad
    lost_on_crash: int  # accepted by the producer, never written before a crash
    oldest_pending_ts: float | None  # time.time() at append of the oldest pending record
    # Events drop_oldest deleted after ``read`` had handed them out (not counted in
    # ``dropped_oldest``): delivery holds them and still sends them; not lost.
    dropped_in_flight: int = 0
    # Notices (alerts, policy changes: odd seqs, ``is_notice``) lost the same ways, by
    # ``when_full``: not events of their own, so in none of the counts above.
    notices_dropped: int = 0


def full_headroom(max_bytes: int) -> int:
    """Room ``full`` keeps free: 64 KiB, or 1/16 of a small log so tests stay meaningful."""
    return min(FULL_HEADROOM, max_bytes // 16)


def check_when_full(when_full: str) -> str:
    if when_full not in WHEN_FULL:
        raise ValueError(f"unknown when_full policy {when_full!r}; one of {', '.join(WHEN_FULL)}")
    return when_full


def check_increasing(records: Sequence[Record], after: int) -> None:
    """Reject a batch whose seqs are not strictly increasing and above ``after``.

    Order on disk is seq order; recovery and ``ack(seq)`` both rely on it.
    """
    prev = after
    for record in records:
        if record.seq <= prev:
            raise ValueError(f"record seq {record.seq} is not above {prev}: seqs must increase")
        prev = record.seq


class EventLog(Protocol):
    max_bytes: int  # the bound on bytes_used
    when_full: str  # one of WHEN_FULL

    @property
    def bytes_used(self) -> int:
        """As in ``stats()``, without its lock: a hint that may be a moment old."""
        ...

    @property
    def corrupt_skipped(self) -> int:
        """As in ``stats()``, without its lock (delivery reads it after each read)."""
        ...

    def append(self, records: Sequence[Record], completes: bool = False) -> None:
        """Store ``records`` (no fsync) applying ``when_full``; writer thread only.

        ``completes``: the records complete events already in the log (final records and
        their notices, ``pipeline/ahead.py``). Under ``block`` they go in even past
        ``max_bytes``: the log cannot be trimmed past an event until its final record is
        in, so refusing it would wait for a trim that needs it (the log jammed for good).
        The excess is bounded by what the stages hold.
        """
        ...

    def sync(self) -> None:
        """Make everything appended so far durable; writer thread only."""
        ...

    def read(self, max_records: int, max_bytes: int) -> list[Record]:
        """The next records after the read position, at least one if any; never blocks."""
        ...

    def rewind(self) -> None:
        """Move the read position back to the first unacked record."""
        ...

    def ack(self, seq: int) -> None:
        """Every record with ``seq`` at or below this one is delivered; trim what is done."""
        ...

    @property
    def full(self) -> bool:
        """``bytes_used + full_headroom(max_bytes) > max_bytes``: a cheap hint for admission
        control (no lock); ``append`` alone decides what fits."""
        ...

    @property
    def last_seq(self) -> int:
        """Highest seq stored (or acked), 0 if none; survives a restart."""
        ...

    @property
    def next_seq(self) -> int:
        """Where the producer's numbering resumes: after every seq accepted or stored."""
        ...

    def note_accepted(self, seq: int) -> None:
        """The producer accepted ``seq``; cheap enough for the event loop, every request."""
        ...

    def stats(self) -> LogStats: ...

    def close(self) -> None: ...
