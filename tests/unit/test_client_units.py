"""Pure parts of the client: sizes, file ids, range splitting, headers, the token cache, messages."""

from __future__ import annotations

import io
import os
import stat
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.api import encode_header, encoded_file_name, intersect
from client.cli import build_parser
from client.errors import EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, ApiError
from client.progress import PlainReporter
from client.tokens import HashJournal, TokenCache
from client.units import (
    FILE_ID_RE,
    AdaptiveChunkSize,
    backoff_delay,
    content_disposition_name,
    derive_file_id,
    etag_sha256,
    format_size,
    parse_retry_after,
    parse_size,
    retry_delay,
    safe_local_name,
    split_ranges,
)
from core.uploads import decode_file_name


# --- sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("8MiB", 8 * 1024 * 1024),
        ("512KiB", 512 * 1024),
        ("1048576", 1048576),
        ("1", 1),
        ("8mib", 8 * 1024 * 1024),
        (" 2 MiB ", 2 * 1024 * 1024),
        ("64M", 64 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("1.5KiB", 1536),
        ("100B", 100),
        ("1MB", 1000**2),
        ("2k", 2048),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "abc", "8XB", "0", "0KiB", "-1", "1.3", "1.0000001KiB", "8 Mi B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(8 * 1024 * 1024) == "8.0 MiB"


# --- file ids ---------------------------------------------------------------------------------
def test_derive_file_id_is_stable_and_valid():
    fid = derive_file_id("/data/big.iso", 1000, 123)
    assert fid == derive_file_id("/data/big.iso", 1000, 123)
    assert fid.startswith("big.iso-") and len(fid) == len("big.iso-") + 12
    assert FILE_ID_RE.fullmatch(fid)


def test_derive_file_id_changes_with_path_size_and_mtime():
    base = derive_file_id("/data/a.bin", 10, 1)
    assert (
        len(
            {
                base,
                derive_file_id("/data/b/a.bin", 10, 1),
                derive_file_id("/data/a.bin", 11, 1),
                derive_file_id("/data/a.bin", 10, 2),
            }
        )
        == 4
    )


def test_derive_file_id_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert derive_file_id("x.bin", 1, 1) == derive_file_id(str(tmp_path / "x.bin"), 1, 1)


@pytest.mark.parametrize(
    "name, prefix",
    [
        ("données été.bin", "donnees_ete.bin-"),
        (".bashrc", "bashrc-"),
        ("...", "file-"),
        ("!!!", "file-"),
        ("日本語", "file-"),
        ("a b\tc\nd", "a_b_c_d-"),
        ("-dash", "-dash-"),
    ],
)
def test_derive_file_id_sanitizes_names(name, prefix):
    fid = derive_file_id(f"/tmp/{name}", 5, 5)
    assert fid.startswith(prefix), fid
    assert FILE_ID_RE.fullmatch(fid)


def test_derive_file_id_of_a_long_or_undecodable_name():
    long_id = derive_file_id("/tmp/" + "x" * 500 + ".bin", 1, 1)
    assert len(long_id) == 128 and FILE_ID_RE.fullmatch(long_id)
    odd = derive_file_id(os.fsdecode(b"/tmp/caf\xe9.bin"), 1, 1)
    assert FILE_ID_RE.fullmatch(odd)


@given(st.text(min_size=0, max_size=300), st.integers(0, 2**50), st.integers(0, 2**62))
def test_derive_file_id_is_always_valid(name, size, mtime):
    name = name.replace("/", "_").replace("\0", "")
    assert FILE_ID_RE.fullmatch(derive_file_id(f"/tmp/{name}", size, mtime))


# --- range splitting ----------------------------------------------------------------------------
def test_split_ranges_on_the_chunk_grid():
    assert split_ranges([[0, 9]], 4) == [(0, 3), (4, 7), (8, 9)]
    assert split_ranges([[5, 12]], 4) == [(5, 7), (8, 11), (12, 12)]
    assert split_ranges([[0, 2], [6, 6], [10, 17]], 8) == [(0, 2), (6, 6), (10, 15), (16, 17)]
    assert split_ranges([], 4) == []
    assert split_ranges([[0, 0]], 1) == [(0, 0)]
    mib = 1024 * 1024
    assert split_ranges([[0, 20 * mib - 1]], 8 * mib) == [
        (0, 8 * mib - 1),
        (8 * mib, 16 * mib - 1),
        (16 * mib, 20 * mib - 1),
    ]


def test_split_ranges_rejects_a_zero_chunk():
    with pytest.raises(ValueError):
        split_ranges([[0, 1]], 0)


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 5000)), max_size=20), st.integers(1, 3000))
def test_split_ranges_covers_exactly(spans, chunk):
    # disjoint, sorted ranges as the server's missing_ranges are
    ranges, cursor = [], 0
    for gap, length in spans:
        start = cursor + gap
        ranges.append([start, start + length])
        cursor = start + length + 2
    pieces = split_ranges(ranges, chunk)
    covered = [b for s, e in pieces for b in (s, e)]
    assert all(e - s + 1 <= chunk and s // chunk == e // chunk for s, e in pieces)
    assert sum(e - s + 1 for s, e in pieces) == sum(e - s + 1 for s, e in ranges)
    assert covered == sorted(covered)
    for s, e in pieces:
        assert any(rs <= s and e <= re_ for rs, re_ in ranges)


def test_intersect():
    assert intersect(10, 20, [[0, 5], [8, 12], [15, 30]]) == [(10, 12), (15, 20)]
    assert intersect(10, 20, [[21, 30]]) == []


# --- wire formats -------------------------------------------------------------------------------
@pytest.mark.parametrize("start, end, crc", [(0, 0, 0), (5, 100, 0xDEADBEEF), (2**32 + 7, 2**33 + 1, 1)])
def test_header_is_the_contracts_wire_format(start, end, crc):
    # Compared with the contract's layout, not with the server's encoder: both could be wrong alike.
    assert encode_header(start, end, crc) == struct.pack(">III", start % 2**32, end % 2**32, crc)


@pytest.mark.parametrize("name", ["résumé.bin", "a b%20c.txt", "日本語.txt", "100%.txt"])
def test_file_name_header_round_trips(name):
    assert decode_file_name(encoded_file_name(f"/some/dir/{name}")) == name


def test_file_name_header_drops_control_characters_and_bad_bytes():
    assert decode_file_name(encoded_file_name("/x/a\nb.txt")) == "ab.txt"
    assert decode_file_name(encoded_file_name(os.fsdecode(b"/x/caf\xe9"))) == "caf\ufffd"


def test_content_disposition_name():
    header = "attachment; filename=\"resume.bin\"; filename*=UTF-8''r%C3%A9sum%C3%A9.bin"
    assert content_disposition_name(header) == "résumé.bin"
    assert content_disposition_name('attachment; filename="a \\"q\\".bin"') == 'a "q".bin'
    assert content_disposition_name("attachment; filename=plain.txt") == "plain.txt"
    assert content_disposition_name("attachment") is None
    assert content_disposition_name(None) is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../etc/passwd", "passwd"),
        (".hidden", "hidden"),
        ("..", "fallback"),
        ("", "fallback"),
        (None, "fallback"),
        ("a\\b.txt", "b.txt"),
        ("x\ny.bin", "xy.bin"),
        ("ok name.bin", "ok name.bin"),
    ],
)
def test_safe_local_name(name, expected):
    assert safe_local_name(name, "fallback") == expected


