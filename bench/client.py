"""The one client loop every server is measured with.

A raw keep-alive `http.client` connection; request bodies are sent straight from memory
(`memoryview` slices of one pre-generated random buffer, CRC-32s computed before the clock
starts), so the client does one kernel copy per byte and nothing else. The same `request`
function sends our chunks, tus PATCHes and the nginx sink's bodies: only the headers differ.
Downloads read into one reused buffer (`readinto`), again the same loop for every server.
"""

from __future__ import annotations

import http.client
import itertools
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from core.chunk_header import encode_header

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class Http:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, base_url: str, timeout: float = 300.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, headers: dict[str, str], parts=()) -> tuple[int, dict, bytes]:
        conn = self.conn
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(sum(len(p) for p in parts)))
        conn.endheaders()
        for part in parts:
            conn.sock.sendall(part)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def download(
        self, path: str, headers: dict[str, str], buffer: memoryview, expect: memoryview | None = None
    ) -> tuple[int, int]:
        """GET `path`, reading the body into `buffer` over and over; returns (status, bytes).

        With `expect` (the bytes the body should start with), the start of the first block read
        is compared with it (at most 64 KiB: ~50 us per response); a mismatch gives status -1."""
        conn = self.conn
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        total = 0
        n = response.readinto(buffer)
        k = min(n, 64 * KiB)
        mismatch = expect is not None and buffer[:k] != expect[:k]
        while n:
            total += n
            n = response.readinto(buffer)
        return (-1 if mismatch else response.status), total

    def close(self) -> None:
        self.conn.close()


class Payload:
    """A pool of random bytes; a file of any size is the pool repeated. CRCs are cached."""

    def __init__(self, size: int, seed: int = 20240601) -> None:
        self.size = size
        rng = random.Random(seed)
        block = 16 * MiB
        self.data = b"".join(rng.randbytes(min(block, size - i)) for i in range(0, size, block))
        self.view = memoryview(self.data)
        self._crc: dict[tuple[int, int], int] = {}

    def piece(self, start: int, length: int) -> memoryview:
        offset = start % self.size
        assert offset + length <= self.size, "chunk sizes must divide the pool size"
        return self.view[offset : offset + length]

    def crc(self, start: int, length: int) -> int:
        key = (start % self.size, length)
        if key not in self._crc:
            self._crc[key] = zlib.crc32(self.piece(start, length))
        return self._crc[key]

    def prepare(self, total: int, chunk: int) -> None:
        """Compute every CRC the upload will need, before any clock starts."""
        for start in range(0, total, chunk):
            self.crc(start, min(chunk, total - start))


def chunk_ranges(total: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, total) - 1) for s in range(0, total, chunk)]


@dataclass
class UploadResult:
    bytes: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / 1e6


class Target:
    """How one server wants a file's chunks: the same `Http.request`, different headers."""

    name = "?"

    def begin(self, http: Http, file_id: str, total: int) -> object:
        return None

    def send(self, http: Http, ctx: object, file_id: str, start: int, end: int, total: int, payload: Payload) -> bytes:
        raise NotImplementedError


class OursTarget(Target):
    """POST /upload/{id}: Content-Range, the 12-byte chunk header, the payload."""

    name = "ours"

    def __init__(self, token: str, path: str = "/upload/", expect: tuple[int, ...] = (200,)) -> None:
        self.auth = f"Bearer {token}"
        self.path = path
        self.expect = expect

    def send(self, http, ctx, file_id, start, end, total, payload):
        length = end - start + 1
        head = encode_header(start, end, payload.crc(start, length))
        status, _, body = http.request(
            "POST",
            self.path + file_id,
            {
                "Authorization": self.auth,
                "Content-Range": f"bytes {start}-{end}/{total}",
                "Content-Type": "application/octet-stream",
            },
            (head, payload.piece(start, length)),
        )
        if status not in self.expect:
            raise RuntimeError(f"{self.name}: chunk {start}-{end} answered {status}: {body[:300]!r}")
        return body


