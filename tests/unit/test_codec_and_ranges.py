"""Pure tests of the chunk-header codec, Content-Range parsing and interval arithmetic."""

from __future__ import annotations

import itertools
import random
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import intervals
from core.chunk_header import (
    HEADER_SIZE,
    ContentRange,
    check_header_matches,
    decode_header,
    encode_header,
    parse_content_range,
)
from core.errors import InvalidChunkHeader, InvalidContentRange, InvalidFileId
from core.file_ids import validate_file_id

U64 = st.integers(min_value=0, max_value=2**44)


@given(start=U64, length=st.integers(1, 2**30), crc=st.integers(0, 2**32 - 1))
def test_header_round_trips_modulo_2_32(start, length, crc):
    # Each side is checked against the contract's layout on its own, not only against the other.
    end = start + length - 1
    contract = struct.pack(">III", start % 2**32, end % 2**32, crc)
    assert encode_header(start, end, crc) == contract
    header = decode_header(contract)
    assert (header.start_mod, header.end_mod, header.crc32) == (start % 2**32, end % 2**32, crc)
    check_header_matches(header, ContentRange(start, end, end + 1))


def test_header_is_big_endian_and_12_bytes():
    raw = encode_header(1, 2, 0xDEADBEEF)
    assert raw == bytes.fromhex("0000000100000002deadbeef")
    assert len(raw) == HEADER_SIZE


@given(st.binary(max_size=40))
def test_decode_any_bytes_never_crashes(raw):
    if len(raw) == HEADER_SIZE:
        decode_header(raw)
    else:
        with pytest.raises(InvalidChunkHeader):
            decode_header(raw)


@given(start=U64, length=st.integers(1, 2**20), shift=st.integers(1, 2**32 - 1))
def test_header_of_another_range_is_refused(start, length, shift):
    end = start + length - 1
    header = decode_header(encode_header(start + shift, end + shift, 0))
    with pytest.raises(InvalidChunkHeader):
        check_header_matches(header, ContentRange(start, end, end + 1 + shift))


def test_header_for_a_range_4_gib_further_is_indistinguishable_by_design():
    """The header repeats START mod 2^32: a range exactly 4 GiB away has the same header."""
    header = decode_header(encode_header(4 * 2**30 + 7, 4 * 2**30 + 9, 0))
    check_header_matches(header, ContentRange(7, 9, 2**40))


@given(start=U64, length=st.integers(1, 2**30), extra=st.integers(0, 2**30))
def test_content_range_round_trips(start, length, extra):
    end = start + length - 1
    parsed = parse_content_range(f"bytes {start}-{end}/{end + 1 + extra}")
    assert parsed == ContentRange(start, end, end + 1 + extra)
    assert parsed.length == length


@given(st.text(max_size=60))
def test_content_range_any_text_is_parsed_or_refused_cleanly(text):
    try:
        parsed = parse_content_range(text)
    except InvalidContentRange:
        return
    assert 0 <= parsed.start <= parsed.end < parsed.total


@pytest.mark.parametrize("value", ["bytes 0-0/1", " bytes 0-0/1 "])
def test_content_range_accepts(value):
    assert parse_content_range(value) == ContentRange(0, 0, 1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bytes=0-0/1",
        "bytes 0-0/0",
        "bytes 1-0/5",
        "bytes 0-5/5",
        "bytes +0-1/5",
        "bytes 0 -1/5",
        "bytes 0-1/*",
        "bytes */5",
        "bytes 0-1/5, 2-3/5",
        "bytes ٠-١/5",
        "bytes 0x1-2/5",
    ],
)
def test_content_range_refuses(value):
    with pytest.raises(InvalidContentRange):
        parse_content_range(value)


@pytest.mark.parametrize("good", ["a", "A.b-c_d", "0" * 128, "x.", "file.tar.gz"])
def test_file_id_accepts(good):
    assert validate_file_id(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", ".a", "a/b", "a\\b", "a b", "a\n", "é", "a" * 129, "a\x00"])
def test_file_id_refuses(bad):
    with pytest.raises(InvalidFileId):
        validate_file_id(bad)


interval_lists = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 60)).map(lambda t: (t[0], t[0] + t[1])), max_size=30
)


@given(interval_lists)
def test_merge_is_sorted_disjoint_and_covers_the_same_bytes(spans):
    merged = intervals.merge(spans)
    covered = {b for s, e in spans for b in range(s, e + 1)}
    assert {b for s, e in merged for b in range(s, e + 1)} == covered
    for (_, e1), (s2, _) in itertools.pairwise(merged):
        assert e1 + 1 < s2  # disjoint and not touching
    assert intervals.covered_bytes(spans) == len(covered)


@given(interval_lists, st.integers(1, 400))
def test_missing_is_the_exact_complement(spans, total):
    spans = [(s, min(e, total - 1)) for s, e in spans if s < total]
    gaps = intervals.missing(spans, total)
    have = {b for s, e in spans for b in range(s, e + 1)}
    assert {b for s, e in gaps for b in range(s, e + 1)} == set(range(total)) - have
    first = min(set(range(total)) - have, default=total)
    assert intervals.first_missing(spans, total) == first


@settings(max_examples=2 * settings.default.max_examples)  # 200 in `make test`
@given(data=st.binary(min_size=1, max_size=3000), seed=st.integers(0, 2**32), chunk=st.integers(1, 700))
def test_any_chunking_order_and_duplicates_reassemble_the_same_bytes(data, seed, chunk):
    """A model of the server: chunks with header+CRC checks, in any order, with repeats."""
    rng = random.Random(seed)
    ranges = [(s, min(s + chunk, len(data)) - 1) for s in range(0, len(data), chunk)]
    sends = ranges + rng.sample(ranges, k=min(len(ranges), rng.randint(0, 3)))
    rng.shuffle(sends)
    staged = bytearray(len(data))
    stored: dict[tuple[int, int], int] = {}
    for start, end in sends:
        payload = data[start : end + 1]
        body = encode_header(start, end, zlib.crc32(payload)) + payload
        header = decode_header(body[:HEADER_SIZE])
        check_header_matches(header, parse_content_range(f"bytes {start}-{end}/{len(data)}"))
        assert zlib.crc32(body[HEADER_SIZE:]) == header.crc32
        if (start, end) in stored:
            assert stored[(start, end)] == header.crc32  # exact retransmission
            continue
        staged[start : end + 1] = body[HEADER_SIZE:]
        stored[(start, end)] = header.crc32
    assert intervals.missing(stored, len(data)) == []
    assert bytes(staged) == data
