"""Record framing for the write-ahead log: encode, decode, and scan with resync.

One frame per record, all integers little-endian::

    magic    4  b"\\xffWAL"  (0xFF never occurs in UTF-8, so JSON payloads cannot fake it)
    crc32c   4  CRC-32C (Castagnoli) of the next 4 + length bytes: length and payload
    length   4  payload length
    payload:
      seq        8  u64
      ts         8  f64, time.time() when appended (delivery lag, oldest pending)
      key_len    4  u32
      n_headers  2  u16
      key        key_len bytes
      headers    n_headers x (name_len u16, value_len u32, name UTF-8, value)
      value      the rest of the payload

The checksum covers the length, so a flipped length bit is caught like a flipped payload
bit. The checksum is always CRC-32C from the ``crc32c`` package (hardware-accelerated where
the CPU has it); there is no fallback, so every log on disk uses the same function.

``decode`` raises only ``CorruptRecord``, whatever the bytes; ``scan`` never raises: it
skips bad frames by looking for the next magic that starts a valid frame.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from crc32c import crc32c

from sidecar.events.record import Record

MAGIC = b"\xffWAL"
SEGMENT_HEADER = b"SCWAL\x00\x00\x02"  # file magic + format version 2
# Version 1: the same frames, but a notice's seq was not odd (``record.is_notice``): its
# segments are read as ever, and their drops counted as events only.
SEGMENT_HEADER_V1 = b"SCWAL\x00\x00\x01"
MAX_PAYLOAD = 64 * 1024 * 1024  # sanity bound: a longer length field is corruption

_HEAD = struct.Struct("<4sII")  # magic, crc, length
_FIXED = struct.Struct("<QdIH")  # seq, ts, key_len, n_headers
_HDR = struct.Struct("<HI")  # header name length, value length
_LEN_FIXED = struct.Struct("<IQdIH")  # length + fixed payload part, as checksummed
_MAGIC_CRC = struct.Struct("<4sI")
HEAD_SIZE = _HEAD.size
OVERHEAD = _HEAD.size + _FIXED.size  # framing bytes of a record without headers


class CorruptRecord(Exception):
    """The bytes at this offset are not a valid frame (bad magic, length, checksum or
    payload structure, or cut short). Internal to the log: recovery counts and skips."""


def encode(record: Record, ts: float) -> bytes:
    """The frame for ``record``; ``ts`` is stored so lag survives a restart."""
    key, value, headers = record.key, record.value, record.headers
    if headers:
        parts = []
        for name, hvalue in headers:
            raw = name.encode()
            parts.append(_HDR.pack(len(raw), len(hvalue)) + raw + hvalue)
        packed_headers = b"".join(parts)
    else:
        packed_headers = b""
    length = _FIXED.size + len(key) + len(packed_headers) + len(value)
    if length > MAX_PAYLOAD:
        raise ValueError(f"record seq {record.seq} is {length} bytes; the limit is {MAX_PAYLOAD}")
    fixed = _LEN_FIXED.pack(length, record.seq, ts, len(key), len(headers))
    body = b"".join((fixed, key, packed_headers, value))  # one CRC call beats chaining five
    return _MAGIC_CRC.pack(MAGIC, crc32c(body)) + body


def frame_size(record: Record) -> int:
    """Bytes ``encode`` will produce, without encoding (MemoryLog accounting)."""
    extra = sum(_HDR.size + len(n.encode()) + len(v) for n, v in record.headers)
    return OVERHEAD + len(record.key) + len(record.value) + extra


def decode(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[Record, float, int]:
    """Decode the frame at ``pos``: (record, append timestamp, offset after the frame)."""
    view = memoryview(buf)
    end = len(view)
    if pos < 0 or end - pos < HEAD_SIZE:
        raise CorruptRecord("frame header cut short")
    magic, crc, length = _HEAD.unpack_from(view, pos)
    if magic != MAGIC:
        raise CorruptRecord("bad magic")
    if length < _FIXED.size or length > MAX_PAYLOAD:
        raise CorruptRecord(f"implausible length {length}")
    stop = pos + HEAD_SIZE + length
    if stop > end:
        raise CorruptRecord("frame cut short")
    if crc32c(view[pos + 8 : stop]) != crc:
        raise CorruptRecord("checksum mismatch")
    at = pos + HEAD_SIZE
    seq, ts, key_len, n_headers = _FIXED.unpack_from(view, at)
    at += _FIXED.size
    if at + key_len > stop:
        raise CorruptRecord("key overruns the frame")
    key = bytes(view[at : at + key_len])
    at += key_len
    headers: list[tuple[str, bytes]] = []
    for _ in range(n_headers):
        if at + _HDR.size > stop:
            raise CorruptRecord("header overruns the frame")
        name_len, value_len = _HDR.unpack_from(view, at)
        at += _HDR.size
        if at + name_len + value_len > stop:
            raise CorruptRecord("header overruns the frame")
        try:
            name = str(view[at : at + name_len], "utf-8")
        except UnicodeDecodeError:
            raise CorruptRecord("header name is not UTF-8") from None
        at += name_len
        headers.append((name, bytes(view[at : at + value_len])))
        at += value_len
    record = Record(seq=seq, key=key, value=bytes(view[at:stop]), headers=tuple(headers))
    return record, ts, stop


@dataclass(slots=True)
class Scan:
    """What ``scan`` found: per valid record its offset, seq and timestamp."""

    starts: array[int] = field(default_factory=lambda: array("Q"))
    seqs: array[int] = field(default_factory=lambda: array("Q"))
    stamps: array[float] = field(default_factory=lambda: array("d"))
    end: int = 0  # offset just after the last valid frame
    corrupt: int = 0  # frames skipped (in the middle or in a bad tail)
    bad_tail: bool = False  # bytes after ``end`` are not a valid frame


def scan(buf: bytes, start: int, after: int) -> Scan:
    """Find every valid frame in ``buf`` from ``start``, seqs strictly above ``after``.

    A bad frame is skipped by resynchronising on the next magic that begins a valid frame;
    the skipped region counts as one corrupt record per magic in it (at least one), our
    best estimate of how many records it held. A valid frame whose seq does not increase
    is stale data, not a record of this log, and is skipped and counted the same way.
    """
    out = Scan(end=start)
    pos, prev, size = start, after, len(buf)
    while pos < size:
        try:
            record, ts, nxt = decode(buf, pos)
            if record.seq <= prev:
                raise CorruptRecord("seq does not increase")
        except CorruptRecord:
            resume = _resync(buf, pos + 1, prev)
            out.corrupt += max(1, buf.count(MAGIC, pos, size if resume < 0 else resume))
            if resume < 0:
                out.bad_tail = True
                break
            pos = resume
            continue
        out.starts.append(pos)
        out.seqs.append(record.seq)
        out.stamps.append(ts)
        out.end = pos = nxt
        prev = record.seq
    return out


def _resync(buf: bytes, pos: int, prev: int) -> int:
    """Offset of the next valid frame with seq above ``prev``, or -1."""
    pos = buf.find(MAGIC, pos)
    while pos >= 0:
        try:
            record, _, _ = decode(buf, pos)
            if record.seq > prev:
                return pos
        except CorruptRecord:
            pass
        pos = buf.find(MAGIC, pos + 1)
    return -1


def encode_batch(records: Sequence[Record], ts: float) -> list[bytes]:
    return [encode(r, ts) for r in records]
