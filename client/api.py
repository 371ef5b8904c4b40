"""The client library: `Client(url, username, password).upload(path)` / `.download(file_id)` / `.status(id)`.

It speaks the service's API: bearer tokens from `POST /token` (cached on disk, renewed when
they expire or are refused), chunked resumable uploads (`POST /upload/{id}` with the 12-byte
header), `GET /status/{id}`, `DELETE /upload/{id}` and range downloads with `If-Range`.

The parts: client.transport (HTTP, tokens, the one RetryPolicy), client.upload (Uploader),
client.download (Downloader); `Client` puts them together.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from client.download import Downloader, DownloadResult
from client.errors import NotFoundError
from client.progress import Reporter
from client.tokens import HashJournal, TokenCache, UploadStateStore
from client.transport import RetryPolicy, Transport, api_error
from client.units import check_file_id
from client.upload import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MIN_CHUNK_SIZE,
    Uploader,
    UploadResult,
    encode_header,
    encoded_file_name,
    intersect,
)

DEFAULT_URL = "http://127.0.0.1:8000"

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_URL",
    "Client",
    "DownloadResult",
    "UploadResult",
    "encode_header",
    "encoded_file_name",
    "intersect",
]


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
        url = (url or os.environ.get("FT_URL") or DEFAULT_URL).rstrip("/")
        self.tokens = TokenCache(Path(cache_dir) if cache_dir is not None else None)
        self.states = UploadStateStore(self.tokens.root)
        self.hashes = HashJournal(self.tokens.root)
        self.policy = RetryPolicy(retries, backoff_base, backoff_cap, max_retry_after)
        self.transport = Transport(
            url,
            username or os.environ.get("FT_USERNAME") or self.tokens.last_user(url),
            password if password is not None else os.environ.get("FT_PASSWORD"),
            self.tokens,
            self.policy,
            timeout,
            password_prompt,
        )
        self.reporter = reporter or Reporter()
        self.uploader = Uploader(self, overlap_timeout, min_chunk_size)
        self.downloader = Downloader(self)

    @property
    def url(self) -> str:
        return self.transport.url

    @property
    def username(self) -> str | None:
        return self.transport.username

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def login(self) -> str:
        """Get a fresh token from `POST /token` and cache it (0600)."""
        return self.transport.login()

    def status(self, file_id: str) -> dict[str, Any]:
        """`GET /status/{file_id}`; raises NotFoundError for an unknown (or someone else's) id."""
        check_file_id(file_id)
        response = self.transport.request("GET", f"/status/{quote(file_id)}")
        if response.status_code == 200:
            return response.json()
        raise self._error(response, file_id)

    def status_or_none(self, file_id: str) -> dict[str, Any] | None:
        try:
            return self.status(file_id)
        except NotFoundError:
            return None

    def delete(self, file_id: str) -> None:
        """`DELETE /upload/{file_id}`: cancel an upload or delete a complete file."""
        check_file_id(file_id)
        response = self.transport.request("DELETE", f"/upload/{quote(file_id)}")
        if response.status_code != 204:
            raise self._error(response, file_id)

    def _error(self, response, file_id: str) -> Exception:
        error = api_error(response)
        if error.code == "not_found":
            return NotFoundError(f"not found: no upload {file_id!r} for user {self.username!r} at {self.url}")
        return error

    def upload_id(self, path: str | os.PathLike, file_id: str | None = None) -> str:
        """The id `upload(path, file_id)` uses, known before any byte is read."""
        return self.uploader.upload_id(path, file_id)

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
        return self.uploader.upload(path, file_id, chunk_size, parallel, wait, wait_timeout)

    def wait_complete(self, file_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Poll `GET /status` until the upload is `complete` or `failed`."""
        return self.uploader.wait_complete(file_id, timeout)

    def sha256_file(self, path: str, size: int, description: str = "sha256") -> str:
        return self.uploader.sha256_file(path, size, description)

    def download(self, file_id: str, output: str | os.PathLike | None = None) -> DownloadResult:
        """Download a complete file (see client.download); running it again resumes."""
        return self.downloader.download(file_id, output)
