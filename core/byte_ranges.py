"""Range, conditional and Content-Disposition logic for downloads: pure functions, no I/O.

`parse_range` answers exactly as nginx 1.22 (ngx_http_range_filter_module) does; every
row below was asked of a real nginx 1.22.1 serving a 1000-byte file (and an empty one):

    no header, "items=0-1", "0-1", "bytes =0-1", "bytes="   -> 200 (ignored: needs "bytes=" + 1 char,
                                                               prefix case-insensitive: "BYTES=0-1" works)
    "bytes=0-0" / "0-" / "-1" / "999-"          -> 206 0-0 / 0-999 / 999-999 / 999-999
    "bytes=0-99999999", "-2000"                 -> 206 0-999 (end clamped, suffix longer than file)
    "bytes=-0", "1000-", "500-100", "1000-2000" -> 416 (no satisfiable range)
    "bytes=abc", "1", "-", "--1", "+1-2", "1-2-3", "0x1-2", "0-1;x"  -> 416 (malformed)
    "bytes=0-1,", ",0-1", "0-1,,", " ,0-1", "0-1,abc"  -> 416: an empty or bad member spoils the set
    " 0-1", "0 - 1", "0-1 , 3-4", "5 -", "  -5"  -> fine: spaces (only) may surround numbers and commas,
                                                    but not sit inside "-N" ("- 5" -> 416); a tab -> 416
    "bytes=00-01"                               -> 206 0-1 (leading zeros)
    "bytes=0-1,1000-", "1000-,0-1", "0-1,-0", "0-1,500-100" -> 206 0-1 single part (bad members dropped)
    "bytes=0-0,-1"                              -> 206 multipart 0-0, 999-999
    "bytes=5-14,0-9", "0-1,0-1", "0-499,0-499"  -> 206 multipart, parts as asked: never sorted,
                                                    merged or deduplicated ...
    "bytes=0-499,0-500", "0-,0-", "5-,6-"       -> 200 ... unless their sizes add up to more than the file
    numbers up to 2^63-1 parse ("0-9223372036854775807" -> 0-999); one more digit -> 416
    empty file: any member starting at 0 ("0-", "0-0", "-1", "-0") -> 200 at once, "1-" -> 416
    members are read left to right: the first malformed one is a 416, the first "starts at 0 but
    empty" one (empty file) a 200, whatever follows.

What is served then differs from nginx in one way (`limit_ranges`): overlapping and adjacent
ranges are merged, and more than FT_MAX_RANGES ranges after that get the whole file (200).

Conditionals follow RFC 9110 §13.2.2 where nginx differs: nginx checks If-Unmodified-Since even
when If-Match is present, wants both If-None-Match and If-Modified-Since to say "not modified",
answers 412 to an unparsable If-Unmodified-Since and, by default, 304s only on an exact
If-Modified-Since date. If-Range behaves the same in both: a value ending in '"' is compared
with the ETag byte for byte (so W/"..." never matches), anything else must be the exact
Last-Modified date.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from urllib.parse import quote

MAX_OFFSET = 2**63 - 1  # nginx's off_t: a longer number is a 416, not a clamp

Ranges = list[tuple[int, int]]


def parse_range(header: str | None, size: int) -> Ranges | None:
    """Ranges (start, end inclusive) to serve, in the order asked; `None` = ignore the header
    and send the whole file (200); `[]` = 416. A transcription of nginx's ngx_http_range_parse
    (nginx trims spaces, not tabs, around a header value before it looks at it)."""
    if header is not None:
        header = header.strip(" ")
    if header is None or len(header) < 7 or header[:6].lower() != "bytes=":
        return None
    n = len(header)
    i = 6
    ranges: Ranges = []
    total = 0

    def skip_spaces(i: int) -> int:
        while i < n and header[i] == " ":
            i += 1
        return i

    def number(i: int) -> tuple[int | None, int]:
        if i >= n or not "0" <= header[i] <= "9":
            return None, i
        value = 0
        while i < n and "0" <= header[i] <= "9":
            value = value * 10 + ord(header[i]) - 48
            if value > MAX_OFFSET:
                return None, i
            i += 1
        return value, i

    while True:
        i = skip_spaces(i)
        suffix = i < n and header[i] == "-"
        start = 0
        end = None
        if suffix:
            i += 1
        else:
            first, i = number(i)
            if first is None:
                return []
            start = first
            i = skip_spaces(i)
            if i >= n or header[i] != "-":
                return []
            i = skip_spaces(i + 1)
            if i >= n or header[i] == ",":
                end = size  # "N-": to the end (exclusive)
        if end is None:
            last, i = number(i)
            if last is None:
                return []
            i = skip_spaces(i)
            if i < n and header[i] != ",":
                return []
            if suffix:
                start = size - last if last < size else 0
                last = size - 1
            end = size if last >= size else last + 1
        if start < end:
            if total > MAX_OFFSET - (end - start):
                return []
            ranges.append((start, end - 1))
            total += end - start
        elif start == 0:
            return None  # only an empty file gets here: nginx serves it whole
        if i >= n:
            break
        i += 1  # the comma
    if not ranges:
        return []
    if total > size:
        return None  # more bytes asked than the file has: cheaper to send it once
    return ranges


# --- what is served of the ranges asked ------------------------------------------------------

DEFAULT_MAX_RANGES = 100  # FT_MAX_RANGES


def coalesce(ranges: Ranges) -> Ranges:
    """Overlapping and adjacent ranges merged into one (RFC 9110 §14.2 lets a server do so).

    A merged range takes the place of its first member as asked; ranges that touch no other
    keep the order asked (CONTRACT 6). "0-9,5-14" -> 0-14; "20-29,0-9,10-14" -> 20-29, 0-14."""
    if len(ranges) < 2:
        return ranges
    groups: list[list[int]] = []  # [first position asked, start, end], by start
    for position in sorted(range(len(ranges)), key=ranges.__getitem__):
        start, end = ranges[position]
        if groups and start <= groups[-1][2] + 1:
            group = groups[-1]
            group[0], group[2] = min(group[0], position), max(group[2], end)
        else:
            groups.append([position, start, end])
    groups.sort()
    return [(start, end) for _, start, end in groups]


def limit_ranges(ranges: Ranges | None, max_ranges: int = DEFAULT_MAX_RANGES) -> Ranges | None:
    """The ranges to send for what parse_range read: merged, and `None` (the whole file, 200,
    as nginx's max_ranges does) when more than `max_ranges` remain. A Range of thousands of
    small pieces would otherwise cost a multipart header per piece (~80 bytes each) and a
    read per piece, for bytes a single 200 sends cheaper."""
    if not ranges:
        return ranges
    merged = coalesce(ranges)
    return None if len(merged) > max_ranges else merged


# --- validators -----------------------------------------------------------------------------


def strong_etag(sha256_hex: str) -> str:
    return f'"{sha256_hex}"'


def http_date(epoch: float) -> str:
    return formatdate(math.floor(epoch), usegmt=True)


_MONTHS = {
    m: i for i, m in enumerate(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1)
}
_WKDAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE = re.compile(rf"{_WKDAY}, (\d\d) ([A-Z][a-z]{{2}}) (\d{{4}}) {_TIME} GMT", re.ASCII)
_RFC850_DATE = re.compile(rf"{_WKDAY}[a-z]*day, (\d\d)-([A-Z][a-z]{{2}})-(\d\d) {_TIME} GMT", re.ASCII)
_ASCTIME_DATE = re.compile(rf"{_WKDAY} ([A-Z][a-z]{{2}}) ([ \d]\d) {_TIME} (\d{{4}})", re.ASCII)


def parse_http_date(value: str | None) -> int | None:
    """Epoch seconds of an RFC 9110 HTTP-date (IMF-fixdate, RFC 850 or asctime), else None."""
    if value is None:
        return None
    value = value.strip()
    if m := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = m.groups()
    elif m := _RFC850_DATE.fullmatch(value):
        day, month, yy, hh, mm, ss = m.groups()
        year = str(2000 + int(yy) if int(yy) < 70 else 1900 + int(yy))
    elif m := _ASCTIME_DATE.fullmatch(value):
        month, day, hh, mm, ss, year = m.groups()
    else:
        return None
    try:
        when = datetime(int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss), tzinfo=UTC)
    except (KeyError, ValueError):
        return None
    return int(when.timestamp())


_ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')


def _etags(value: str) -> list[tuple[str, str]] | None:
    """("W/" or "", '"opaque"') members of an If-Match/If-None-Match list; None for "*"."""
    return None if value.strip() == "*" else _ENTITY_TAG.findall(value)


def evaluate_preconditions(method: str, headers: Mapping[str, str], etag: str, last_modified: float) -> int | None:
    """RFC 9110 §13.2.2 steps 1-4 for an existing file: 412, 304, or None (go on).

    `headers`: the request's, looked up by lower-case name; `etag`: the strong ETag as sent."""
    modified = math.floor(last_modified)
    if_match = headers.get("if-match")
    if if_match is not None:
        tags = _etags(if_match)
        if tags is not None and not any(not weak and tag == etag for weak, tag in tags):
            return 412
    else:
        since = parse_http_date(headers.get("if-unmodified-since"))
        if since is not None and modified > since:
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = _etags(if_none_match)
        if tags is None or any(tag == etag for _, tag in tags):
            return 304 if method in ("GET", "HEAD") else 412
    elif method in ("GET", "HEAD"):
        since = parse_http_date(headers.get("if-modified-since"))
        if since is not None and modified <= since:
            return 304
    return None


def if_range_allows(if_range: str | None, etag: str, last_modified: float) -> bool:
    """Whether a Range may be honoured (RFC 9110 §13.1.5): no If-Range, the same strong ETag,
    or exactly the Last-Modified date."""
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.endswith('"'):
        return if_range == etag
    return parse_http_date(if_range) == math.floor(last_modified)


# --- Content-Disposition ----------------------------------------------------------------------

_ATTR_CHARS = "!#$&+-.^_`|~"  # RFC 8187 attr-char besides ALPHA / DIGIT
_FALLBACK_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\%;/]')


def _no_controls(name: str) -> str:
    return "".join("_" if unicodedata.category(c) in ("Cc", "Cs") else c for c in name)


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII `filename` for old clients and the exact UTF-8 name in `filename*`.

    Control characters become "_" in both. The fallback also drops accents (é -> e) and turns
    any other non-ASCII character, quote, backslash, '%', ';' and '/' into "_", so nothing in
    the name can end the quoted string, split the header or name a path."""
    name = _no_controls(filename)
    base = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    fallback = _FALLBACK_UNSAFE.sub("_", base).strip() or "download"
    encoded = quote(name, safe=_ATTR_CHARS, errors="replace")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
