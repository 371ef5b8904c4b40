"""Parsing of the tus headers (core/tus.py): Upload-Metadata, Upload-Checksum, sizes, Upload-Concat."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ConcatenationError, InvalidTusHeader, UnsupportedChecksumAlgorithm
from core.tus import (
    CHECKSUM_ALGORITHMS,
    encode_metadata,
    file_name_from,
    parse_checksum,
    parse_metadata,
    parse_size,
    part_ids,
)

keys = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=","), min_size=1, max_size=20)


@given(st.dictionaries(keys, st.binary(max_size=64), max_size=8))
def test_metadata_round_trips(pairs):
    assert parse_metadata(encode_metadata(pairs)) == pairs


@given(st.dictionaries(keys, st.binary(max_size=64), min_size=1, max_size=8))
def test_metadata_tolerates_spaces_around_pairs(pairs):
    spaced = " , ".join(f" {k} {base64.b64encode(v).decode()}" if v else k for k, v in pairs.items())
    assert parse_metadata(spaced) == pairs


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_empty_metadata_is_no_metadata(raw):
    assert parse_metadata(raw) == {}


def test_keys_without_values_are_empty_values():
    assert parse_metadata("is_confidential,filename bmFtZQ==") == {"is_confidential": b"", "filename": b"name"}


@pytest.mark.parametrize("raw", ["a !!!", "a b c", ",a", "a,,b", "a YQ==,a YQ==", "k\u00e9y YQ==", "a YQ"])
def test_malformed_metadata_is_refused(raw):
    with pytest.raises(InvalidTusHeader):
        parse_metadata(raw)


def test_file_name_from_metadata():
    assert file_name_from({"filename": "r\u00e9sum\u00e9.pdf".encode()}) == "r\u00e9sum\u00e9.pdf"
    assert file_name_from({"name": b"uppy.bin"}) == "uppy.bin"
    assert file_name_from({"filetype": b"text/plain"}) is None
    for bad in (b"\xff\xfe", b"a\nb", b"x" * 1025):
        with pytest.raises(InvalidTusHeader):
            file_name_from({"filename": bad})


def _digest(algorithm: str, body: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(body).to_bytes(4, "big")
    return hashlib.new(algorithm, body).digest()


@given(st.sampled_from(sorted(CHECKSUM_ALGORITHMS)), st.binary(max_size=4096), st.integers(1, 64))
def test_checksums_match_hashlib_and_zlib_in_any_pieces(algorithm, body, piece):
    checksum = parse_checksum(f"{algorithm} {base64.b64encode(_digest(algorithm, body)).decode()}")
    hasher = checksum.hasher()
    for i in range(0, len(body), piece):
        hasher.update(body[i : i + piece])
    assert hasher.digest() == checksum.digest


def test_checksum_algorithm_names_are_case_insensitive():
    assert parse_checksum("SHA1 " + base64.b64encode(b"\0" * 20).decode()).algorithm == "sha1"


@pytest.mark.parametrize(
    "raw,error",
    [
        ("sha3 AAAA", UnsupportedChecksumAlgorithm),
        ("sha1", InvalidTusHeader),
        ("", InvalidTusHeader),
        ("sha1 not-base64!", InvalidTusHeader),
        ("md5 " + base64.b64encode(b"short").decode(), InvalidTusHeader),
        ("sha1  AAAA", InvalidTusHeader),
    ],
)
def test_malformed_checksums_are_refused(raw, error):
    with pytest.raises(error):
        parse_checksum(raw)


@given(st.integers(0, 10**18))
def test_sizes(value):
    assert parse_size(str(value), "Upload-Length") == value
    assert parse_size(f" {value} ", "Upload-Length") == value


@pytest.mark.parametrize("raw", ["-1", "1e3", "0x10", "", "١٢", "12345678901234567890", "+5"])
def test_bad_sizes(raw):
    with pytest.raises(InvalidTusHeader):
        parse_size(raw, "Upload-Offset")


def test_concat_part_ids_from_absolute_relative_and_bare_urls():
    assert part_ids("final;https://h/files/a1 /files/b2/ c3?x=1") == ["a1", "b2", "c3"]
    for bad in ("final;", "final; ", "final;/files/.hidden", "final;/files/a%2Fb"):
        with pytest.raises(ConcatenationError):
            part_ids(bad)
