"""The POSIX filesystem as a ByteStore: the first (and so far only) store.

Layout under FT_DATA_DIR:
  staging/<id>/data           sparse file of the upload's total size; chunks land at their offsets
  staging/<id>/manifest.json  written by `persist` so an idle upload survives the loss of Redis
  files/<id>/data             the assembled file (the staging data renamed: no copy)
  files/<id>/meta.json        owner, size, sha256, name, times: the durable record of a complete file

Every write that matters is atomic: temp file, fsync, rename, fsync of the directory.
Besides the ByteStore methods it has every optional ability: local paths (sendfile,
X-Accel-Redirect), concatenation inside the kernel (copy_file_range), and opening an
existing staging file without a thread hop (open + fstat of a cached inode).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from core.config import Settings
from core.errors import InsufficientStorage
from core.file_ids import FILE_ID_PATTERN, validate_file_id
from core.storage.base import FileSource, Record, write_piece_crc

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_FILE_ID_RE = re.compile(FILE_ID_PATTERN)
COPY_BLOCK = 4 * 1024 * 1024


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, document: Record) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(document, separators=(",", ":"))  # the C encoder: json.dump's is Python
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> Record | None:
    try:
        with open(path, encoding="utf-8") as handle:
            document: Any = json.load(handle)
    except FileNotFoundError:
        return None
    return dict(document)


def write_at(fd: int, piece: bytes | memoryview, offset: int) -> None:
    """Write all received bytes at their offset; a full disk is the client's 507, not a 500.

    A disk filling up shows first as a short write (Linux writes what fits), then as ENOSPC:
    the rest is tried again, so that one is told from a write cut short by a signal."""
    view = memoryview(piece)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            if written == 0:
                raise OSError(errno.ENOSPC, f"no byte written at {offset}")
            view, offset = view[written:], offset + written
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise InsufficientStorage("the disk filled up while storing these bytes; retry later") from None
        raise


def _sync_fd(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError as exc:
        if exc.errno in _DISK_FULL:  # delayed allocation failing at writeback
            raise InsufficientStorage("the disk filled up while storing these bytes; retry later") from None
        raise


def _tree_bytes(path: Path) -> int:
    """Bytes actually allocated (staging files are sparse)."""
    total = 0
    for entry in path.rglob("*"):
        try:
            if entry.is_file():
                total += entry.stat().st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def _remove_record_dir(directory: Path, record: Path) -> int:
    """Remove an upload's directory, its JSON record first: a half-removed upload must never
    be restored from it. Returns the bytes freed."""
    if not directory.exists():
        return 0
    freed = _tree_bytes(directory)
    record.unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)
    return freed


def _record_dirs(root: Path) -> list[str]:
    with os.scandir(root) as entries:
        return [e.name for e in entries if e.is_dir() and _FILE_ID_RE.fullmatch(e.name)]


class PosixWriter:
    """A descriptor on a staging file; `write` is a pwrite into the page cache."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, piece: bytes, offset: int, crc: int = 0) -> int:
        write_at(self._fd, piece, offset)
        return write_piece_crc(piece, crc)

    async def commit(self, durable: bool) -> None:
        """The bytes are in the file already; durable means an fdatasync, in a thread."""
        if durable:
            await anyio.to_thread.run_sync(_sync_fd, self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class PosixReader:
    """A descriptor on a staged or final file, read with pread (no shared file position)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self._fd).st_size
        if hasattr(os, "posix_fadvise"):  # not on macOS
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def readinto(self, offset: int, buffer: memoryview) -> int:
        return os.preadv(self._fd, [buffer], offset)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def local_file(path: str | os.PathLike[str]) -> FileSource:
    """Any local file as a download source (tools and tests that serve a file by its path)."""
    local = Path(path)
    return FileSource(lambda: PosixReader(local), local, None)


class PosixStore:
    """Staged uploads and final files as directories under FT_DATA_DIR (layout above)."""

    def __init__(self, settings: Settings) -> None:
        self.data_dir = settings.data_dir
        self.staging_root = settings.staging_dir
        self.files_root = settings.files_dir
        settings.ensure_dirs()
        # The filesystem's fragment size does not change while it is mounted: one statvfs here
        # instead of one per chunk.
        self._block = os.statvfs(self.data_dir).f_frsize or 4096

    # --- paths (this store's own; callers outside it go through the methods) ------------
    def staging_dir(self, file_id: str) -> Path:
        return self.staging_root / validate_file_id(file_id)

    def staging_data(self, file_id: str) -> Path:
        return self.staging_dir(file_id) / "data"

    def manifest_path(self, file_id: str) -> Path:
        return self.staging_dir(file_id) / "manifest.json"

    def final_dir(self, file_id: str) -> Path:
        return self.files_root / validate_file_id(file_id)

    def final_data(self, file_id: str) -> Path:
        return self.final_dir(file_id) / "data"

    def final_meta_path(self, file_id: str) -> Path:
        return self.final_dir(file_id) / "meta.json"

    # --- LocalPaths ----------------------------------------------------------------------
    def final_path(self, file_id: str) -> Path:
        return self.final_data(file_id)

    def final_relative_path(self, file_id: str) -> str:
        return f"{validate_file_id(file_id)}/data"

    # --- staged uploads --------------------------------------------------------------------
    def open_for_chunk(self, file_id: str, total: int | None) -> int:
        """A write descriptor on the staging file, created sparse at its full size (left as it
        is when the size is not known yet: a tus upload of deferred length). The directory
        and the size are only made when missing: most chunks find both in place."""
        path = self.staging_data(file_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            if total is not None and os.fstat(fd).st_size != total:
                os.ftruncate(fd, total)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_staged_nowait(self, file_id: str, total: int | None) -> PosixWriter | None:
        """The staging file opened as it is, or None when it is missing or not `total` bytes
        long yet (mkdir, create and ftruncate are left to `open_staged`, in a thread)."""
        try:
            fd = os.open(self.staging_data(file_id), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if total is not None and os.fstat(fd).st_size != total:
            os.close(fd)
            return None
        return PosixWriter(fd)

    def open_staged(self, file_id: str, total: int | None) -> PosixWriter:
        try:
            return PosixWriter(self.open_for_chunk(file_id, total))
        except OSError as exc:
            if exc.errno in _DISK_FULL:  # no room for the directory or the file's inode
                raise InsufficientStorage("the disk is full; retry later") from None
            raise

    def has_staged(self, file_id: str) -> bool:
        return self.staging_data(file_id).exists()

    def read_staged(self, file_id: str) -> PosixReader:
        return PosixReader(self.staging_data(file_id))

    def sync_staged(self, file_id: str) -> None:
        try:
            fd = os.open(self.staging_data(file_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def staged_ids(self) -> list[str]:
        return _record_dirs(self.staging_root)

    def staged_modified_at(self, file_id: str) -> float | None:
        try:
            return self.staging_dir(file_id).stat().st_mtime
        except FileNotFoundError:
            return None

    def write_manifest(self, file_id: str, manifest: Record) -> None:
        write_json_atomic(self.manifest_path(file_id), manifest)

    def read_manifest(self, file_id: str) -> Record | None:
        return read_json(self.manifest_path(file_id))

    def remove_staged(self, file_id: str) -> int:
        return _remove_record_dir(self.staging_dir(file_id), self.manifest_path(file_id))

    # --- Concatenates ------------------------------------------------------------------------
    def concatenate(self, file_id: str, parts: list[str]) -> None:
        """One copy, inside the kernel (copy_file_range, which also shares blocks on
        filesystems that can); through user space where the kernel cannot."""
        target = self.staging_data(file_id)
        target.parent.mkdir(exist_ok=True)
        with open(target, "wb") as out:
            offset = 0
            for part in parts:
                offset += _copy_into(self.staging_data(part), out.fileno(), offset)
            out.flush()
            os.fsync(out.fileno())

    # --- final files -----------------------------------------------------------------------
    def publish(self, file_id: str, meta: Record) -> None:
        """Move the verified staging file into place (a rename: no copy) and record it."""
        target_dir = self.final_dir(file_id)
        target_dir.mkdir(exist_ok=True)
        source = self.staging_data(file_id)
        target = target_dir / "data"
        if source.exists():
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(source, target)
            fsync_dir(target_dir)
            fsync_dir(source.parent)
        if not target.exists():
            raise FileNotFoundError(f"neither staged nor final data exists for {file_id}")
        write_json_atomic(target_dir / "meta.json", meta)

    def has_final(self, file_id: str) -> bool:
        return self.final_data(file_id).exists()

    def read_final(self, file_id: str) -> PosixReader:
        return PosixReader(self.final_data(file_id))

    def read_meta(self, file_id: str) -> Record | None:
        return read_json(self.final_meta_path(file_id))

    def final_ids(self) -> list[str]:
        return _record_dirs(self.files_root)

    def remove_final(self, file_id: str) -> int:
        return _remove_record_dir(self.final_dir(file_id), self.final_meta_path(file_id))

    def has_record(self, file_id: str) -> bool:
        return self.final_meta_path(file_id).exists() or self.manifest_path(file_id).exists()

    # --- space -------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        stats = os.statvfs(self.data_dir)
        return stats.f_bavail * stats.f_frsize

    def allocation_for(self, length: int) -> int:
        """Whole blocks, and one more when the bytes straddle a block boundary at each end
        (staging files are sparse)."""
        block = self._block
        return (length + block - 1) // block * block + block


def _copy_into(source: Path, out_fd: int, offset: int) -> int:
    with open(source, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(handle.fileno(), out_fd, size - done, done, offset + done)
                if n == 0:
                    break
                done += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        while done < size:  # no copy_file_range here: one copy through user space
            block = os.pread(handle.fileno(), min(COPY_BLOCK, size - done), done)
            if not block:
                raise OSError(f"{source} shrank while being copied")
            os.pwrite(out_fd, block, offset + done)
            done += len(block)
    return size
