"""Segments of the write-ahead log: the in-memory index and the arithmetic on it.

No I/O here. ``wal.py`` calls these under its lock: how a batch is laid out across
segments (so the space check and the write agree byte for byte), what ``when_full`` keeps,
and which byte spans the next ``read`` covers.
"""

from __future__ import annotations

import itertools
import re
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from sidecar.durability import framing
from sidecar.durability.base import LogFull
from sidecar.events.record import is_notice, starts_event

HEADER = len(framing.SEGMENT_HEADER)
SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


@dataclass(eq=False, slots=True)
class Segment:
    """One segment file and the offset, seq and append time of each valid record in it.

    Holding 24 bytes per record in memory lets read, ack, rewind and the pending count work
    without touching the disk. ``live`` turns False when the file is trimmed or dropped,
    which tells a reader holding a position in it to reposition.
    """

    path: str
    size: int  # bytes of the file the log accounts for (header, frames, any bad tail)
    end: int  # offset just after the last valid frame
    starts: array[int] = field(default_factory=lambda: array("Q"))
    seqs: array[int] = field(default_factory=lambda: array("Q"))
    stamps: array[float] = field(default_factory=lambda: array("d"))
    live: bool = True
    notices_known: bool = True  # False: a format 1 segment, where seqs do not tell them

    @property
    def last(self) -> int:
        return self.seqs[-1]

    def pending(self, cursor: int) -> int:
        """Records in this segment above ``cursor`` (not yet acked)."""
        return len(self.seqs) - bisect_right(self.seqs, cursor)

    def events(self, after: int, through: int | None = None) -> int:
        """Records above ``after`` (and at most ``through``) that start an event."""
        seqs = self.seqs
        lo = bisect_right(seqs, after)
        hi = len(seqs) if through is None else bisect_right(seqs, through)
        return sum(1 for q in seqs[lo:hi] if starts_event(q))

    def notices(self, after: int) -> int:
        """Records above ``after`` that are notices (``is_notice``); none said of a
        format 1 segment (written before notices took odd seqs: not told apart)."""
        if not self.notices_known:
            return 0
        seqs = self.seqs
        return sum(1 for q in seqs[bisect_right(seqs, after):] if is_notice(q))


def first_unacked(segments: Sequence[Segment], cursor: int) -> tuple[Segment | None, int]:
    """Position (segment, record index) of the first record above ``cursor``.

    When everything is acked: the end of the last segment, or (None, 0) for an empty log.
    """
    for seg in segments:
        if seg.last > cursor:
            return seg, bisect_right(seg.seqs, cursor)
    if segments:
        return segments[-1], len(segments[-1].seqs)
    return None, 0


def position_key(segs: Sequence[Segment], pos: tuple[Segment | None, int]) -> tuple[int, int]:
    """Order read positions: (segment index, record index); an empty log sorts first."""
    seg, idx = pos
    return (-1, 0) if seg is None else (segs.index(seg), idx)


def placement(sizes: Sequence[int], active_size: int | None, segment_bytes: int) -> list[int]:
    """Cumulative bytes the first 1..n frames need, new segment headers included.

    ``active_size`` is the size of the segment the batch starts in, or None to start a new
    one. A frame goes into the current segment unless that would take it past
    ``segment_bytes``; a new segment always takes its first frame, however big.
    ``WriteAheadLog._write`` follows the same rule, via ``breaks``.
    """
    out: list[int] = []
    cur, total = active_size, 0
    for n in sizes:
        if cur is None or cur + n > segment_bytes:
            cur = HEADER
            total += HEADER
        cur += n
        total += n
        out.append(total)
    return out


def breaks(sizes: Sequence[int], active_size: int | None, segment_bytes: int) -> list[int]:
    """Indexes of the frames that start a new segment (the rule ``placement`` counts)."""
    out: list[int] = []
    cur = active_size
    for i, n in enumerate(sizes):
        if cur is None or cur + n > segment_bytes:
            out.append(i)
            cur = HEADER
        cur += n
    return out


