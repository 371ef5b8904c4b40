"""FT_DATA_DIR as the launcher keeps it: one `make run` at a time, private to its owner."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

LOCK_NAME = "launcher.lock"
PRIVATE_UMASK = 0o077  # files 0600, directories 0700, for the launcher and every child


class DataDirBusy(Exception):
    """Another launcher holds the data directory."""


class DataDirLock:
    """An exclusive flock on FT_DATA_DIR/launcher.lock, held for the launcher's life.

    The kernel drops it when the launcher exits, however it exits, so a stale lock file
    never blocks the next start. The file holds the owner's pid, for the error message.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"another `make run` (pid {owner}) is already using FT_DATA_DIR={self.path.parent}; "
                "stop it first, or set FT_DATA_DIR to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_private(data_dir: Path) -> int:
    """Directory 0700, and group/other access removed from everything already inside
    (data written by an older version or under another umask). Returns how many modes changed."""
    data_dir.mkdir(parents=True, exist_ok=True)
    changed = 0
    for root, _dirs, files in os.walk(data_dir):
        for path in [root, *(os.path.join(root, name) for name in files)]:
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode) or not stat.S_IMODE(mode) & 0o077:
                continue
            os.chmod(path, stat.S_IMODE(mode) & ~0o077)
            changed += 1
    return changed
