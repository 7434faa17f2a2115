"""Record framing: round trip, checksum, and that garbage only ever raises CorruptRecord."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.durability import framing
from sidecar.durability.framing import MAGIC, CorruptRecord, decode, encode, frame_size, scan
from sidecar.events.record import Record

TS = 1_700_000_000.25

records = st.builds(
    Record,
    seq=st.integers(min_value=1, max_value=2**64 - 1),
    key=st.binary(max_size=64),
    value=st.binary(max_size=2048),
    headers=st.lists(
        st.tuples(st.text(max_size=16), st.binary(max_size=32)), max_size=4
    ).map(tuple),
)


def rec(seq: int, value: bytes = b"", headers: tuple[tuple[str, bytes], ...] = ()) -> Record:
    value = value or f"v{seq}".encode()
    return Record(seq=seq, key=f"k{seq}".encode(), value=value, headers=headers)


@pytest.mark.parametrize(
    "record",
    [
        Record(seq=1, key=b"", value=b""),
        Record(seq=2, key=b"client-a", value=b'{"a": 1}'),
        Record(seq=3, key=b"k", value=b"x" * 70_000, headers=(("ce_type", b"ai.x"),)),
        Record(seq=2**64 - 1, key=b"\xff\x00", value=b"\xffWAL" * 10,
               headers=(("é-ünïcode", b""), ("", b"\x00"))),
    ],
)
def test_round_trip_keeps_every_field_and_the_timestamp(record: Record) -> None:
    frame = encode(record, TS)
    got, ts, end = decode(frame)
    assert got == record
    assert ts == TS
    assert end == len(frame) == frame_size(record)


@settings(max_examples=300)
@given(record=records, ts=st.floats(allow_nan=False))
def test_round_trip_any_record(record: Record, ts: float) -> None:
    frame = encode(record, ts)
    assert len(frame) == frame_size(record)
    assert decode(b"junk" + frame + b"more", 4) == (record, ts, 4 + len(frame))


def crc32c_reference(data: bytes) -> int:
    """Bit-by-bit CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_checksum_is_crc32c_over_length_and_payload() -> None:
    assert crc32c_reference(b"123456789") == 0xE3069283  # the standard check value
    frame = encode(rec(42, headers=(("h", b"v"),)), TS)
    assert frame[:4] == MAGIC
    assert int.from_bytes(frame[4:8], "little") == crc32c_reference(frame[8:])
    assert int.from_bytes(frame[8:12], "little") == len(frame) - 12


def test_every_flipped_byte_is_detected() -> None:
    frame = encode(rec(7, headers=(("h", b"v"),)), TS)
    for i in range(len(frame)):
        for bit in (0x01, 0x80):
            bad = bytearray(frame)
            bad[i] ^= bit
            with pytest.raises(CorruptRecord):
                decode(bytes(bad))


def test_every_truncation_is_detected() -> None:
    frame = encode(rec(7), TS)
    for cut in range(len(frame)):
        with pytest.raises(CorruptRecord):
            decode(frame[:cut])


def test_implausible_length_is_corrupt_not_a_huge_allocation() -> None:
    frame = bytearray(encode(rec(1), TS))
    frame[8:12] = (2**32 - 1).to_bytes(4, "little")
    with pytest.raises(CorruptRecord, match="length"):
        decode(bytes(frame))


def test_negative_offset_is_corrupt() -> None:
    with pytest.raises(CorruptRecord):
        decode(encode(rec(1), TS), -1)


def test_oversized_record_is_refused_at_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framing, "MAX_PAYLOAD", 100)
    with pytest.raises(ValueError, match="limit"):
        encode(rec(1, value=b"x" * 200), TS)


@settings(max_examples=500)
@given(data=st.binary(max_size=300), pos=st.integers(min_value=0, max_value=300))
def test_garbage_only_ever_raises_corrupt_record(data: bytes, pos: int) -> None:
    for buf in (data, MAGIC + data):
        with contextlib.suppress(CorruptRecord):
            decode(buf, pos)


@settings(max_examples=200)
@given(record=records, flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4))
def test_a_mutated_frame_never_decodes_to_a_different_record(
    record: Record, flips: list[int]
) -> None:
    frame = bytearray(encode(record, TS))
    for f in flips:
        frame[f % len(frame)] ^= 1 + f % 255
    try:
        got, _, _ = decode(bytes(frame))
    except CorruptRecord:
        return
    assert got == record  # flips that cancel out are the only way through


# --- scan: resync and tails -------------------------------------------------------------


def frames(seqs: range) -> list[bytes]:
    return [encode(rec(s), TS + s) for s in seqs]


def test_scan_finds_every_record_with_offsets_and_timestamps() -> None:
    parts = frames(range(1, 6))
    out = scan(b"".join(parts), 0, 0)
    assert list(out.seqs) == [1, 2, 3, 4, 5]
    assert list(out.stamps) == [TS + s for s in range(1, 6)]
    assert list(out.starts) == [sum(len(p) for p in parts[:i]) for i in range(5)]
    assert (out.corrupt, out.bad_tail, out.end) == (0, False, sum(map(len, parts)))


@pytest.mark.parametrize("where", ["magic", "length", "payload", "crc"])
def test_scan_skips_one_bad_record_in_the_middle_and_counts_it(where: str) -> None:
    parts = frames(range(1, 6))
    bad = bytearray(parts[2])
    bad[{"magic": 1, "length": 9, "payload": len(bad) - 1, "crc": 5}[where]] ^= 0x55
    parts[2] = bytes(bad)
    out = scan(b"".join(parts), 0, 0)
    assert list(out.seqs) == [1, 2, 4, 5]
    assert out.corrupt == 1
    assert not out.bad_tail


def test_scan_reports_a_torn_tail() -> None:
    parts = frames(range(1, 4))
    data = b"".join(parts)
    out = scan(data[:-5], 0, 0)
    assert list(out.seqs) == [1, 2]
    assert (out.corrupt, out.bad_tail, out.end) == (1, True, len(parts[0]) + len(parts[1]))


def test_scan_skips_records_whose_seq_does_not_increase() -> None:
    data = b"".join([*frames(range(1, 4)), *frames(range(2, 3)), *frames(range(4, 5))])
    out = scan(data, 0, 0)
    assert list(out.seqs) == [1, 2, 3, 4]
    assert out.corrupt == 1
    assert list(scan(data, 0, 3).seqs) == [4]


def test_scan_of_pure_garbage_finds_nothing_and_counts_one() -> None:
    out = scan(b"\x00" * 100, 0, 0)
    assert (len(out.seqs), out.corrupt, out.bad_tail, out.end) == (0, 1, True, 0)


@settings(max_examples=200)
@given(noise=st.binary(max_size=64), at=st.integers(min_value=0, max_value=10))
def test_scan_recovers_every_intact_record_around_inserted_noise(noise: bytes, at: int) -> None:
    parts = frames(range(1, 11))
    data = b"".join(parts[:at]) + noise + b"".join(parts[at:])
    out = scan(data, 0, 0)
    assert list(out.seqs) == list(range(1, 11))
    assert out.corrupt == (1 if noise else 0)  # noise becomes one skipped "record"
