"""``Record``: an event as the durable log and the sinks see it, already encoded.

``value`` is the CloudEvents JSON document; ``key`` orders a client's events within a
Kafka partition; ``headers`` let consumers filter without parsing the value. ``seq`` is
the sidecar's own sequence number: strictly increasing in append order, also across
restarts.

Each event owns a block of ``EVENT_SEQ_STEP`` seqs. Its first record takes the block's
first seq (the EventQueue hands these out); a *final* record, which completes an earlier
event once the detection and privacy stages are done with it
(``sidecar/pipeline/ahead.py``), takes the next free seq in the block of the last event
appended before it. So the log stays in seq order although an event's final record
follows its first one by any number of other events, and ``seq >> EVENT_SEQ_SHIFT``
counts events (crash accounting, ``lost_on_crash``). A stage's *notice* (an alert) takes a
seq the same way, but an odd one, and a final an even one
(``trailing_seqs``): so a log that drops records by ``when_full`` can tell, from the seq
alone, a lost alert from a lost final, and count it. Seqs are 64-bit on disk: 2**44
blocks, 55 years at 10,000 events/s.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_SEQ_SHIFT = 20
EVENT_SEQ_STEP = 1 << EVENT_SEQ_SHIFT  # more than the events ever open at once (ahead.py)


def event_number(seq: int) -> int:
    """The event block ``seq`` falls in: events numbered 1, 2, ... across restarts."""
    return seq >> EVENT_SEQ_SHIFT


def starts_event(seq: int) -> bool:
    """Whether a record with this seq is an event's first (whole, or ahead) record: what
    drop counters count, so a final record dropped with its ahead one is not counted
    twice, and a final whose ahead record is delivered alone is not counted at all."""
    return not seq & (EVENT_SEQ_STEP - 1)


def is_notice(seq: int) -> bool:
    """Whether a record with this seq is a notice (see ``trailing_seqs``)."""
    return bool(seq & 1)


def trailing_seqs(last: int, notices: list[bool]) -> list[int]:
    """Seqs for records appended after ``last`` in its block: odd for a notice, even for
    a final; each takes the next free seq of its parity, so at most two seqs a record.

    >>> trailing_seqs(4 << EVENT_SEQ_SHIFT, [False, True, True, False])
    [4194306, 4194307, 4194309, 4194310]
    >>> [is_notice(s) or starts_event(s) for s in _]
    [False, True, True, False]
    """
    seqs = []
    for notice in notices:
        last += 1
        if is_notice(last) != notice:
            last += 1
        seqs.append(last)
    return seqs


def next_event_seq(seq: int) -> int:
    """The first seq of the block after the one ``seq`` is in."""
    return (event_number(seq) + 1) << EVENT_SEQ_SHIFT


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def size(self) -> int:
        """Bytes this record takes in a log or a batch, near enough for bounding."""
        return len(self.key) + len(self.value) + sum(len(k) + len(v) for k, v in self.headers)
