"""verify_file: the worker's last look at the staged bytes before a file becomes `complete`.

The file is read in READ_SIZE blocks while each stored chunk's CRC-32 is carried across block
edges; a damaged byte must be pinned to its chunk wherever it sits relative to those edges.
"""

from __future__ import annotations

import hashlib
import os
import zlib

import pytest

from core.assembly import READ_SIZE, verify_file
from core.state import Chunk
from core.storage.posix import PosixReader

R = READ_SIZE
TOTAL = 2 * R + 1234
# Chunk edges placed on, just before and across the read-block edges.
EDGES = [(0, 999), (1000, R - 101), (R - 100, R + 99), (R + 100, 2 * R - 1), (2 * R, TOTAL - 1)]


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(TOTAL)


@pytest.fixture(scope="module")
def chunks(data) -> list[Chunk]:
    # Stored in a scrambled order: verify_file must not rely on the repository's order.
    made = [Chunk(s, e, zlib.crc32(data[s : e + 1])) for s, e in EDGES]
    return made[3:] + made[:3]


@pytest.fixture
def staged(tmp_path):
    """staged(content): the content as a POSIX store reads a staged file (closed afterwards)."""
    readers: list[PosixReader] = []

    def make(content: bytes) -> PosixReader:
        path = tmp_path / f"data{len(readers)}"
        path.write_bytes(content)
        readers.append(PosixReader(path))
        return readers[-1]

    yield make
    for reader in readers:
        reader.close()


def damaged(data: bytes, *positions: int) -> bytes:
    copy = bytearray(data)
    for position in positions:
        copy[position] ^= 0x01
    return bytes(copy)


def owner_of(position: int) -> tuple[int, int]:
    return next((s, e) for s, e in EDGES if s <= position <= e)


def test_intact_file_passes_with_its_sha256(staged, data, chunks):
    result = verify_file(staged(data), chunks, TOTAL)
    assert result.bad_chunk is None
    assert result.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "position",
    [
        0,  # first byte of the file
        500,  # inside the first chunk
        R - 101,  # last byte of a chunk that ends just before a block edge
        R - 100,  # first byte of the chunk that straddles the first block edge
        R - 1,  # last byte of the first read block, inside the straddling chunk
        R,  # first byte of the second read block, same chunk
        R + 99,  # last byte of the straddling chunk
        R + 100,  # first byte of the next chunk
        2 * R - 1,  # last byte of a chunk that ends exactly on a block edge
        2 * R,  # first byte of a chunk that starts exactly on a block edge
        TOTAL - 1,  # last byte of the file
    ],
)
def test_damaged_byte_is_pinned_to_its_chunk(staged, data, chunks, position):
    content = damaged(data, position)
    result = verify_file(staged(content), chunks, TOTAL)
    assert result.bad_chunk is not None, f"a flipped byte at {position} went unnoticed"
    assert (result.bad_chunk.start, result.bad_chunk.end) == owner_of(position)
    assert result.sha256 == hashlib.sha256(content).hexdigest()  # of what is on disk


def test_first_of_several_damaged_chunks_is_reported(staged, data, chunks):
    result = verify_file(staged(damaged(data, 2 * R + 5, R + 50)), chunks, TOTAL)
    assert (result.bad_chunk.start, result.bad_chunk.end) == owner_of(R + 50)


def test_truncated_file_is_an_error_not_a_pass(staged, data, chunks):
    with pytest.raises(ValueError, match="shorter"):
        verify_file(staged(data[: R + 10]), chunks, TOTAL)
