"""``LogIndex``: what the write-ahead log knows of its segments, kept in memory.

Its state and every change to it, without I/O: which segments exist, the cursor (the
last acked seq), what is pending, the read position, the drop counters. ``wal.py`` holds
its lock around every call and does the file work before and after: a batch is written,
then published here (``commit``); an ack moves the cursor here (``advance``), then the
cursor file is stored; the segments these return are deleted afterwards, outside the lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.durability import segments
from sidecar.durability.base import LogStats
from sidecar.durability.segments import HEADER, Segment, first_unacked
from sidecar.events.record import Record, is_notice, starts_event


def _events(records: Sequence[Record]) -> int:
    return sum(1 for r in records if starts_event(r.seq))


class LogIndex:
    def __init__(self, segs: list[Segment], cursor: int, corrupt: int) -> None:
        self.segs = segs
        self.cursor = cursor
        self.last_seq = max(segs[-1].last if segs else 0, cursor)
        self.pending = sum(s.pending(cursor) for s in segs)
        self.pending_events = sum(s.events(cursor) for s in segs)
        self.bytes_used = sum(s.size for s in segs)
        self.corrupt = corrupt
        self.rseg, self.ridx = first_unacked(segs, cursor)  # where ``read`` goes on
        self.rgen = 0  # bumped when drop_oldest moves the read position under a reader
        self.read_seq = 0  # the highest seq ``read`` handed out since the last rewind
        self.dir_dirty = False  # segments created or deleted since the last sync
        self.dropped_oldest = self.dropped_newest = self.dropped_in_flight = 0
        self.notices_dropped = 0

    def stats(self, lost_on_crash: int) -> LogStats:
        seg, idx = first_unacked(self.segs, self.cursor)
        oldest = seg.stamps[idx] if seg is not None and idx < len(seg.seqs) else None
        return LogStats(
            bytes_used=self.bytes_used,
            records_pending=self.pending,
            events_pending=self.pending_events,
            dropped_oldest=self.dropped_oldest,
            dropped_newest=self.dropped_newest,
            corrupt_skipped=self.corrupt,
            lost_on_crash=lost_on_crash,
            oldest_pending_ts=oldest,
            dropped_in_flight=self.dropped_in_flight,
            notices_dropped=self.notices_dropped,
        )

    # --- the writer's side ---------------------------------------------------------------

    def commit(
        self,
        records: Sequence[Record],
        sizes: list[int],
        kept: range,
        chunks: list[tuple[Segment, int, int]],
        ts: float,
        max_bytes: int,
        when_full: str,
    ) -> list[Segment]:
        """Publish what was written, count drops. Returns the segments to delete."""
        for seg, lo, hi in chunks:
            if not seg.seqs:
                self.segs.append(seg)
                self.bytes_used += HEADER
                self.dir_dirty = True
            for i in range(lo, hi):
                seg.starts.append(seg.size)
                seg.seqs.append(records[i].seq)
                seg.stamps.append(ts)
                seg.size += sizes[i]
            seg.end = seg.size
            self.bytes_used += sum(sizes[lo:hi])
        if kept:
            self.pending += len(kept)
            self.pending_events += _events(records[kept.start:kept.stop])
            self.last_seq = records[kept.stop - 1].seq
        self.dropped_newest += _events(records[kept.stop:])
        self.dropped_oldest += _events(records[:kept.start])
        refused = [*records[:kept.start], *records[kept.stop:]]
        self.notices_dropped += sum(1 for r in refused if is_notice(r.seq))
        doomed: list[Segment] = []
        touched = {seg for seg, _, _ in chunks}
        if when_full == "drop_oldest":
            while self.segs and self.bytes_used > max_bytes and self.segs[0] not in touched:
                seg = self.segs.pop(0)
                gone = seg.events(self.cursor)
                unread = seg.events(max(self.cursor, self.read_seq))
                self.dropped_oldest += unread
                self.notices_dropped += seg.notices(max(self.cursor, self.read_seq))
                self.dropped_in_flight += gone - unread  # delivery holds and sends these
                self.pending_events -= gone
                self.pending -= seg.pending(self.cursor)
                self._forget(seg)
                doomed.append(seg)
        doomed += self.take_trimmable()
        if self.rseg is not None and not self.rseg.live:
            self.reposition()
            self.rgen += 1
        return doomed

    def take_trimmable(self) -> list[Segment]:
        """Pop the segments whose every record is acked (never the active one)."""
        out: list[Segment] = []
        while len(self.segs) > 1 and self.segs[0].last <= self.cursor:
            seg = self.segs.pop(0)
            self._forget(seg)
            out.append(seg)
        return out

    def _forget(self, seg: Segment) -> None:
        seg.live = False
        self.bytes_used -= seg.size
        self.dir_dirty = True

    # --- the delivery thread's side ------------------------------------------------------

    def reposition(self) -> None:
        """Read on from the first record not acked (the segment read was deleted)."""
        self.rseg, self.ridx = first_unacked(self.segs, self.cursor)

    def rewind(self) -> None:
        """Read again everything not acked (delivery failed)."""
        self.reposition()
        self.read_seq = self.cursor

    def advance(self, seq: int) -> list[Segment]:
        """Move the cursor to ``seq``. Returns the segments to delete."""
        for seg in self.segs:
            if seg.seqs[0] > seq:
                break
            self.pending -= seg.pending(self.cursor) - seg.pending(seq)
            self.pending_events -= seg.events(self.cursor, seq)
        self.cursor = seq
        if self.rseg is not None and self.rseg.live:  # never hand out acked records
            first = first_unacked(self.segs, seq)
            if segments.position_key(self.segs, first) > segments.position_key(
                self.segs, (self.rseg, self.ridx)
            ):
                self.rseg, self.ridx = first
        return self.take_trimmable()
