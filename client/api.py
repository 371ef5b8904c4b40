"""The client library: `Client(url, username, password).upload(path)` / `.download(file_id)` / `.status(id)`.

It speaks CONTRACT sections 3-6: bearer tokens from `POST /token` (cached on disk, renewed when
they expire or are refused), chunked resumable uploads (`POST /upload/{id}` with the 12-byte
header), `GET /status/{id}`, and range downloads with `If-Range`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from client.errors import (
    ApiError,
    AuthError,
    ClientError,
    ConflictError,
    LocalFileChanged,
    NotCompleteError,
    NotFoundError,
    TransferFailed,
    UnavailableError,
    UsageError,
)
from client.progress import Reporter, Task
from client.tokens import HashJournal, TokenCache, UploadStateStore, read_json, renew_at, write_private_json
from client.units import (
    AdaptiveChunkSize,
    MiB,
    backoff_delay,
    derive_file_id,
    etag_sha256,
    format_size,
    is_valid_file_id,
    parse_retry_after,
    retry_delay,
    safe_local_name,
)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CHUNK_SIZE = 8 * MiB
DEFAULT_MIN_CHUNK_SIZE = 128 * 1024  # chunks shrink no further on a link that keeps dropping
HEADER_SIZE = 12
_SEND_PIECE = 64 * 1024
_READ_BLOCK = 1 * MiB
_MAX_NAME_BYTES = 1024
_RETRYABLE_STATUS = {500, 502, 503, 504}


def encode_header(start: int, end: int, crc32: int) -> bytes:
    """The 12-byte chunk header (CONTRACT 4): START, END (inclusive) mod 2^32 and the CRC-32, big-endian."""
    mod = 1 << 32
    return (start % mod).to_bytes(4, "big") + (end % mod).to_bytes(4, "big") + (crc32 & 0xFFFFFFFF).to_bytes(4, "big")


def api_error(response: httpx.Response) -> ApiError:
    """The contract's `{"code", "detail", ...}` error body, or whatever the answer says."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    code = str(body.get("code") or "")
    if not code:
        code = {401: "not_authenticated", 403: "forbidden", 404: "not_found", 429: "too_many_attempts",
                507: "insufficient_storage", 503: "unavailable"}.get(response.status_code, "")
    detail = str(body.get("detail") or "") or (response.text[:200] if not body else "")
    return ApiError(response.status_code, code, detail, body, parse_retry_after(response.headers.get("retry-after")))


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
    bytes_sent: int = 0          # payload bytes put on the wire, retries included
    chunks_sent: int = 0         # chunks acknowledged with 200
    retries: int = 0
    resumed_from: int = 0        # bytes the server already had when this run began
    already_complete: bool = False


@dataclass
class DownloadResult:
    file_id: str
    path: Path
    sha256: str
    size: int
    bytes_received: int = 0
    resumed_from: int = 0
    retries: int = 0


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


class _Stop(Exception):
    """Internal: stop sending (the upload is no longer `uploading`)."""


