"""Uploads: hash the file (or find its hash in the journal), ask the server what it misses,
send the missing ranges in chunks over N connections, wait until the server verified it.

The chunk size follows the link (client.units.AdaptiveChunkSize); a chunk that fails is
retried as the client's RetryPolicy says, or goes back in the queue to be cut again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from client.errors import (
    ApiError,
    ClientError,
    ConflictError,
    LocalFileChanged,
    NotCompleteError,
    NotFoundError,
    TransferFailed,
    UnavailableError,
    UsageError,
)
from client.progress import Task
from client.transport import api_error, error_token
from client.units import AdaptiveChunkSize, MiB, backoff_delay, check_file_id, derive_file_id, format_size

if TYPE_CHECKING:
    from client.api import Client

DEFAULT_CHUNK_SIZE = 8 * MiB
DEFAULT_MIN_CHUNK_SIZE = 128 * 1024  # chunks shrink no further on a link that keeps dropping
HEADER_SIZE = 12
_SEND_PIECE = 64 * 1024
_READ_BLOCK = 1 * MiB
_MAX_NAME_BYTES = 1024


def encode_header(start: int, end: int, crc32: int) -> bytes:
    """The 12-byte chunk header (CONTRACT 4): START, END (inclusive) mod 2^32 and the CRC-32, big-endian."""
    mod = 1 << 32
    return (start % mod).to_bytes(4, "big") + (end % mod).to_bytes(4, "big") + (crc32 & 0xFFFFFFFF).to_bytes(4, "big")


def encoded_file_name(path: str) -> str:
    """`X-File-Name`: the base name, percent-encoded UTF-8 (control characters dropped, at most 1 KiB)."""
    name = os.path.basename(path)
    name = os.fsencode(name).decode("utf-8", "replace")
    name = "".join(ch for ch in name if ord(ch) >= 32 and ord(ch) != 127)
    raw = name.encode("utf-8")[:_MAX_NAME_BYTES].decode("utf-8", "ignore")
    return quote(raw, safe="")


def intersect(start: int, end: int, ranges) -> list[tuple[int, int]]:
    """The parts of [start, end] inside the inclusive `ranges`."""
    out = []
    for s, e in ranges:
        lo, hi = max(start, int(s)), min(end, int(e))
        if lo <= hi:
            out.append((lo, hi))
    return out


@dataclass
class UploadResult:
    file_id: str
    sha256: str
    size: int
    bytes_sent: int = 0  # payload bytes put on the wire, retries included
    chunks_sent: int = 0  # chunks acknowledged with 200
    retries: int = 0
    resumed_from: int = 0  # bytes the server already had when this run began
    already_complete: bool = False


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    bytes_sent: int = 0
    chunks_sent: int = 0
    retries: int = 0

    def add(self, sent: int = 0, chunks: int = 0, retries: int = 0) -> None:
        with self.lock:
            self.bytes_sent += sent
            self.chunks_sent += chunks
            self.retries += retries


@dataclass
class _Piece:
    """A range still to send, with its retry schedule."""

    start: int
    end: int
    ready_at: float = 0.0
    tries: int = 0
    first_overlap: float = 0.0


@dataclass
class _Job:
    """One upload run: what each of its chunks needs."""

    path: str
    st: os.stat_result
    file_id: str
    headers: dict[str, str]  # X-File-Name, X-File-SHA256, Content-Type
    link: AdaptiveChunkSize
    task: Task
    counters: _Counters
    fd: int = -1  # open while a round of sending runs
    stop: threading.Event = field(default_factory=threading.Event)


class _Stop(Exception):
    """Internal: stop sending (the upload is no longer `uploading`)."""


_RETRY = object()  # a refused chunk to send again in place


class Uploader:
    """Uploads for one Client (its transport, retry policy, reporter and cache)."""

    def __init__(self, api: Client, overlap_timeout: float, min_chunk_size: int) -> None:
        self.api = api
        self.transport = api.transport
        self.policy = api.policy
        self.reporter = api.reporter
        self.states = api.states
        self.hashes = api.hashes
        self.overlap_timeout = overlap_timeout
        self.min_chunk_size = min_chunk_size

    @property
    def _who(self) -> tuple[str, str]:
        """(url, user name): what the upload states in the cache are filed under."""
        return self.transport.url, self.transport.username or ""

    def upload_id(self, path: str | os.PathLike, file_id: str | None = None) -> str:
        """The id `upload(path, file_id)` uses: `file_id`, else one derived from the file's path,
        size and mtime. Known before any byte is read, so it can be shown (and resumed) at once."""
        path = os.fspath(path)
        if file_id is None:
            st = _regular_file(path)
            file_id = derive_file_id(path, st.st_size, st.st_mtime_ns)
        check_file_id(file_id)
        return file_id

    def _local_sha256(self, path: str, st: os.stat_result, file_id: str) -> str:
        """The file's SHA-256: from the journal when the file is unchanged since it was hashed,
        else read (and recorded) now."""
        sha = self.hashes.get(path, st)
        if sha is not None:
            return sha
        hashed_at = time.time_ns()
        sha = self.sha256_file(path, st.st_size, f"sha256 {os.path.basename(path)}")
        if self._changed(path, st):
            raise LocalFileChanged(f"{path} changed while its SHA-256 was computed; run again when it is stable")
        self.hashes.put(path, st, sha, hashed_at, file_id)
        return sha

    def sha256_file(self, path: str, size: int, description: str = "sha256") -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as handle, self.reporter.task(description, size) as task:
            while True:
                block = handle.read(_READ_BLOCK)
                if not block:
                    break
                digest.update(block)
                task.advance(len(block))
        return digest.hexdigest()

    def upload(
        self,
        path: str | os.PathLike,
        file_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        parallel: int = 1,
        wait: bool = True,
        wait_timeout: float | None = None,
    ) -> UploadResult:
        """Upload (or resume uploading) a file; returns once the server verified it (`wait`)."""
        path = os.fspath(path)
        if chunk_size < 1:
            raise UsageError("chunk size must be at least 1 byte")
        if parallel < 1:
            raise UsageError("--parallel must be at least 1")
        st = _regular_file(path)
        size = st.st_size
        file_id = self.upload_id(path, file_id)
        name = os.path.basename(path)

        sha = self._local_sha256(path, st, file_id)

        status = self.api.status_or_none(file_id)
        known = self.states.get(*self._who, file_id)
        if status is not None:
            self._check_resumable(path, file_id, size, sha, status, known)
            if status["state"] == "complete":
                self.states.forget(*self._who, file_id)
                self.reporter.message(f"{file_id} is already complete on the server")
                return UploadResult(file_id, sha, size, resumed_from=size, already_complete=True)
        self.states.put(
            *self._who,
            file_id,
            path=os.path.abspath(path),
            size=size,
            mtime_ns=st.st_mtime_ns,
            sha256=sha,
            started_at=time.time(),
        )

        counters = _Counters()
        resumed_from = status["received_bytes"] if status else 0
        if resumed_from:
            self.reporter.message(
                f"resuming {file_id}: the server has {format_size(resumed_from)} of {format_size(size)}"
            )
        with self.reporter.task(f"upload {name}", size, completed=resumed_from) as task:
            missing = (
                status["missing_ranges"]
                if status and status["state"] == "uploading"
                else ([] if status else [[0, size - 1]])
            )
            rounds_without_progress = 0
            headers = {
                "X-File-Name": encoded_file_name(path),
                "X-File-SHA256": sha,
                "Content-Type": "application/octet-stream",
            }
            job = _Job(
                path, st, file_id, headers, AdaptiveChunkSize(chunk_size, floor=self.min_chunk_size), task, counters
            )
            while missing:
                before = sum(e - s + 1 for s, e in missing)
                self._send_ranges(job, missing, parallel)
                status = self.api.status(file_id)
                if status["state"] != "uploading":
                    break
                missing = status["missing_ranges"]
                after = sum(e - s + 1 for s, e in missing)
                rounds_without_progress = rounds_without_progress + 1 if after >= before else 0
                if rounds_without_progress >= 3:
                    raise UnavailableError(f"the server keeps missing {format_size(after)} of {file_id}; giving up")
        if self._changed(path, st):
            raise LocalFileChanged(
                f"{path} changed during the upload; the server will not accept the "
                f"mixture. Upload it again (a new default file id follows the change)"
            )

        final = self.wait_complete(file_id, timeout=wait_timeout) if wait else self.api.status(file_id)
        result = UploadResult(
            file_id, sha, size, counters.bytes_sent, counters.chunks_sent, counters.retries, resumed_from
        )
        if not wait:
            return result
        if final["state"] == "failed":
            raise TransferFailed(f"the server failed upload {file_id}: {final.get('error') or 'unknown error'}")
        if final.get("sha256") != sha:
            raise TransferFailed(
                f"the server's SHA-256 of {file_id} is {final.get('sha256')}, the local file's is {sha}"
            )
        self.states.forget(*self._who, file_id)
        return result

    @staticmethod
    def _changed(path: str, st: os.stat_result) -> bool:
        try:
            now = os.stat(path)
        except OSError:
            return True
        return (now.st_size, now.st_mtime_ns, now.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino)

    def _check_resumable(self, path: str, file_id: str, size: int, sha: str, status: dict, known: dict | None) -> None:
        """Refuse to continue an upload with bytes of a different file."""
        if known is not None and (known.get("size") != size or known.get("sha256") != sha):
            raise LocalFileChanged(
                f"{path} changed since the upload of {file_id} began (then {known.get('size')} bytes, "
                f"sha256 {str(known.get('sha256'))[:16]}..., now {size} bytes, sha256 {sha[:16]}...): "
                f"upload it under another --file-id"
            )
        if status["total_bytes"] != size:
            raise ConflictError(
                f"the server's upload {file_id} is {status['total_bytes']} bytes but {path} is {size} bytes: "
                f"the file changed since the upload began, or the id names another file; use another --file-id"
            )
        if status["state"] == "failed":
            raise TransferFailed(
                f"upload {file_id} failed on the server: {status.get('error') or 'unknown error'}; "
                f"upload the file again under another --file-id"
            )
        if status["state"] == "complete" and status.get("sha256") != sha:
            raise ConflictError(
                f"the server already holds a different complete file under {file_id} "
                f"(sha256 {status.get('sha256')}); use another --file-id"
            )

    def _send_ranges(self, job: _Job, missing, parallel: int) -> None:
        """Send the `missing` ranges over `parallel` connections (one thread and one pool each),
        each cut into chunks of the link's current size when a sender takes it.

        A piece that the server says is being written by another transfer (409 overlap while
        still missing) goes back in the queue for later, so the other pieces keep moving."""
        pending: deque[_Piece] = deque(_Piece(int(s), int(e)) for s, e in missing)
        cond = threading.Condition()
        busy = [0]
        stop = job.stop = threading.Event()
        failures: list[BaseException] = []
        link = job.link
        fd = job.fd = os.open(job.path, os.O_RDONLY)

        def take() -> _Piece | None:
            with cond:
                while not stop.is_set():
                    if not pending and not busy[0]:
                        return None
                    now = time.monotonic()
                    ready = next((p for p in pending if p.ready_at <= now), None)
                    if ready is not None:
                        busy[0] += 1
                        end = link.slice(ready.start, ready.end)
                        if end == ready.end:
                            pending.remove(ready)
                            return ready
                        piece = dataclasses.replace(ready, end=end)
                        ready.start = end + 1
                        return piece
                    soonest = min((p.ready_at for p in pending), default=now + 0.5)
                    cond.wait(max(0.01, min(0.5, soonest - now)))
                return None

        def worker() -> None:
            while (piece := take()) is not None:
                try:
                    outcome = self._send_chunk(job, piece)
                except _Stop:
                    stop.set()
                    outcome = None
                except BaseException as exc:
                    failures.append(exc)
                    stop.set()
                    outcome = None
                with cond:
                    busy[0] -= 1
                    if isinstance(outcome, list):
                        pending.extendleft(reversed([_Piece(s, e) for s, e in outcome]))
                    elif isinstance(outcome, _Piece):
                        pending.append(outcome)
                    cond.notify_all()

        threads = [threading.Thread(target=worker, name=f"ft-upload-{i}", daemon=True) for i in range(parallel)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except BaseException:
            stop.set()
            with cond:
                cond.notify_all()
            raise
        finally:
            if not any(t.is_alive() for t in threads):
                os.close(fd)
        if failures:
            raise failures[0]

    def _send_chunk(self, job: _Job, piece: _Piece) -> list[tuple[int, int]] | _Piece | None:
        """POST one chunk. Returns None when the range is stored, the ranges of it still to send
        (after a cut connection, a partial overlap or a 413: they are cut again at the link's
        size), or the piece itself to try later (it is being written by another transfer).
        Retries 5xx, 429 and damaged chunks in place. Raises _Stop when the upload is no longer
        `uploading`."""
        path, file_id, link, counters, task = job.path, job.file_id, job.link, job.counters, job.task
        start, end = piece.start, piece.end
        data = os.pread(job.fd, end - start + 1, start)
        if len(data) != end - start + 1 or self._changed(path, job.st):
            raise LocalFileChanged(f"{path} changed during the upload; upload it again")
        refreshed = False
        # A piece that was being written by another transfer is probed with its first byte before
        # the rest is sent: the server answers 409 only after the whole body went over the wire.
        probe = piece.tries > 0 and end > start
        if piece.tries > 0:
            gaps = self._still_missing(file_id, start, end)
            if gaps != [(start, end)]:
                return gaps

        while True:
            if job.stop.is_set():
                raise _Stop()
            stop_at = start if probe else end
            payload = memoryview(data)[: stop_at - start + 1]
            response, sent, exc = self._post_chunk(job, start, stop_at, payload)
            if exc is not None:
                # Cut off: the server keeps nothing of this chunk (perhaps all of it, when only
                # the answer was lost). Shrink the chunks, ask what is missing, send that.
                task.advance(-sent)
                counters.add(retries=1)
                self._pause_after(link.cut(), exc, first_is_free=True)
                return self._still_missing(file_id, start, end)
            if response.status_code == 200:
                counters.add(chunks=1)
                link.succeeded()
                if stop_at == end:
                    return None
                # The probe went through: the range is free, send the rest.
                probe = False
                data = data[stop_at - start + 1 :]
                start = piece.start = stop_at + 1
                continue
            task.advance(-sent)
            error = api_error(response)
            if response.status_code == 401 and not refreshed:
                refreshed = True
                self.transport.refresh(error_token(response))
                continue
            outcome = self._refused(job, piece, stop_at - start + 1, response, error)
            if outcome is not _RETRY:
                return outcome
            counters.add(retries=1)
            self._pause_after(link.failed(), error, retry_after=error.retry_after)

    def _refused(
        self, job: _Job, piece: _Piece, length: int, response: httpx.Response, error: ApiError
    ) -> list[tuple[int, int]] | _Piece | object | None:
        """What to do about `length` bytes of `piece` that the server refused: an outcome for
        the queue (as `_send_chunk` returns), _RETRY to send them again in place, or an exception."""
        file_id, start, end = job.file_id, piece.start, piece.end
        if error.code == "overlap":
            # Being written by another transfer (perhaps our own attempt that was cut and that the
            # server has not given up yet): try again later, after the other pieces.
            now = time.monotonic()
            piece.first_overlap = piece.first_overlap or now
            if now - piece.first_overlap > self.overlap_timeout:
                raise UnavailableError(
                    f"bytes {start}-{end} of {file_id} stayed claimed by another transfer "
                    f"for {self.overlap_timeout:.0f} s; try again later"
                )
            job.counters.add(retries=1)
            piece.tries += 1
            piece.ready_at = now + backoff_delay(min(piece.tries, 6), self.policy.base, 5.0, self.policy.rng)
            return piece
        if error.code == "already_complete":
            raise _Stop()
        if error.code == "upload_failed":
            raise TransferFailed(f"the server failed upload {file_id}: {error.body.get('error') or error.detail}")
        if error.code == "total_mismatch":
            raise ConflictError(
                f"the server's upload {file_id} is {error.body.get('total_bytes')} bytes, "
                f"{job.path} is {job.st.st_size}: use another --file-id"
            )
        if error.code == "not_found":
            raise NotFoundError(f"not found: upload {file_id!r} belongs to another user; use another --file-id")
        if error.code == "chunk_too_large":
            limit = int(error.body.get("max_chunk_bytes") or 0)
            if 0 < limit < length:
                self.reporter.message(f"the server takes chunks of at most {format_size(limit)}; splitting")
                job.link.limit(limit)
                return [(start, end)]
            raise error
        damaged = error.code in ("checksum_mismatch", "length_mismatch")  # in transit
        if not (damaged or self.policy.retryable(response)):
            raise error
        return _RETRY

    def _pause_after(
        self, failures: int, error: Exception, retry_after: float | None = None, first_is_free: bool = False
    ) -> None:
        """Wait before the next attempt, or give up after `policy.retries` failures in a row. The
        first retry after a cut goes at once: a link that just carried chunks is likely up."""
        if failures > self.policy.retries:
            if isinstance(error, ClientError):
                raise error
            raise self.transport.unreachable(error) from None
        if first_is_free and failures == 1 and retry_after is None:
            return
        self.policy.wait(failures - 1, retry_after)

    def _still_missing(self, file_id: str, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end] the server still misses. Before its first chunk is stored an
        upload does not exist (404): then all of it is missing and sending starts the upload."""
        try:
            status = self.api.status(file_id)
        except NotFoundError:
            return [(start, end)]
        except (UnavailableError, ApiError):
            return [(start, end)]  # unknown: send it all (an exact repeat is acknowledged again)
        if status["state"] != "uploading":
            raise _Stop()
        return intersect(start, end, status["missing_ranges"])

    def _post_chunk(
        self, job: _Job, start: int, end: int, payload: memoryview
    ) -> tuple[httpx.Response | None, int, httpx.TransportError | None]:
        """One `POST /upload`: (answer, payload bytes put on the wire, transport error)."""
        length = end - start + 1
        header = encode_header(start, end, zlib.crc32(payload))
        task, counters = job.task, job.counters
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            yield header
            for offset in range(0, length, _SEND_PIECE):
                piece = payload[offset : offset + _SEND_PIECE]
                yield bytes(piece)
                sent += len(piece)
                task.advance(len(piece))
                counters.add(sent=len(piece))

        headers = {
            **job.headers,
            "Content-Range": f"bytes {start}-{end}/{job.st.st_size}",
            "Content-Length": str(HEADER_SIZE + length),
        }
        try:
            response = self.transport.send("POST", f"/upload/{quote(job.file_id)}", content=body(), headers=headers)
        except httpx.TransportError as exc:
            return None, sent, exc
        return response, sent, None

    def wait_complete(self, file_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Poll `GET /status` (with backoff) until the upload is `complete` or `failed`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        announced = False
        while True:
            status = self.api.status(file_id)
            if status["state"] in ("complete", "failed"):
                return status
            if status["state"] == "uploading" and status.get("missing_ranges"):
                raise NotCompleteError(
                    f"{file_id} is still missing {len(status['missing_ranges'])} range(s); "
                    f"run the upload again to send them"
                )
            if not announced:
                self.reporter.message(f"waiting for the server to verify {file_id}")
                announced = True
            if deadline is not None and time.monotonic() >= deadline:
                raise NotCompleteError(f"{file_id} is still {status['state']} after {timeout} s")
            time.sleep(delay)
            delay = min(2.0, delay * 1.6)


def _regular_file(path: str) -> os.stat_result:
    """The stat of a non-empty regular file, else a UsageError that says what is wrong."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if not os.path.isfile(path):
        raise UsageError(f"{path} is not a regular file")
    if st.st_size == 0:
        raise UsageError(f"{path} is empty: the server stores files of at least 1 byte")
    return st