class SinkTarget(OursTarget):
    """Exactly our requests, sent to nginx's sink location (reads the body, answers 204)."""

    name = "nginx-sink"

    def __init__(self) -> None:
        super().__init__("unused", path="/sink/", expect=(204,))


class TusTarget(Target):
    """tus 1.0: POST /files (creation) once, then PATCH with Upload-Offset per chunk."""

    name = "tus"

    def begin(self, http, file_id, total):
        status, headers, body = http.request(
            "POST",
            "/files",
            {
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(total),
            },
        )
        if status != 201:
            raise RuntimeError(f"tus creation answered {status}: {body[:300]!r}")
        return urlsplit(headers["location"]).path

    def send(self, http, ctx, file_id, start, end, total, payload):
        status, headers, body = http.request(
            "PATCH",
            ctx,
            {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": str(start),
                "Content-Type": "application/offset+octet-stream",
            },
            (payload.piece(start, end - start + 1),),
        )
        if status != 204 or int(headers["upload-offset"]) != end + 1:
            raise RuntimeError(f"tus PATCH at {start} answered {status} {headers}: {body[:300]!r}")
        return body


def upload(
    base_url: str,
    target: Target,
    file_id: str,
    total: int,
    chunk: int,
    payload: Payload,
    connections: int = 1,
    http_pool: list[Http] | None = None,
) -> UploadResult:
    """One file, `connections` keep-alive connections taking chunks in order from a shared counter.

    Timed from the first request to the last answer; the connections are opened (TCP
    handshake) before the clock starts."""
    ranges = chunk_ranges(total, chunk)
    payload.prepare(total, chunk)
    https = http_pool or [Http(base_url) for _ in range(connections)]
    for h in https:
        if h.conn.sock is None:
            h.conn.connect()
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[BaseException] = []
    started = time.perf_counter()
    ctx = target.begin(https[0], file_id, total)

    def run(h: Http) -> None:
        try:
            while True:
                i = next(counter)
                if i >= len(ranges) or errors:
                    return
                s, e = ranges[i]
                t0 = time.perf_counter()
                target.send(h, ctx, file_id, s, e, total, payload)
                latencies.append(time.perf_counter() - t0)
        except BaseException as exc:
            errors.append(exc)

    if connections == 1:
        run(https[0])
    else:
        threads = [threading.Thread(target=run, args=(h,)) for h in https]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = time.perf_counter() - started
    if http_pool is None:
        for h in https:
            h.close()
    if errors:
        raise errors[0]
    return UploadResult(total, seconds, latencies)


def upload_many(
    base_url: str,
    target: Target,
    file_ids: list[str],
    total: int,
    chunk: int,
    payload: Payload,
    rate: float | None = None,
) -> UploadResult:
    """Several files at once, one connection (and thread) each; all chunk latencies. With
    `rate`, each sends that many chunks a second (a chunk that took longer is followed at
    once), their starts spread over one period: a server that is not saturated shows each
    chunk's own latency."""
    payload.prepare(total, chunk)
    https = [Http(base_url) for _ in file_ids]
    for h in https:
        h.conn.connect()
    latencies: list[float] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(file_ids) + 1)

    def run(h: Http, file_id: str, k: int) -> None:
        try:
            barrier.wait()
            ctx = target.begin(h, file_id, total)
            next_at = time.perf_counter() + (k / len(file_ids) / rate if rate else 0.0)
            for s, e in chunk_ranges(total, chunk):
                if rate:
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                t0 = time.perf_counter()
                target.send(h, ctx, file_id, s, e, total, payload)
                latencies.append(time.perf_counter() - t0)
                if rate:
                    next_at = max(next_at + 1 / rate, time.perf_counter())
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(h, f, k)) for k, (h, f) in enumerate(zip(https, file_ids, strict=True))
    ]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    for h in https:
        h.close()
    if errors:
        raise errors[0]
    return UploadResult(total * len(file_ids), seconds, latencies)
