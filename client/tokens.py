"""The client's cache directory: bearer tokens (mode 0600) and the state of uploads in progress.

$FT_CLIENT_CACHE_DIR, else $XDG_CACHE_HOME/ft-client, else ~/.cache/ft-client
    tokens/<hash of url + user>.json    {"url", "username", "access_token", "expires_at"}
    users/<hash of url>.json            {"url", "username"}: the last user that logged in there
    uploads/<hash of user + id>.json    what the local file was when its upload began
    hashes/<hash of path>.json          the SHA-256 of a local file as it was (size, mtime, inode)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# A token is renewed this long before the server would reject it (less for short-lived tokens).
EXPIRY_MARGIN = 30.0


def renew_at(expires_at: float, lifetime: float) -> float:
    return expires_at - min(EXPIRY_MARGIN, max(0.0, lifetime) / 10)


def cache_dir() -> Path:
    explicit = os.environ.get("FT_CLIENT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ft-client"


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically, readable by the owner only (0600), in a 0700 directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class TokenCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()

    def _token_path(self, url: str, username: str) -> Path:
        return self.root / "tokens" / f"{_key(url, username)}.json"

    def _user_path(self, url: str) -> Path:
        return self.root / "users" / f"{_key(url)}.json"

    def get(self, url: str, username: str) -> str | None:
        """A cached token that is not about to expire, else None."""
        entry = self.entry(url, username)
        return entry[0] if entry else None

    def entry(self, url: str, username: str) -> tuple[str, float] | None:
        """(token, time to renew it) of a cached token that is not about to expire, else None."""
        data = read_json(self._token_path(url, username))
        if not data or data.get("url") != url or data.get("username") != username:
            return None
        token = data.get("access_token")
        expires_at = data.get("expires_at")
        lifetime = data.get("expires_in", EXPIRY_MARGIN * 10)
        if not isinstance(token, str) or not isinstance(expires_at, (int, float)):
            return None
        if not isinstance(lifetime, (int, float)):
            lifetime = EXPIRY_MARGIN * 10
        if time.time() >= renew_at(expires_at, lifetime):
            return None
        return token, renew_at(expires_at, lifetime)

    def put(self, url: str, username: str, token: str, expires_in: float) -> None:
        write_private_json(
            self._token_path(url, username),
            {
                "url": url,
                "username": username,
                "access_token": token,
                "expires_at": time.time() + float(expires_in),
                "expires_in": float(expires_in),
            },
        )
        write_private_json(self._user_path(url), {"url": url, "username": username})

    def forget(self, url: str, username: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._token_path(url, username).unlink()

    def last_user(self, url: str) -> str | None:
        data = read_json(self._user_path(url))
        if data and data.get("url") == url and isinstance(data.get("username"), str):
            return data["username"]
        return None


class UploadStateStore:
    """What a local file was (size, mtime, SHA-256) when its upload began, to notice it changing."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()

    def path(self, url: str, username: str, file_id: str) -> Path:
        # Not keyed by the URL: one server may be reached under several addresses (a proxy, a
        # name and an IP). It is only consulted while the server has this id in progress.
        return self.root / "uploads" / f"{_key(username, file_id)}.json"

    def get(self, url: str, username: str, file_id: str) -> dict[str, Any] | None:
        data = read_json(self.path(url, username, file_id))
        if not data or data.get("username") != username or data.get("file_id") != file_id:
            return None
        return data

    def put(self, url: str, username: str, file_id: str, **fields: Any) -> None:
        write_private_json(
            self.path(url, username, file_id), {"url": url, "username": username, "file_id": file_id, **fields}
        )

    def forget(self, url: str, username: str, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(url, username, file_id).unlink()


class HashJournal:
    """The SHA-256 of local files, so that resuming the upload of an unchanged file starts
    sending at once instead of reading the whole file again.

    An entry is trusted only while the file's size, mtime (ns), inode and device are those it
    was hashed with, and only if the file was at least `settle` seconds old then: a write in the
    same clock tick as the hashing could otherwise go unnoticed (git's "racily clean" case).
    The server checks the SHA-256 again in any case before the file is `complete`."""

    def __init__(self, root: Path | None = None, settle: float = 2.0) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self.settle_ns = int(settle * 1e9)

    def _path(self, path: str) -> Path:
        return self.root / "hashes" / f"{_key(path)}.json"

    @staticmethod
    def _identity(st: os.stat_result) -> dict[str, int]:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}

    def get(self, path: str, st: os.stat_result) -> str | None:
        """The recorded SHA-256 of `path` if it is still the file that was hashed, else None."""
        path = os.path.abspath(path)
        data = read_json(self._path(path))
        if not data or data.get("path") != path or data.get("identity") != self._identity(st):
            return None
        hashed_at = data.get("hashed_at_ns")
        sha256 = data.get("sha256")
        if not isinstance(hashed_at, int) or st.st_mtime_ns > hashed_at - self.settle_ns:
            return None
        return sha256 if isinstance(sha256, str) and len(sha256) == 64 else None

    def put(self, path: str, st: os.stat_result, sha256: str, hashed_at_ns: int, file_id: str) -> None:
        """Record `sha256` of `path` as it was at `st`, hashed from `hashed_at_ns` on (time_ns)."""
        path = os.path.abspath(path)
        write_private_json(
            self._path(path),
            {
                "path": path,
                "identity": self._identity(st),
                "sha256": sha256,
                "hashed_at_ns": hashed_at_ns,
                "file_id": file_id,
            },
        )
