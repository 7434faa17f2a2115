"""Write-ahead of an event's metadata: the *ahead* and *final* records of one event.

With ``durability: sync`` a response completes only once its event is fsynced, but the
detection and privacy stages take milliseconds of worker time per batch. So the log
writer does not wait for them: an event they still have to complete is written at once
as an **ahead** record (everything the request path knows: identifiers, status, timings,
the pseudonymous client id; nothing raw, no payload, no features), which releases the
response. Once the stages are done the writer appends the event again, whole, as a
**final** record naming the ahead one, and delivery sends only that.

    log:      … A(h) … W … F(h→A) …      A = ahead, F = final, W = an event written whole
    delivery: skips A(h) until F arrives, sends F; an A left without its F is sent as is,
              marked (``privacy.failure``): ``lost_in_crash`` when the process died
              before the F was written, ``log_full`` when ``when_full`` dropped the F.

Events nothing completes later (notices; inferences when detection is off and the
privacy profile records nothing) are written whole, once, as before.

Which Fs are still due is known from the writer's ``Mark`` (``Ledger.mark``): every
ahead record below ``bound`` has had its final appended at or before ``appended``. Once
delivery has read through ``appended``, an ahead record below ``bound`` still waiting
lost its final. After a restart the mark starts at the recovered log's end, so every
ahead record from before the crash without its final is sent, marked, once delivery
has read the old log through.

The markers are log-internal headers (``sidecar-*``), stripped before any sink sees a
record.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import orjson

from sidecar.events.record import Record

PART_HEADER = "sidecar-part"
AHEAD = b"ahead"
FINAL_OF_HEADER = "sidecar-final-of"  # value: the ahead record's seq, in ASCII digits
INTERNAL_PREFIX = "sidecar-"

LOST_IN_CRASH = "lost_in_crash"
LOG_FULL = "log_full"


class Mark(NamedTuple):
    """Every ahead record below ``bound`` has had its final appended at or before
    ``appended`` (or, below a restart, never will)."""

    appended: int
    bound: int


class Ledger:
    """The ahead records whose final is still due: kept by the writer on the loop, read
    by delivery in its thread (single assignments of immutable values, GIL-atomic)."""

    def __init__(self, recovered_through: int) -> None:
        self.recovered_through = recovered_through  # the log's last seq at start-up
        self.open: deque[int] = deque()  # ahead seqs, oldest first, final not yet appended
        self.mark = Mark(recovered_through, recovered_through + 1)

    def publish(self, appended: int) -> None:
        """After an append that ended at ``appended`` (writer, on the loop)."""
        self.mark = Mark(appended, self.open[0] if self.open else appended + 1)


def ahead(record: Record) -> Record:
    return Record(record.seq, record.key, record.value,
                  (*record.headers, (PART_HEADER, AHEAD)))


def final(record: Record, ahead_seq: int) -> Record:
    return Record(record.seq, record.key, record.value,
                  (*record.headers, (FINAL_OF_HEADER, str(ahead_seq).encode())))


def part(record: Record) -> tuple[bool, int | None]:
    """(is an ahead record, the ahead seq a final record completes)."""
    for name, value in record.headers:
        if name == PART_HEADER:
            return value == AHEAD, None
        if name == FINAL_OF_HEADER:
            return False, int(value)
    return False, None


def public(record: Record) -> Record:
    """``record`` without the log-internal headers, as sinks get it."""
    headers = tuple(h for h in record.headers if not h[0].startswith(INTERNAL_PREFIX))
    return Record(record.seq, record.key, record.value, headers)


def orphan(record: Record, reason: str) -> Record:
    """An ahead record whose final will never come, made the event's one record: the
    payload, features and detector results it would have had are marked lost."""
    envelope = orjson.loads(record.value)
    data = envelope.get("data")
    if isinstance(data, dict):
        privacy = data.get("privacy")
        if isinstance(privacy, dict):
            privacy["failure"] = reason
            privacy["payload_captured"] = False
        data["payload"] = data["headers"] = None
    return public(Record(record.seq, record.key, orjson.dumps(envelope), record.headers))