def test_etag_sha256():
    digest = "ab" * 32
    assert etag_sha256(f'"{digest}"') == digest
    assert etag_sha256(f'W/"{digest}"') is None
    assert etag_sha256('"short"') is None
    assert etag_sha256(None) is None


def test_backoff_grows_with_jitter_and_a_cap():
    for attempt in range(12):
        ceiling = min(15.0, 0.25 * 2**attempt)
        for _ in range(20):
            assert ceiling / 2 <= backoff_delay(attempt) <= ceiling


# --- tokens -------------------------------------------------------------------------------------
def test_token_cache(tmp_path):
    cache = TokenCache(tmp_path / "c")
    assert cache.get("http://h", "alice") is None
    cache.put("http://h", "alice", "tok-a", 3600)
    assert cache.get("http://h", "alice") == "tok-a"
    assert cache.get("http://h", "bob") is None
    assert cache.get("http://other", "alice") is None
    assert cache.last_user("http://h") == "alice"
    [path] = (tmp_path / "c" / "tokens").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Bracketed by the clock before and after, so a slow machine cannot push it out of the window.
    before = time.time()
    cache.put("http://h", "alice", "tok-short", 10)  # short-lived: renewed 1 s before it expires
    token, renew = cache.entry("http://h", "alice")
    assert token == "tok-short" and before + 9 - 1e-6 <= renew <= time.time() + 9 + 1e-6
    cache.put("http://h", "alice", "tok-old", 0)
    assert cache.get("http://h", "alice") is None
    before = time.time()
    cache.put("http://h", "alice", "tok-long", 3600)  # renewed 30 s early
    assert before + 3570 - 1e-6 <= cache.entry("http://h", "alice")[1] <= time.time() + 3570 + 1e-6
    cache.put("http://h", "alice", "tok-b", 3600)
    cache.forget("http://h", "alice")
    assert cache.get("http://h", "alice") is None