def suffix_start(sizes: Sequence[int], limit: int, segment_bytes: int) -> int:
    """Smallest ``j`` such that frames ``j:`` fit in ``limit`` bytes of fresh segments.

    For drop_oldest when one batch is bigger than the whole log: keep the newest records.
    Binary search (the need is near-monotone in ``j``), then walk on until it really fits.
    """

    def need(j: int) -> int:
        cum = placement(sizes[j:], None, segment_bytes)
        return cum[-1] if cum else 0

    lo, hi = 0, len(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        if need(mid) <= limit:
            hi = mid
        else:
            lo = mid + 1
    while lo < len(sizes) and need(lo) > limit:
        lo += 1
    return lo


def plan_batch(
    segs: Sequence[Segment],
    sizes: Sequence[int],
    bytes_used: int,
    cursor: int,
    max_bytes: int,
    segment_bytes: int,
    when_full: str,
    completes: bool = False,
) -> tuple[int, int, bool]:
    """Apply ``when_full``: (keep_from, keep_to, start_new_segment) for this batch
    (``completes``: never refused by block, see ``EventLog.append``).

    block raises ``LogFull``; drop_newest keeps the longest prefix that fits; drop_oldest
    keeps the batch (or its newest records that fit in an empty log) and says whether the
    active segment must be left behind so it too can be deleted once the batch is written.
    """
    n = len(sizes)
    active = segs[-1] if segs else None
    cum = placement(sizes, active.size if active else None, segment_bytes)
    room = max_bytes - bytes_used
    if active is not None and active.last <= cursor and active.size + sizes[0] > segment_bytes:
        room += active.size  # fully acked and about to be rolled away from: trimmed
    if cum[-1] <= room or (completes and when_full == "block"):
        return 0, n, False
    if when_full == "block":
        raise LogFull(
            f"a batch of {n} records ({cum[-1]} bytes) does not fit: "
            f"{bytes_used} of {max_bytes} bytes used"
        )
    if when_full == "drop_newest":
        return 0, bisect_right(cum, room), False
    for seg in segs[:-1]:  # drop_oldest: whole segments, oldest first
        room += seg.size
        if cum[-1] <= room:
            return 0, n, False
    if placement(sizes, None, segment_bytes)[-1] <= max_bytes:
        return 0, n, True
    return suffix_start(sizes, max_bytes, segment_bytes), n, True


def layout(
    sizes: Sequence[int], kept: range, active: Segment | None, segment_bytes: int
) -> list[tuple[Segment | None, int, int]]:
    """Split the kept frames into (segment, lo, hi) chunks; None means a new segment."""
    ksizes = sizes[kept.start : kept.stop]
    cuts = breaks(ksizes, active.size if active else None, segment_bytes)
    edges = sorted({0, *cuts, len(ksizes)})
    starts_new = set(cuts)
    return [
        (None if lo in starts_new else active, kept.start + lo, kept.start + hi)
        for lo, hi in itertools.pairwise(edges)
    ]


Span: TypeAlias = tuple[Segment, "array[int]", "array[int]", int]  # segment, starts, seqs, end


def read_plan(
    segs: list[Segment], seg: Segment, idx: int, max_records: int, max_bytes: int
) -> tuple[list[Span], tuple[Segment, int]]:
    """The spans the next read covers from position (seg, idx), and the position after.

    ``max_bytes`` counts frames; the first record is taken whatever its size, or one
    record bigger than ``max_bytes`` would stall delivery for ever.
    """
    plan: list[Span] = []
    k = segs.index(seg)
    left_n, left_b = max_records, max_bytes
    while left_n > 0:
        n = len(seg.seqs)
        if idx >= n:
            if k + 1 >= len(segs):
                break
            k, idx = k + 1, 0
            seg = segs[k]
            continue
        lo = seg.starts[idx]
        fit = bisect_right(seg.starts, lo + left_b, idx + 1, n) - (idx + 1)
        if fit == n - 1 - idx and seg.end <= lo + left_b:
            fit += 1
        fit = min(fit, left_n)
        if fit == 0 and not plan:
            fit = 1
        if fit == 0:
            break
        hi = seg.starts[idx + fit] if idx + fit < n else seg.end
        plan.append((seg, seg.starts[idx : idx + fit], seg.seqs[idx : idx + fit], hi))
        left_n, left_b, idx = left_n - fit, left_b - (hi - lo), idx + fit
        if idx < n:
            break
    return plan, (seg, idx)
