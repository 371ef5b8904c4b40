"""Pure helpers of the client: sizes, file ids, range splitting, backoff, header parsing."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import os
import random
import re
import threading
import time
import unicodedata
from urllib.parse import unquote

from client.errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# Binary units are powers of 1024 (as in the contract); "KB", "MB", ... are SI (powers of 1000);
# the one-letter forms "K", "M", "G" are binary, as dd and most tools read them.
_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "m": MiB,
    "mib": MiB,
    "g": GiB,
    "gib": GiB,
    "t": TiB,
    "tib": TiB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")

FILE_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
MAX_FILE_ID = 128


def parse_size(text: str) -> int:
    """`8MiB`, `512KiB`, `1048576`, `1.5GiB`, `64M` -> bytes. Raises ValueError on anything else."""
    match = _SIZE.fullmatch(str(text))
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 8MiB, 512KiB, 1048576)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} in {text!r} (use B, KiB, MiB, GiB, TiB)")
    value = float(number) * factor if "." in number else int(number) * factor
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number of bytes")
    if int(value) < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return int(value)


def format_size(n: float) -> str:
    """1536 -> '1.5 KiB'; exact and short enough for progress lines."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def is_valid_file_id(file_id: str) -> bool:
    return bool(FILE_ID_RE.fullmatch(file_id))


def check_file_id(file_id: str) -> None:
    """Refuse an id the server would refuse (400 invalid_file_id) before sending anything."""
    if not is_valid_file_id(file_id):
        raise UsageError(f"invalid file id {file_id!r}: 1-128 characters of [A-Za-z0-9._-], not starting with '.'")


def sanitize_name(name: str) -> str:
    """A file name reduced to [A-Za-z0-9._-], not starting with '.', never empty."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).strip("_")
    cleaned = cleaned.lstrip(".")
    return cleaned or "file"


def derive_file_id(path: str | os.PathLike, size: int, mtime_ns: int) -> str:
    """The default file id: the sanitized base name and a short hash of (absolute path, size, mtime).

    Stable while the file is unchanged (so running the same command again resumes); a different
    file, or the same file after it changed, gets another id."""
    absolute = os.path.abspath(os.fspath(path))
    digest = hashlib.sha256(f"{absolute}\0{size}\0{mtime_ns}".encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem = sanitize_name(os.path.basename(absolute))[: MAX_FILE_ID - len(digest) - 1]
    file_id = f"{stem}-{digest}"
    assert is_valid_file_id(file_id), file_id
    return file_id


def split_ranges(ranges, chunk_size: int) -> list[tuple[int, int]]:
    """Cut inclusive byte ranges into pieces no larger than `chunk_size`, on the grid of multiples
    of `chunk_size` (so a resumed upload cuts the same chunks as the first run did)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    pieces: list[tuple[int, int]] = []
    for first, last in ranges:
        start, end = int(first), int(last)
        while start <= end:
            boundary = (start // chunk_size + 1) * chunk_size - 1
            stop = min(end, boundary)
            pieces.append((start, stop))
            start = stop + 1
    return pieces


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 15.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: somewhere in [d/2, d] where d = min(cap, base * 2^attempt)."""
    delay = min(cap, base * (2 ** max(0, attempt)))
    return delay * (0.5 + 0.5 * (rng or random).random())


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(
    attempt: int,
    retry_after: float | None,
    base: float = 0.25,
    cap: float = 15.0,
    max_retry_after: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """How long to wait before retry number `attempt` (0-based): what the server asked for in
    Retry-After (at most `max_retry_after`, plus up to 10% so that clients told the same do not
    come back at the same instant), else exponential backoff with jitter."""
    if retry_after is None:
        return backoff_delay(attempt, base, cap, rng)
    return min(retry_after, max_retry_after) * (1 + 0.1 * (rng or random).random())


def etag_sha256(etag: str | None) -> str | None:
    """The SHA-256 inside a strong ETag `"<hex>"`; None for weak or other tags."""
    if not etag:
        return None
    match = re.fullmatch(r'"([0-9a-fA-F]{64})"', etag.strip())
    return match.group(1).lower() if match else None


def content_disposition_name(header: str | None) -> str | None:
    """The file name of a `Content-Disposition` header: RFC 6266 `filename*` first, else `filename`."""
    if not header:
        return None
    star = re.search(r"filename\*\s*=\s*([^;]+)", header, re.IGNORECASE)
    if star:
        value = star.group(1).strip().strip('"')
        charset, _, rest = value.partition("'")
        _lang, _, encoded = rest.partition("'")
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    plain = re.search(r'filename\s*=\s*("((?:[^"\\]|\\.)*)"|[^;]+)', header, re.IGNORECASE)
    if plain:
        if plain.group(2) is not None:
            return re.sub(r"\\(.)", r"\1", plain.group(2))
        return plain.group(1).strip()
    return None


def safe_local_name(name: str | None, fallback: str) -> str:
    """A server-suggested name made safe to create in the current directory: a base name only,
    no control characters, not '.', '..' or hidden."""
    if name:
        name = name.replace("\\", "/").rsplit("/", 1)[-1]
        name = "".join(ch for ch in name if ord(ch) >= 32 and ord(ch) != 127).strip()
        name = name.lstrip(".")
    return name or fallback


class AdaptiveChunkSize:
    """The chunk size for a link: divided by `shrink` after a chunk is cut off (down to
    `floor`), doubled again after `grow_after` chunks in a row went through (up to `ceiling`,
    the chosen size).

    A link that drops every few MiB can never carry a chunk longer than that, and each cut
    wastes the chunk it interrupts: smaller chunks then cost fewer bytes on the wire, larger
    ones fewer requests on a good link. The defaults keep the bytes on the wire within about
    1.2x of the file's on links that drop every 1 to 64 MiB (bench/links.py measures it).
    Thread-safe: parallel senders share one link."""

    def __init__(self, ceiling: int, floor: int = 128 * KiB, shrink: int = 4, grow_after: int = 16) -> None:
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.shrink = shrink
        self.grow_after = grow_after
        self.current = ceiling
        self.successes = 0  # chunks in a row that went through
        self.failures = 0  # attempts in a row that did not (any progress resets it)
        self._lock = threading.Lock()

    def slice(self, start: int, end: int) -> int:
        """The end (inclusive) of the next chunk of [start, end]: at most `current` bytes, cut on
        the grid of multiples of `current`, so chunks of one size line up across runs."""
        size = self.current
        return min(end, (start // size + 1) * size - 1)

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0
            self.successes += 1
            if self.successes >= self.grow_after and self.current < self.ceiling:
                self.current = min(self.ceiling, self.current * 2)
                self.successes = 0

    def cut(self) -> int:
        """A chunk was cut off: shrink. Returns how many attempts in a row have now failed."""
        with self._lock:
            self.successes = 0
            self.failures += 1
            self.current = max(self.floor, self.current // self.shrink)
            return self.failures

    def failed(self) -> int:
        """An attempt failed for another reason (5xx, 429): no shrinking, only counted."""
        with self._lock:
            self.successes = 0
            self.failures += 1
            return self.failures

    def limit(self, max_bytes: int) -> None:
        """The server takes chunks of at most `max_bytes`."""
        with self._lock:
            self.ceiling = max(1, min(self.ceiling, max_bytes))
            self.floor = min(self.floor, self.ceiling)
            self.current = min(self.current, self.ceiling)