def test_token_cache_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_CLIENT_CACHE_DIR", str(tmp_path / "env-cache"))
    assert TokenCache().root == tmp_path / "env-cache"


# --- messages and exit codes ----------------------------------------------------------------------
def test_api_error_messages_and_exit_codes():
    wrong = ApiError(401, "invalid_credentials", "wrong user name or password")
    assert "invalid credentials" in str(wrong) and wrong.exit_code == EXIT_AUTH
    limited = ApiError(429, "too_many_attempts", "too many failed logins; try again later", retry_after=42)
    assert "retry after 42 s" in str(limited) and limited.exit_code == EXIT_AUTH
    full = ApiError(507, "insufficient_storage", "no space")
    assert "out of storage" in str(full) and full.exit_code == EXIT_UNAVAILABLE
    assert ApiError(404, "not_found", "no such upload").exit_code == EXIT_NOT_FOUND
    assert ApiError(503, "unavailable", "redis").exit_code == EXIT_UNAVAILABLE


# --- progress and command line --------------------------------------------------------------------
def test_plain_progress_lines():
    out = io.StringIO()
    reporter = PlainReporter(out, interval=0)
    with reporter.task("upload x", 2048) as task:
        task.advance(1024)
        time.sleep(0.01)
        task.advance(1024)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("upload x: 1.0 KiB / 2.0 KiB (50%), ")
    assert lines[-1].startswith("upload x: 2.0 KiB / 2.0 KiB (100%)") and "done in" in lines[-1]


def test_cli_parses_options_before_and_after_the_command():
    parser = build_parser()
    args = parser.parse_args(["--url", "http://a", "upload", "f", "--chunk-size", "512KiB", "--parallel", "4", "-q"])
    assert (args.url, args.chunk_size, args.parallel, args.quiet) == ("http://a", 512 * 1024, 4, True)
    args = parser.parse_args(["download", "id", "-o", "out", "--url", "http://b"])
    assert (args.url, args.output, args.quiet) == ("http://b", "out", False)
    assert parser.parse_args(["upload", "f"]).chunk_size == 8 * 1024 * 1024
    with pytest.raises(SystemExit):
        parser.parse_args(["upload", "f", "--chunk-size", "lots"])
    with pytest.raises(SystemExit):
        parser.parse_args(["upload", "f", "--parallel", "0"])


def test_plain_progress_says_when_a_task_stopped_on_an_error():
    out = io.StringIO()
    with pytest.raises(RuntimeError), PlainReporter(out, interval=60).task("download y", 10) as task:
        task.advance(5)
        raise RuntimeError("cut")
    assert out.getvalue().strip().startswith("download y: 5 B / 10 B (50%)")
    assert "stopped after" in out.getvalue() and "done" not in out.getvalue()


# --- adaptive chunk size ------------------------------------------------------------------------
def test_chunk_size_halves_after_cuts_down_to_the_floor_and_grows_back():
    link = AdaptiveChunkSize(8 * 1024 * 1024, floor=256 * 1024, shrink=2, grow_after=3)
    sizes = []
    for _ in range(7):
        link.cut()
        sizes.append(link.current)
    assert sizes == [4 << 20, 2 << 20, 1 << 20, 512 << 10, 256 << 10, 256 << 10, 256 << 10]
    assert link.failures == 7
    link.succeeded()
    assert link.failures == 0 and link.current == 256 << 10
    link.succeeded()
    link.succeeded()
    assert link.current == 512 << 10
    for _ in range(3 * 10):
        link.succeeded()
    assert link.current == 8 << 20  # never above the chosen size


