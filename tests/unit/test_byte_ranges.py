"""core/byte_ranges.py: the nginx Range matrix, RFC 9110 conditionals, RFC 6266 names."""

from __future__ import annotations

import itertools
import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.byte_ranges import (
    DEFAULT_MAX_RANGES,
    MAX_OFFSET,
    coalesce,
    content_disposition,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    limit_ranges,
    parse_http_date,
    parse_range,
    strong_etag,
)

# Asked of nginx 1.22.1 serving a 1000-byte file: None = 200 whole, [] = 416.
NGINX_1000 = {
    "bytes=0-0": [(0, 0)],
    "bytes=0-": [(0, 999)],
    "bytes=-1": [(999, 999)],
    "bytes=999-": [(999, 999)],
    "bytes=-0": [],
    "bytes=": None,
    "bytes= ": None,
    "bytes=0-0,-1": [(0, 0), (999, 999)],
    "bytes=-2000": [(0, 999)],
    "bytes=500-100": [],
    "bytes=abc": [],
    "bytes=1000-": [],
    "bytes=1000-2000": [],
    "bytes=0-99999999": [(0, 999)],
    "bytes=0-1,1000-": [(0, 1)],
    "bytes=1000-,0-1": [(0, 1)],
    "bytes=0-1,-0": [(0, 1)],
    "bytes=0-1,500-100": [(0, 1)],
    "bytes=0-1,": [],
    "bytes=,0-1": [],
    "bytes=0-1,,": [],
    "bytes= ,0-1": [],
    "bytes=0-1,abc": [],
    "bytes=0-1, ,2-3": [],
    "bytes= 0-1": [(0, 1)],
    "bytes=0 - 1": [(0, 1)],
    "bytes=0-1 , 3-4": [(0, 1), (3, 4)],
    "bytes=  -5": [(995, 999)],
    "bytes=- 5": [],
    "bytes=5 -": [(5, 999)],
    "bytes=\t0-1": [],
    "bytes=0-\t1": [],
    "BYTES=0-1": [(0, 1)],
    "Bytes=0-1": [(0, 1)],
    "bytes =0-1": None,
    "items=0-1": None,
    "0-1": None,
    "": None,
    "bytes=00-01": [(0, 1)],
    "bytes=0-1,0-1": [(0, 1), (0, 1)],
    "bytes=0-499,0-499": [(0, 499), (0, 499)],
    "bytes=5-14,0-9": [(5, 14), (0, 9)],
    "bytes=0-9,5-14": [(0, 9), (5, 14)],
    "bytes=0-499,0-500": None,
    "bytes=0-,0-": None,
    "bytes=5-,6-": None,
    "bytes=99999999999999999999-": [],
    "bytes=9223372036854775807-": [],
    "bytes=9223372036854775808-": [],
    "bytes=0-9223372036854775807": [(0, 999)],
    "bytes=0-9223372036854775808": [],
    "bytes=-9223372036854775807": [(0, 999)],
    "bytes=-9223372036854775808": [],
    "bytes=+1-2": [],
    "bytes=1-2-3": [],
    "bytes=1": [],
    "bytes=-": [],
    "bytes=--1": [],
    "bytes=0-1;x": [],
    "bytes=0x1-2": [],
    "bytes=٠-١": [],  # Arabic-Indic digits are not digits to nginx
}

NGINX_EMPTY = {
    "bytes=0-": None,
    "bytes=0-0": None,
    "bytes=-1": None,
    "bytes=-0": None,
    "bytes=0-0,-1": None,
    "bytes=1-2,-5": None,
    "bytes=0-,abc": None,
    "bytes=1-": [],
    "bytes=abc": [],
    "bytes=": None,
}


@pytest.mark.parametrize("header", NGINX_1000)
def test_nginx_matrix(header):
    assert parse_range(header, 1000) == NGINX_1000[header]
    assert model(header, 1000) == NGINX_1000[header]


@pytest.mark.parametrize("header", NGINX_EMPTY)
def test_nginx_matrix_empty_file(header):
    assert parse_range(header, 0) == NGINX_EMPTY[header]
    assert model(header, 0) == NGINX_EMPTY[header]


def test_absent_header_is_ignored():
    assert parse_range(None, 10) is None


def test_many_small_ranges_are_all_served_in_order():
    header = "bytes=" + ",".join(f"{i}-{i}" for i in reversed(range(1000)))
    assert parse_range(header, 1000) == [(i, i) for i in reversed(range(1000))]


# --- what is served: merged, capped ---------------------------------------------------------

COALESCED = {
    "bytes=0-1,0-1": [(0, 1)],
    "bytes=5-14,0-9": [(0, 14)],
    "bytes=0-9,10-19": [(0, 19)],  # adjacent: one range
    "bytes=0-9,11-19": [(0, 9), (11, 19)],  # a gap of one byte: two
    "bytes=500-599,0-9,100-199": [(500, 599), (0, 9), (100, 199)],  # touching nothing: as asked
    "bytes=500-599,0-9,5-14": [(500, 599), (0, 14)],  # a merged range stands where its first member was
    "bytes=20-29,0-9,10-14": [(20, 29), (0, 14)],
    "bytes=0-0,-1": [(0, 0), (999, 999)],
    "bytes=0-1,3-4,1-3": [(0, 4)],  # merging is transitive
}


