"""The 12-byte chunk header and the `Content-Range` of an upload (CONTRACT 4), as pure functions.

A chunk's header repeats its range modulo 2^32 so that a proxy or a client bug that
sends one chunk's body under another chunk's Content-Range is caught before any
byte is stored; the CRC-32 catches corruption in transit.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from core.errors import InvalidChunkHeader, InvalidContentRange

HEADER_SIZE = 12
_HEADER = struct.Struct(">III")
_MOD = 1 << 32

# `bytes START-END/TOTAL`; digits only, no signs, no spaces inside the numbers.
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20})")


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    start_mod: int
    end_mod: int
    crc32: int


@dataclass(frozen=True, slots=True)
class ContentRange:
    start: int
    end: int  # inclusive
    total: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def encode_header(start: int, end: int, crc32: int) -> bytes:
    return _HEADER.pack(start % _MOD, end % _MOD, crc32 & 0xFFFFFFFF)


def decode_header(raw: bytes) -> ChunkHeader:
    if len(raw) != HEADER_SIZE:
        raise InvalidChunkHeader(f"the body must start with a {HEADER_SIZE}-byte chunk header")
    return ChunkHeader(*_HEADER.unpack(raw))


def check_header_matches(header: ChunkHeader, content_range: ContentRange) -> None:
    if header.start_mod != content_range.start % _MOD or header.end_mod != content_range.end % _MOD:
        raise InvalidChunkHeader(
            "chunk header range does not match Content-Range",
            header_start=header.start_mod,
            header_end=header.end_mod,
        )


def parse_content_range(value: str | None) -> ContentRange:
    """Parse an upload's `Content-Range: bytes START-END/TOTAL` (END inclusive)."""
    if value is None:
        raise InvalidContentRange("Content-Range header is required: bytes START-END/TOTAL")
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        raise InvalidContentRange("Content-Range must be `bytes START-END/TOTAL`")
    start, end, total = (int(group) for group in match.groups())
    if total < 1:
        raise InvalidContentRange("TOTAL must be at least 1 byte")
    if start > end:
        raise InvalidContentRange("START must not be greater than END")
    if end >= total:
        raise InvalidContentRange("END must be less than TOTAL")
    return ContentRange(start, end, total)