def test_chunk_size_slices_on_the_grid_of_the_current_size():
    link = AdaptiveChunkSize(1000, floor=100, shrink=2)
    assert link.slice(0, 5000) == 999
    assert link.slice(1500, 5000) == 1999  # back on the grid after an odd start
    assert link.slice(1500, 1600) == 1600
    link.cut()
    assert link.slice(1000, 5000) == 1499


def test_chunk_size_floor_never_exceeds_the_chosen_size_and_the_server_limit_caps_it():
    small = AdaptiveChunkSize(100 * 1024)
    small.cut()
    assert small.current == 100 * 1024  # a chosen size below the floor is the floor
    assert AdaptiveChunkSize(8 << 20).floor == 128 << 10
    link = AdaptiveChunkSize(8 << 20)
    link.limit(1 << 20)
    assert link.current == link.ceiling == 1 << 20
    for _ in range(20):
        link.succeeded()
    assert link.current == 1 << 20


# --- Retry-After ----------------------------------------------------------------------------------
def test_retry_after_in_seconds_or_as_an_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777 - 30) == 30.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777 + 30) == 0.0  # in the past: at once
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("") is None


def test_retry_delay_honours_retry_after_capped_with_jitter_and_backs_off_without():
    import random

    rng = random.Random(1)
    waits = [retry_delay(0, 5.0, max_retry_after=60, rng=rng) for _ in range(200)]
    assert all(5.0 <= w <= 5.5 for w in waits) and len(set(waits)) > 100  # never early, spread out
    assert all(60 <= retry_delay(3, 3600.0, max_retry_after=60, rng=rng) <= 66 for _ in range(50))
    assert all(0.125 <= retry_delay(0, None, base=0.25, rng=rng) <= 0.25 for _ in range(50))
    assert all(7.5 <= retry_delay(10, None, base=0.25, cap=15, rng=rng) <= 15 for _ in range(50))


# --- hash journal -----------------------------------------------------------------------------------
def test_hash_journal_trusts_only_the_very_file_it_hashed(tmp_path):
    journal = HashJournal(tmp_path / "cache", settle=2.0)
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 100)
    old = time.time_ns() - 10 * 10**9
    os.utime(src, ns=(old, old))
    st = os.stat(src)
    journal.put(str(src), st, "ab" * 32, time.time_ns(), "a.bin-1")
    assert journal.get(str(src), st) == "ab" * 32
    assert journal.get(os.path.relpath(src), st) == "ab" * 32  # the same file under a relative path
    other = tmp_path / "b.bin"
    other.write_bytes(b"x" * 100)
    os.utime(other, ns=(old, old))
    assert journal.get(str(other), os.stat(other)) is None  # another path
    os.utime(src, ns=(old + 1, old + 1))
    assert journal.get(str(src), os.stat(src)) is None  # another mtime
    src.write_bytes(b"x" * 101)
    os.utime(src, ns=(old, old))
    assert journal.get(str(src), os.stat(src)) is None  # another size
    replaced = tmp_path / "c.bin"
    replaced.write_bytes(b"x" * 100)
    os.utime(replaced, ns=(old, old))
    os.replace(replaced, src)
    assert journal.get(str(src), os.stat(src)) is None  # same size and mtime, another inode


def test_hash_journal_does_not_trust_a_file_modified_while_or_just_before_it_was_hashed(tmp_path):
    journal = HashJournal(tmp_path / "cache", settle=2.0)
    src = tmp_path / "fresh.bin"
    src.write_bytes(b"y")
    st = os.stat(src)
    journal.put(str(src), st, "cd" * 32, time.time_ns(), "fresh")
    assert journal.get(str(src), st) is None
    entry = next((tmp_path / "cache" / "hashes").iterdir())
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600


def test_one_tls_context_for_all_pools_and_none_for_plain_http():
    from client import Client

    plain = Client("http://127.0.0.1:1", "u", "p")
    assert plain.transport.tls() is False
    secure = Client("https://files.example", "u", "p")
    context = secure.transport.tls()
    assert context is secure.transport.tls() and context.verify_mode.name == "CERT_REQUIRED"