@pytest.mark.parametrize("header", COALESCED)
def test_overlapping_and_adjacent_ranges_are_merged_in_the_order_asked(header):
    assert limit_ranges(parse_range(header, 1000)) == COALESCED[header]


def test_more_ranges_than_the_cap_send_the_whole_file():
    """nginx's max_ranges: over the cap, the Range is ignored (200 with the whole file)."""
    spaced = [(i * 10, i * 10 + 4) for i in range(DEFAULT_MAX_RANGES + 1)]
    header = "bytes=" + ",".join(f"{a}-{b}" for a, b in spaced)
    assert limit_ranges(parse_range(header, 100_000)) is None
    assert limit_ranges(spaced[:-1]) == spaced[:-1]
    assert limit_ranges(spaced, max_ranges=len(spaced)) == spaced


def test_fifteen_thousand_touching_ranges_become_one():
    header = "bytes=" + ",".join(f"{i}-{i}" for i in range(15_000))
    assert limit_ranges(parse_range(header, 20_000)) == [(0, 14_999)]


def test_no_range_and_no_satisfiable_range_pass_through():
    assert limit_ranges(None) is None
    assert limit_ranges([]) == []


@given(
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 50)).map(lambda t: (t[0], t[0] + t[1])), min_size=1, max_size=12
    )
)
def test_coalesce_keeps_the_same_bytes_in_disjoint_ranges(ranges):
    merged = coalesce(ranges)
    asked_bytes = {b for start, end in ranges for b in range(start, end + 1)}
    assert {b for start, end in merged for b in range(start, end + 1)} == asked_bytes
    ordered = sorted(merged)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ordered))  # neither overlap nor touch
    # Each merged range stands where the first member it absorbed was asked.
    firsts = [min(i for i, (s, e) in enumerate(ranges) if start <= s and e <= end) for start, end in merged]
    assert firsts == sorted(firsts)


# --- properties ---------------------------------------------------------------------------


def model(header: str, size: int):
    """A second, brute-force reading of nginx: regex per comma-separated member, bytes counted."""
    header = header.strip(" ")
    if len(header) < 7 or header[:6].lower() != "bytes=":
        return None
    served, total = [], 0
    for member in header[6:].split(","):
        m = re.fullmatch(r" *(?:([0-9]+) *- *([0-9]*)|-([0-9]+)) *", member)
        if m is None or any(int(g) > MAX_OFFSET for g in m.groups() if g):
            return []
        first, last, suffix = m.groups()
        if suffix is not None:
            wanted = [i for i in range(size) if i >= size - int(suffix)]
        else:
            wanted = [i for i in range(size) if int(first) <= i and (not last or i <= int(last))]
        if wanted:
            served.append((wanted[0], wanted[-1]))
            total += len(wanted)
        elif size == 0 and (suffix is not None or int(first) == 0):
            return None
    if not served:
        return []
    return None if total > size else served


sizes = st.integers(min_value=0, max_value=40)
numbers = st.one_of(st.integers(0, 50).map(str), st.sampled_from(["00", "9223372036854775807", "9" * 20, ""]))
members = st.one_of(
    st.tuples(
        st.sampled_from(["", " "]), numbers, st.sampled_from(["-", " - ", "- "]), numbers, st.sampled_from(["", " "])
    ).map("".join),
    st.tuples(st.sampled_from(["-", " -"]), numbers).map("".join),
    st.text(alphabet="0123456789- ,\tx", max_size=6),
)
range_headers = st.lists(members, min_size=1, max_size=6).map(lambda ms: "bytes=" + ",".join(ms))


@given(st.text(), sizes)
def test_any_text_never_raises_and_stays_in_the_file(header, size):
    result = parse_range(header, size)
    assert result is None or all(0 <= start <= end < size for start, end in result)


@given(st.one_of(range_headers, st.text(alphabet="bytes=0123456789-, ", max_size=20)), sizes)
@settings(max_examples=20 * settings.default.max_examples)  # 2,000 in `make test`, 500 in test-fast
def test_parse_agrees_with_brute_force_model(header, size):
    assert parse_range(header, size) == model(header, size)


@given(st.integers(0, 10**15), st.integers(0, 10**15), st.integers(1, 10**15))
def test_single_range_is_clamped_to_the_file(first, last, size):
    result = parse_range(f"bytes={first}-{last}", size)
    if first > last or first >= size:
        assert result == []
    else:
        assert result == [(first, min(last, size - 1))]


# --- conditionals -------------------------------------------------------------------------

ETAG = strong_etag("ab" * 32)
LM = 1_700_000_000.75  # Last-Modified is whole seconds: 1_700_000_000
DATE = http_date(LM)


def date(delta: int) -> str:
    return http_date(1_700_000_000 + delta)


