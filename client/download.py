"""Downloads: into `NAME.part`, resumed with `Range` + `If-Range` (the ETag is the file's
SHA-256, so a partial file is only continued with bytes of the same file), checked against
that SHA-256, then fsynced and renamed into place."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from client.errors import NotCompleteError, NotFoundError, TransferFailed
from client.progress import Reporter, Task
from client.tokens import read_json, write_private_json
from client.transport import api_error, error_token
from client.units import MiB, etag_sha256, format_size, safe_local_name

if TYPE_CHECKING:
    from client.api import Client

_READ_BLOCK = 1 * MiB


@dataclass
class DownloadResult:
    file_id: str
    path: Path
    sha256: str
    size: int
    bytes_received: int = 0
    resumed_from: int = 0
    retries: int = 0


class _Partial:
    """The `.part` file a download writes into, and its `.part.json`: which file (and ETag) the
    bytes belong to. Each block is written as it arrives, so a cut connection loses nothing."""

    def __init__(self, target: Path, file_id: str, size: int) -> None:
        self.target = target
        self.path = target.with_name(target.name + ".part")
        self.meta_path = target.with_name(target.name + ".part.json")
        self.file_id = file_id
        self.size = size
        self.etag: str | None = None
        self.offset = 0
        self.received = 0  # bytes written by this run
        self.digest = hashlib.sha256()
        meta = read_json(self.meta_path) if self.path.exists() else None
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if meta and meta.get("file_id") == file_id and meta.get("etag"):
            self.etag = meta["etag"]
            self.offset = os.fstat(self.fd).st_size
            if self.offset > size:
                self.offset = 0
        os.ftruncate(self.fd, self.offset)

    def rehash(self, reporter: Reporter) -> None:
        """Hash the bytes kept from an earlier run: the SHA-256 covers the whole file."""
        with reporter.task(f"check {self.path.name}", self.offset) as task:
            position = 0
            while position < self.offset:
                block = os.pread(self.fd, min(_READ_BLOCK, self.offset - position), position)
                self.digest.update(block)
                position += len(block)
                task.advance(len(block))
        os.lseek(self.fd, self.offset, os.SEEK_SET)

    def restart(self, url: str, etag: str | None, size: int | None = None) -> None:
        """Start over (the server sends the whole file, or the partial bytes are of another version)."""
        self.offset = 0
        self.etag = etag
        self.size = size if size is not None else self.size
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.digest = hashlib.sha256()
        if etag is not None:
            write_private_json(self.meta_path, {"url": url, "file_id": self.file_id, "etag": etag, "size": self.size})

    def write(self, block: bytes) -> None:
        view = memoryview(block)
        while view:
            view = view[os.write(self.fd, view) :]
        self.digest.update(block)
        self.offset += len(block)
        self.received += len(block)

    def finish(self, expected: str | None) -> str:
        """Check the SHA-256, then fsync and rename into place; returns the SHA-256."""
        os.fsync(self.fd)
        actual = self.digest.hexdigest()
        wanted = etag_sha256(self.etag) or expected
        if actual != wanted or (expected and actual != expected):
            self.path.unlink(missing_ok=True)
            self.meta_path.unlink(missing_ok=True)
            raise TransferFailed(
                f"SHA-256 mismatch for {self.file_id}: got {actual}, expected {wanted}; "
                f"the partial file was removed, run the download again"
            )
        os.replace(self.path, self.target)
        _fsync_dir(self.target.parent)
        self.meta_path.unlink(missing_ok=True)
        return actual

    def close(self) -> None:
        os.close(self.fd)


class Downloader:
    """Downloads for one Client (its transport, retry policy and reporter)."""

    def __init__(self, api: Client) -> None:
        self.api = api
        self.transport = api.transport
        self.policy = api.policy
        self.reporter = api.reporter

    def download(self, file_id: str, output: str | os.PathLike | None = None) -> DownloadResult:
        """Download a complete file to `output` (a file, or a directory to put it in; default: the
        original name in the current directory), through `output.part`, resuming a partial one."""
        status = self.api.status(file_id)
        if status["state"] == "failed":
            raise TransferFailed(f"upload {file_id} failed on the server: {status.get('error')}")
        if status["state"] != "complete":
            raise NotCompleteError(
                f"{file_id} is not complete yet ({status['state']}, {format_size(status['received_bytes'])} of "
                f"{format_size(status['total_bytes'])} received)"
            )
        target = _target_path(status, file_id, output)
        expected = status.get("sha256")
        partial = _Partial(target, file_id, int(status["total_bytes"]))
        try:
            resumed_from = partial.offset
            if resumed_from:
                partial.rehash(self.reporter)
                self.reporter.message(
                    f"resuming {target.name} at {format_size(resumed_from)} of {format_size(partial.size)}"
                )
            retries = self._receive(partial, expected)
            sha = partial.finish(expected)
        finally:
            partial.close()
        return DownloadResult(file_id, target, sha, partial.size, partial.received, resumed_from, retries)

    def _receive(self, partial: _Partial, expected: str | None) -> int:
        """GET until every byte is in `partial`, retrying as the policy says (a fresh budget
        whenever an attempt brought bytes). Returns the number of retries."""
        attempt, retries, refreshed = 0, 0, False
        with self.reporter.task(f"download {partial.target.name}", partial.size, completed=partial.offset) as task:
            while partial.offset < partial.size or partial.etag is None:
                before = partial.received
                try:
                    refused = self._fetch(partial, expected, task)
                except httpx.TransportError as exc:
                    if partial.received > before:
                        attempt = 0
                    if attempt >= self.policy.retries:
                        raise self.transport.unreachable(exc) from None
                    retries += 1
                    self.policy.wait(attempt)
                    attempt += 1
                    continue
                if refused is None:
                    continue
                if refused.status_code == 401 and not refreshed:
                    refreshed = True
                    self.transport.refresh(error_token(refused))
                    continue
                error = api_error(refused)
                if self.policy.retryable(refused) and attempt < self.policy.retries:
                    retries += 1
                    self.policy.wait(attempt, error.retry_after)
                    attempt += 1
                    continue
                if error.code == "not_found":
                    raise NotFoundError(
                        f"not found: no file {partial.file_id!r} for user "
                        f"{self.transport.username!r} at {self.transport.url}"
                    )
                raise error
        return retries

    def _fetch(self, partial: _Partial, expected: str | None, task: Task) -> httpx.Response | None:
        """One GET from `partial.offset` on, written as it arrives. Returns the answer when the
        server refused (body read), else None."""
        headers = {"Accept-Encoding": "identity"}
        if partial.offset > 0:
            headers["Range"] = f"bytes={partial.offset}-"
            if partial.etag:
                headers["If-Range"] = partial.etag
        response = self.transport.send("GET", f"/download/{quote(partial.file_id)}", headers=headers, stream=True)
        try:
            code = response.status_code
            if code == 206:
                span = response.headers.get("content-range", "")
                if not span.startswith(f"bytes {partial.offset}-"):
                    raise TransferFailed(f"the server answered {span!r} to bytes={partial.offset}-")
            elif code == 200:
                if partial.offset:
                    self.reporter.message(f"{partial.file_id} changed on the server; starting over")
                    task.advance(-partial.offset)
                partial.restart(
                    self.transport.url,
                    response.headers.get("etag") or (f'"{expected}"' if expected else ""),
                    int(response.headers.get("content-length", partial.size)),
                )
            elif code == 416 and partial.offset:
                # The partial file is longer than what the server has now: start over.
                task.advance(-partial.offset)
                partial.restart(self.transport.url, None)
                return None
            else:
                response.read()
                return response
            for block in response.iter_raw():
                partial.write(block)
                task.advance(len(block))
            if partial.offset < partial.size:
                raise httpx.RemoteProtocolError("the answer ended before the last byte")
            return None
        finally:
            response.close()


def _target_path(status: dict[str, Any], file_id: str, output: str | os.PathLike | None) -> Path:
    """Where the file goes: `output` (a file, or a directory for the original name), else the
    original name (made safe) in the current directory."""
    name = safe_local_name(status.get("file_name"), file_id)
    if output is None:
        target = Path(name)
    else:
        target = Path(output)
        if target.is_dir() or str(output).endswith(os.sep):
            target = target / name
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


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