class Client:
    """A File Transfer API client. Thread-safe; one HTTP connection pool per thread.

    url, username and password default to FT_URL, FT_USERNAME and FT_PASSWORD. The password is
    only needed when no valid token is cached; `password_prompt` is asked for it when unset.
    """

    def __init__(
        self,
        url: str | None = None,
        username: str | None = None,
        password: str | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        timeout: float = 60.0,
        retries: int = 10,
        reporter: Reporter | None = None,
        password_prompt: Callable[[], str] | None = None,
        backoff_base: float = 0.25,
        backoff_cap: float = 15.0,
        overlap_timeout: float = 300.0,
        min_chunk_size: int = DEFAULT_MIN_CHUNK_SIZE,
        max_retry_after: float = 60.0,
    ) -> None:
        self.url = (url or os.environ.get("FT_URL") or DEFAULT_URL).rstrip("/")
        self.tokens = TokenCache(Path(cache_dir) if cache_dir is not None else None)
        self.states = UploadStateStore(self.tokens.root)
        self.hashes = HashJournal(self.tokens.root)
        self.username = username or os.environ.get("FT_USERNAME") or self.tokens.last_user(self.url)
        self._password = password if password is not None else os.environ.get("FT_PASSWORD")
        self._password_prompt = password_prompt
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.overlap_timeout = overlap_timeout
        self.min_chunk_size = min_chunk_size
        self.max_retry_after = max_retry_after
        self.reporter = reporter or Reporter()
        self._token: tuple[str, float] | None = None
        self._auth_lock = threading.Lock()
        self._local = threading.local()
        self._pools: list[httpx.Client] = []
        self._pools_lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None
        self._rng = random.Random()

    # --- plumbing ------------------------------------------------------------------
    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._pools_lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.close()

    def _http(self) -> httpx.Client:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = httpx.Client(timeout=self.timeout, headers={"User-Agent": "ft-client/1"}, verify=self._tls())
            self._local.pool = pool
            with self._pools_lock:
                self._pools.append(pool)
        return pool

    def _tls(self) -> ssl.SSLContext | bool:
        """One TLS context for all pools: loading the CA certificates takes ~0.2 s each time,
        which every parallel sender paid before its first byte. Plain HTTP needs none."""
        if not self.url.startswith("https:"):
            return False  # no TLS on this URL (redirects are not followed), so nothing to verify
        with self._pools_lock:
            if self._tls_context is None:
                self._tls_context = ssl.create_default_context()
            return self._tls_context

    def _sleep(self, attempt: int, retry_after: float | None = None) -> None:
        """Wait before retry number `attempt`: as long as Retry-After asks (capped), else backoff."""
        time.sleep(retry_delay(attempt, retry_after, self.backoff_base, self.backoff_cap, self.max_retry_after,
                               self._rng))

    def _unreachable(self, exc: Exception) -> UnavailableError:
        return UnavailableError(f"cannot reach {self.url} after {self.retries} retries: {exc.__class__.__name__}: {exc}")

    # --- auth ----------------------------------------------------------------------
    def _password_now(self) -> str:
        if self._password is None and self._password_prompt is not None:
            self._password = self._password_prompt()
        if not self._password:
            raise AuthError(f"no password for user {self.username!r}: set FT_PASSWORD (or run `login` on a terminal)")
        return self._password

    def login(self) -> str:
        """Get a fresh token from `POST /token` and cache it (0600)."""
        if not self.username:
            raise AuthError("no user name: set FT_USERNAME or pass --user")
        password = self._password_now()
        attempt = 0
        while True:
            try:
                response = self._http().post(f"{self.url}/token",
                                             json={"username": self.username, "password": password})
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise self._unreachable(exc) from None
                self._sleep(attempt)
                attempt += 1
                continue
            if response.status_code in _RETRYABLE_STATUS and attempt < self.retries:
                self._sleep(attempt, parse_retry_after(response.headers.get("retry-after")))
                attempt += 1
                continue
            break
        if response.status_code != 200:
            error = api_error(response)
            if error.code == "invalid_credentials":
                error.message = f"invalid credentials for user {self.username!r} at {self.url}"
                error.args = (error.message,)
            raise error
        body = response.json()
        token, expires_in = body["access_token"], float(body.get("expires_in", 3600))
        self.tokens.put(self.url, self.username, token, expires_in)
        self._token = (token, renew_at(time.time() + expires_in, expires_in))
        return token

    def _bearer(self) -> str:
        """The token to send: the one in memory, else the cached one, else a fresh login. Each is
        used until shortly before it expires."""
        with self._auth_lock:
            if self._token is not None and time.time() < self._token[1]:
                return self._token[0]
            if not self.username:
                raise AuthError("no user name: set FT_USERNAME or pass --user")
            cached = self.tokens.entry(self.url, self.username)
            if cached is not None:
                self._token = cached
                return cached[0]
            return self.login()

    def _refresh(self, stale: str) -> None:
        """The server refused `stale` (401): drop it and log in again, once for all threads."""
        with self._auth_lock:
            if self._token is not None and self._token[0] != stale:
                return  # another thread already renewed it
            self._token = None
            if self.username:
                self.tokens.forget(self.url, self.username)
            self.login()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An authenticated request, retried on connection errors, timeouts, 5xx and 429;
        logs in again once on a 401. Returns the final answer, whatever its status."""
        attempt, refreshed = 0, False
        extra_headers = kwargs.pop("headers", {})
        while True:
            token = self._bearer()
            headers = {**extra_headers, "Authorization": f"Bearer {token}"}
            try:
                response = self._http().request(method, f"{self.url}{path}", headers=headers, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise self._unreachable(exc) from None
                self._sleep(attempt)
                attempt += 1
                continue
            if response.status_code == 401 and not refreshed:
                refreshed = True
                self._refresh(token)
                continue
            if (response.status_code in _RETRYABLE_STATUS or response.status_code == 429) and attempt < self.retries:
                self._sleep(attempt, parse_retry_after(response.headers.get("retry-after")))
                attempt += 1
                continue
            return response

    # --- status --------------------------------------------------------------------
    def status(self, file_id: str) -> dict[str, Any]:
        """`GET /status/{file_id}`; raises NotFoundError for an unknown (or someone else's) id."""
        self._check_id(file_id)
        response = self._request("GET", f"/status/{quote(file_id)}")
        if response.status_code == 200:
            return response.json()
        error = api_error(response)
        if error.code == "not_found":
            raise NotFoundError(f"not found: no upload {file_id!r} for user {self.username!r} at {self.url}")
        raise error

    def delete(self, file_id: str) -> None:
        """`DELETE /upload/{file_id}`: cancel an upload or delete a complete file."""
        self._check_id(file_id)
        response = self._request("DELETE", f"/upload/{quote(file_id)}")
        if response.status_code == 204:
            return
        error = api_error(response)
        if error.code == "not_found":
            raise NotFoundError(f"not found: no upload {file_id!r} for user {self.username!r} at {self.url}")
        raise error

    def _status_or_none(self, file_id: str) -> dict[str, Any] | None:
        try:
            return self.status(file_id)
        except NotFoundError:
            return None

    @staticmethod
    def _check_id(file_id: str) -> None:
        if not is_valid_file_id(file_id):
            raise UsageError(f"invalid file id {file_id!r}: 1-128 characters of [A-Za-z0-9._-], not starting with '.'")

    # --- upload --------------------------------------------------------------------
    def upload_id(self, path: str | os.PathLike, file_id: str | None = None) -> str:
        """The id `upload(path, file_id)` uses: `file_id`, else one derived from the file's path,
        size and mtime. Known before any byte is read, so it can be shown (and resumed) at once."""
        path = os.fspath(path)
        if file_id is None:
            st = _regular_file(path)
            file_id = derive_file_id(path, st.st_size, st.st_mtime_ns)
        self._check_id(file_id)
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

        status = self._status_or_none(file_id)
        known = self.states.get(self.url, self.username or "", file_id)
        if status is not None:
            self._check_resumable(path, file_id, size, sha, status, known)
            if status["state"] == "complete":
                self.states.forget(self.url, self.username or "", file_id)
                self.reporter.message(f"{file_id} is already complete on the server")
                return UploadResult(file_id, sha, size, resumed_from=size, already_complete=True)
        self.states.put(self.url, self.username or "", file_id, path=os.path.abspath(path), size=size,
                        mtime_ns=st.st_mtime_ns, sha256=sha, started_at=time.time())

        counters = _Counters()
        resumed_from = status["received_bytes"] if status else 0
        if resumed_from:
            self.reporter.message(f"resuming {file_id}: the server has {format_size(resumed_from)} "
                                  f"of {format_size(size)}")
        with self.reporter.task(f"upload {name}", size, completed=resumed_from) as task:
            missing = status["missing_ranges"] if status and status["state"] == "uploading" else (
                [] if status else [[0, size - 1]])
            rounds_without_progress = 0
            link = AdaptiveChunkSize(chunk_size, floor=self.min_chunk_size)
            while missing:
                before = sum(e - s + 1 for s, e in missing)
                self._send_ranges(path, st, file_id, sha, missing, link, parallel, task, counters)
                status = self.status(file_id)
                if status["state"] != "uploading":
                    break
                missing = status["missing_ranges"]
                after = sum(e - s + 1 for s, e in missing)
                rounds_without_progress = rounds_without_progress + 1 if after >= before else 0
                if rounds_without_progress >= 3:
                    raise UnavailableError(f"the server keeps missing {format_size(after)} of {file_id}; giving up")
        if self._changed(path, st):
            raise LocalFileChanged(f"{path} changed during the upload; the server will not accept the "
                                   f"mixture. Upload it again (a new default file id follows the change)")

        final = self.wait_complete(file_id, timeout=wait_timeout) if wait else self.status(file_id)
        result = UploadResult(file_id, sha, size, counters.bytes_sent, counters.chunks_sent, counters.retries,
                              resumed_from)
        if not wait:
            return result
        if final["state"] == "failed":
            raise TransferFailed(f"the server failed upload {file_id}: {final.get('error') or 'unknown error'}")
        if final.get("sha256") != sha:
            raise TransferFailed(f"the server's SHA-256 of {file_id} is {final.get('sha256')}, "
                                 f"the local file's is {sha}")
        self.states.forget(self.url, self.username or "", file_id)
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
                f"upload it under another --file-id")
        if status["total_bytes"] != size:
            raise ConflictError(
                f"the server's upload {file_id} is {status['total_bytes']} bytes but {path} is {size} bytes: "
                f"the file changed since the upload began, or the id names another file; use another --file-id")
        if status["state"] == "failed":
            raise TransferFailed(f"upload {file_id} failed on the server: {status.get('error') or 'unknown error'}; "
                                 f"upload the file again under another --file-id")
        if status["state"] == "complete" and status.get("sha256") != sha:
            raise ConflictError(f"the server already holds a different complete file under {file_id} "
                                f"(sha256 {status.get('sha256')}); use another --file-id")

    def _send_ranges(self, path: str, st: os.stat_result, file_id: str, sha: str, missing, link: AdaptiveChunkSize,
                     parallel: int, task: Task, counters: _Counters) -> None:
        """Send the `missing` ranges over `parallel` connections (one thread and one pool each),
        each cut into chunks of the link's current size when a sender takes it.

        A piece that the server says is being written by another transfer (409 overlap while
        still missing) goes back in the queue for later, so the other pieces keep moving."""
        pending: deque[_Piece] = deque(_Piece(int(s), int(e)) for s, e in missing)
        cond = threading.Condition()
        busy = [0]
        stop = threading.Event()
        failures: list[BaseException] = []
        headers = {"X-File-Name": encoded_file_name(path), "X-File-SHA256": sha,
                   "Content-Type": "application/octet-stream"}
        fd = os.open(path, os.O_RDONLY)

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
                    outcome = self._send_chunk(fd, st, path, file_id, piece, headers, link, task, counters, stop)
                except _Stop:
                    stop.set()
                    outcome = None
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
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

    def _send_chunk(self, fd: int, st: os.stat_result, path: str, file_id: str, piece: _Piece,
                    headers: dict[str, str], link: AdaptiveChunkSize, task: Task, counters: _Counters,
                    stop: threading.Event) -> "list[tuple[int, int]] | _Piece | None":
        """POST one chunk. Returns None when the range is stored, the ranges of it still to send
        (after a cut connection, a partial overlap or a 413: they are cut again at the link's
        size), or the piece itself to try later (it is being written by another transfer).
        Retries 5xx, 429 and damaged chunks in place. Raises _Stop when the upload is no longer
        `uploading`."""
        start, end, total = piece.start, piece.end, st.st_size
        data = os.pread(fd, end - start + 1, start)
        if len(data) != end - start + 1 or self._changed(path, st):
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
            if stop.is_set():
                raise _Stop()
            stop_at = start if probe else end
            payload = memoryview(data)[: stop_at - start + 1]
            response, sent, exc = self._post_chunk(file_id, start, stop_at, payload, total, headers, task, counters)
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
                data = data[stop_at - start + 1:]
                start = piece.start = stop_at + 1
                continue
            task.advance(-sent)
            error = api_error(response)
            if response.status_code == 401 and not refreshed:
                refreshed = True
                self._refresh(error_token(response))
                continue
            if error.code == "overlap":
                # Being written by another transfer (perhaps our own attempt that was cut and that the
                # server has not given up yet): try again later, after the other pieces.
                now = time.monotonic()
                piece.first_overlap = piece.first_overlap or now
                if now - piece.first_overlap > self.overlap_timeout:
                    raise UnavailableError(f"bytes {start}-{end} of {file_id} stayed claimed by another transfer "
                                           f"for {self.overlap_timeout:.0f} s; try again later")
                counters.add(retries=1)
                piece.tries += 1
                piece.ready_at = now + backoff_delay(min(piece.tries, 6), self.backoff_base, 5.0, self._rng)
                return piece
            if error.code == "already_complete":
                raise _Stop()
            if error.code == "upload_failed":
                raise TransferFailed(f"the server failed upload {file_id}: {error.body.get('error') or error.detail}")
            if error.code == "total_mismatch":
                raise ConflictError(f"the server's upload {file_id} is {error.body.get('total_bytes')} bytes, "
                                    f"{path} is {total}: use another --file-id")
            if error.code == "not_found":
                raise NotFoundError(f"not found: upload {file_id!r} belongs to another user; use another --file-id")
            if error.code == "chunk_too_large":
                limit = int(error.body.get("max_chunk_bytes") or 0)
                if 0 < limit < stop_at - start + 1:
                    self.reporter.message(f"the server takes chunks of at most {format_size(limit)}; splitting")
                    link.limit(limit)
                    return [(start, end)]
                raise error
            retryable = (
                error.code in ("checksum_mismatch", "length_mismatch")  # damaged in transit
                or response.status_code in _RETRYABLE_STATUS
                or response.status_code == 429
            )
            if not retryable:
                raise error
            counters.add(retries=1)
            self._pause_after(link.failed(), error, retry_after=error.retry_after)

    def _pause_after(self, failures: int, error: Exception, retry_after: float | None = None,
                     first_is_free: bool = False) -> None:
        """Wait before the next attempt, or give up after `self.retries` failures in a row. The
        first retry after a cut goes at once: a link that just carried chunks is likely up."""
        if failures > self.retries:
            if isinstance(error, ClientError):
                raise error
            raise self._unreachable(error) from None
        if first_is_free and failures == 1 and retry_after is None:
            return
        self._sleep(failures - 1, retry_after)

    def _still_missing(self, file_id: str, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end] the server still misses. Before its first chunk is stored an
        upload does not exist (404): then all of it is missing and sending starts the upload."""
        try:
            status = self.status(file_id)
        except NotFoundError:
            return [(start, end)]
        except (UnavailableError, ApiError):
            return [(start, end)]  # unknown: send it all (an exact repeat is acknowledged again)
        if status["state"] != "uploading":
            raise _Stop()
        return intersect(start, end, status["missing_ranges"])

    def _post_chunk(self, file_id: str, start: int, end: int, payload: memoryview, total: int,
                    headers: dict[str, str], task: Task, counters: _Counters
                    ) -> tuple[httpx.Response | None, int, httpx.TransportError | None]:
        """One `POST /upload`: (answer, payload bytes put on the wire, transport error)."""
        length = end - start + 1
        header = encode_header(start, end, zlib.crc32(payload))
        token = self._bearer()
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            yield header
            for offset in range(0, length, _SEND_PIECE):
                piece = payload[offset: offset + _SEND_PIECE]
                yield bytes(piece)
                sent += len(piece)
                task.advance(len(piece))
                counters.add(sent=len(piece))

        request_headers = {**headers, "Content-Range": f"bytes {start}-{end}/{total}",
                           "Content-Length": str(HEADER_SIZE + length), "Authorization": f"Bearer {token}"}
        try:
            response = self._http().post(f"{self.url}/upload/{quote(file_id)}", content=body(),
                                         headers=request_headers)
        except httpx.TransportError as exc:
            return None, sent, exc
        return response, sent, None

    def wait_complete(self, file_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Poll `GET /status` (with backoff) until the upload is `complete` or `failed`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        announced = False
        while True:
            status = self.status(file_id)
            if status["state"] in ("complete", "failed"):
                return status
            if status["state"] == "uploading" and status.get("missing_ranges"):
                raise NotCompleteError(f"{file_id} is still missing {len(status['missing_ranges'])} range(s); "
                                       f"run the upload again to send them")
            if not announced:
                self.reporter.message(f"waiting for the server to verify {file_id}")
                announced = True
            if deadline is not None and time.monotonic() >= deadline:
                raise NotCompleteError(f"{file_id} is still {status['state']} after {timeout} s")
            time.sleep(delay)
            delay = min(2.0, delay * 1.6)

    # --- download ------------------------------------------------------------------
    def download(self, file_id: str, output: str | os.PathLike | None = None) -> DownloadResult:
        """Download a complete file to `output` (a file, or a directory to put it in; default: the
        original name in the current directory), through `output.part`, resuming a partial one."""
        status = self.status(file_id)
        if status["state"] == "failed":
            raise TransferFailed(f"upload {file_id} failed on the server: {status.get('error')}")
        if status["state"] != "complete":
            raise NotCompleteError(
                f"{file_id} is not complete yet ({status['state']}, {format_size(status['received_bytes'])} of "
                f"{format_size(status['total_bytes'])} received)")
        name = safe_local_name(status.get("file_name"), file_id)
        if output is None:
            target = Path(name)
        else:
            target = Path(output)
            if target.is_dir() or str(output).endswith(os.sep):
                target = target / name
        target = target.absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        meta_path = target.with_name(target.name + ".part.json")
        size, expected = int(status["total_bytes"]), status.get("sha256")

        meta = read_json(meta_path) if part.exists() else None
        etag: str | None = None
        offset = 0
        # The ETag is the file's SHA-256, so If-Range alone makes sure the partial bytes are a prefix
        # of what the server sends now, whichever address it was reached under.
        if meta and meta.get("file_id") == file_id and meta.get("etag"):
            etag = meta["etag"]
            offset = part.stat().st_size
            if offset > size:
                offset = 0
        digest = hashlib.sha256()
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, offset)
            if offset:
                with self.reporter.task(f"check {target.name}.part", offset) as task:
                    position = 0
                    while position < offset:
                        block = os.pread(fd, min(_READ_BLOCK, offset - position), position)
                        digest.update(block)
                        position += len(block)
                        task.advance(len(block))
                self.reporter.message(f"resuming {target.name} at {format_size(offset)} of {format_size(size)}")
            os.lseek(fd, offset, os.SEEK_SET)
            resumed_from = offset
            received, retries = 0, 0
            with self.reporter.task(f"download {target.name}", size, completed=offset) as task:
                attempt, refreshed = 0, False
                while offset < size or etag is None:
                    headers = {"Accept-Encoding": "identity"}
                    if offset > 0:
                        headers["Range"] = f"bytes={offset}-"
                        if etag:
                            headers["If-Range"] = etag
                    token = self._bearer()
                    headers["Authorization"] = f"Bearer {token}"
                    got = 0
                    try:
                        with self._http().stream("GET", f"{self.url}/download/{quote(file_id)}",
                                                 headers=headers) as response:
                            code = response.status_code
                            if code == 206:
                                span = response.headers.get("content-range", "")
                                if not span.startswith(f"bytes {offset}-"):
                                    raise TransferFailed(f"the server answered {span!r} to bytes={offset}-")
                            elif code == 200:
                                if offset:
                                    self.reporter.message(f"{file_id} changed on the server; starting over")
                                    task.advance(-offset)
                                offset = 0
                                os.ftruncate(fd, 0)
                                os.lseek(fd, 0, os.SEEK_SET)
                                digest = hashlib.sha256()
                                etag = response.headers.get("etag") or (f'"{expected}"' if expected else "")
                                size = int(response.headers.get("content-length", size))
                                write_private_json(meta_path, {"url": self.url, "file_id": file_id,
                                                               "etag": etag, "size": size})
                            elif code == 416 and offset:
                                # The partial file is longer than what the server has now: start over.
                                task.advance(-offset)
                                offset, etag = 0, None
                                os.ftruncate(fd, 0)
                                os.lseek(fd, 0, os.SEEK_SET)
                                digest = hashlib.sha256()
                                continue
                            else:
                                response.read()
                                if code == 401 and not refreshed:
                                    refreshed = True
                                    self._refresh(token)
                                    continue
                                error = api_error(response)
                                if (code in _RETRYABLE_STATUS or code == 429) and attempt < self.retries:
                                    retries += 1
                                    self._sleep(attempt, error.retry_after)
                                    attempt += 1
                                    continue
                                if error.code == "not_found":
                                    raise NotFoundError(f"not found: no file {file_id!r} for user "
                                                        f"{self.username!r} at {self.url}")
                                raise error
                            # No size: each block is written as it arrives, so a cut connection
                            # loses nothing already received.
                            for block in response.iter_raw():
                                _write_all(fd, block)
                                digest.update(block)
                                offset += len(block)
                                got += len(block)
                                received += len(block)
                                task.advance(len(block))
                            if offset < size:
                                raise httpx.RemoteProtocolError("the answer ended before the last byte")
                    except httpx.TransportError as exc:
                        if got:
                            attempt = 0  # progress was made: a fresh budget
                        if attempt >= self.retries:
                            raise self._unreachable(exc) from None
                        retries += 1
                        self._sleep(attempt)
                        attempt += 1
                        continue
            os.fsync(fd)
        finally:
            os.close(fd)

        actual = digest.hexdigest()
        wanted = etag_sha256(etag) or expected
        if actual != wanted or (expected and actual != expected):
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise TransferFailed(f"SHA-256 mismatch for {file_id}: got {actual}, expected {wanted}; "
                                 f"the partial file was removed, run the download again")
        os.replace(part, target)
        _fsync_dir(target.parent)
        meta_path.unlink(missing_ok=True)
        return DownloadResult(file_id, target, actual, size, received, resumed_from, retries)


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


def error_token(response: httpx.Response) -> str:
    """The bearer token a request was sent with."""
    return response.request.headers.get("authorization", "").removeprefix("Bearer ")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