def pre(method="GET", **headers):
    return evaluate_preconditions(method, {k.replace("_", "-"): v for k, v in headers.items()}, ETAG, LM)


def test_http_date_formats():
    assert DATE == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert parse_http_date(DATE) == 1_700_000_000
    assert parse_http_date("Tuesday, 14-Nov-23 22:13:20 GMT") == 1_700_000_000
    assert parse_http_date("Tue Nov 14 22:13:20 2023") == 1_700_000_000
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777
    for bad in (
        "",
        "yesterday",
        "Tue, 14 Nov 2023 22:13:20 UTC",
        "Tue, 31 Feb 2023 22:13:20 GMT",
        "Tue, 14 Foo 2023 22:13:20 GMT",
        "Tue, 14 Nov 2023 24:00:00 GMT",
        "Mon, 01 Jan 0000 00:00:00 GMT",
        "Tue, ١٤ Nov 2023 22:13:20 GMT",
        None,
    ):
        assert parse_http_date(bad) is None


def test_no_conditions():
    assert pre() is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ETAG, None),
        ("*", None),
        (f'"x", {ETAG}', None),
        ('"x"', 412),
        (f"W/{ETAG}", 412),
        ("garbage", 412),
    ],
)
def test_if_match_is_strong(value, expected):
    assert pre(if_match=value) == expected


@pytest.mark.parametrize(("delta", "expected"), [(0, None), (1, None), (-1, 412)])
def test_if_unmodified_since(delta, expected):
    assert pre(if_unmodified_since=date(delta)) == expected


def test_if_unmodified_since_is_ignored_when_invalid_or_with_if_match():
    assert pre(if_unmodified_since="not a date") is None  # nginx: 412
    assert pre(if_match=ETAG, if_unmodified_since=date(-1)) is None  # nginx: 412


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ETAG, 304),
        (f"W/{ETAG}", 304),
        ("*", 304),
        (f'"x", {ETAG}', 304),
        ('"x"', None),
        ("garbage", None),
    ],
)
def test_if_none_match_is_weak(value, expected):
    assert pre(if_none_match=value) == expected
    assert pre("HEAD", if_none_match=value) == expected
    assert pre("DELETE", if_none_match=value) == (412 if expected else None)


@pytest.mark.parametrize(("delta", "expected"), [(0, 304), (1, 304), (-1, None)])
def test_if_modified_since(delta, expected):
    assert pre(if_modified_since=date(delta)) == expected
    assert pre("POST", if_modified_since=date(delta)) is None


def test_if_modified_since_is_ignored_with_if_none_match_or_when_invalid():
    assert pre(if_none_match='"x"', if_modified_since=date(0)) is None
    assert pre(if_none_match=ETAG, if_modified_since=date(-1)) == 304  # nginx: 200
    assert pre(if_modified_since="soon") is None


def test_412_wins_over_304():
    assert pre(if_match='"x"', if_none_match=ETAG) == 412
    assert pre(if_unmodified_since=date(-1), if_modified_since=date(0)) == 412


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        (None, True),
        (ETAG, True),
        (f" {ETAG} ", True),
        (f"W/{ETAG}", False),
        ('"x"', False),
        (DATE, True),
        ("Tue Nov 14 22:13:20 2023", True),
        (date(1), False),
        (date(-1), False),
        ("junk", False),
    ],
)
def test_if_range(value, allowed):
    assert if_range_allows(value, ETAG, LM) is allowed


# --- Content-Disposition ------------------------------------------------------------------


def split_disposition(header: str) -> tuple[str, str]:
    m = re.fullmatch(r'attachment; filename="([^"\\]*)"; filename\*=UTF-8\'\'([A-Za-z0-9%!#$&+\-.^_`|~]*)', header)
    assert m, header
    return m.group(1), unquote(m.group(2), errors="strict")


def test_plain_name():
    assert content_disposition("report.pdf") == "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"


def test_nasty_name():
    name = 'Résumé "final";\r\nSet-Cookie: a=b\\..\\日本語 100%.txt'
    header = content_disposition(name)
    fallback, exact = split_disposition(header)
    assert fallback == "Resume _final____Set-Cookie: a=b_..____ 100_.txt"
    assert exact == 'Résumé "final";__Set-Cookie: a=b\\..\\日本語 100%.txt'


def test_empty_and_unencodable_names():
    assert split_disposition(content_disposition("")) == ("download", "")
    assert split_disposition(content_disposition("日本")) == ("__", "日本")
    assert split_disposition(content_disposition("a\udcffb")) == ("a_b", "a_b")  # lone surrogate


@given(st.text())
def test_any_name_gives_a_safe_header(name):
    header = content_disposition(name)
    assert all(" " <= c <= "~" for c in header)  # printable ASCII: no CR, LF, NUL, DEL, non-ASCII
    _fallback, exact = split_disposition(header)
    assert exact == "".join("_" if c < " " or "\x7f" <= c <= "\x9f" or "\ud800" <= c <= "\udfff" else c for c in name)
