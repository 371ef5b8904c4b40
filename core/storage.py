"""Bytes on disk: staging files being uploaded, final files, and their JSON manifests.

Layout under FT_DATA_DIR:
  staging/<id>/data           sparse file of the upload's total size; chunks land at their offsets
  staging/<id>/manifest.json  written by `persist` so an idle upload survives the loss of Redis
  files/<id>/data             the assembled file (the staging data renamed: no copy)
  files/<id>/meta.json        owner, size, sha256, name, times: the durable record of a complete file

Every write that matters is atomic: temp file, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from core.config import Settings
from core.errors import InsufficientStorage
from core.file_ids import validate_file_id


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, document: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(document, handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_at(fd: int, piece: bytes, offset: int) -> None:
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
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("the disk filled up while storing these bytes; retry later") from None
        raise


def read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


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


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.data_dir = settings.data_dir
        self.staging_root = settings.staging_dir
        self.files_root = settings.files_dir
        settings.ensure_dirs()
        # The filesystem's fragment size does not change while it is mounted: one statvfs here
        # instead of one per chunk (free space, which does change, is still read every time).
        self._block = os.statvfs(self.data_dir).f_frsize or 4096

    # --- staging -------------------------------------------------------------
    def staging_dir(self, file_id: str) -> Path:
        return self.staging_root / validate_file_id(file_id)

    def staging_data(self, file_id: str) -> Path:
        return self.staging_dir(file_id) / "data"

    def manifest_path(self, file_id: str) -> Path:
        return self.staging_dir(file_id) / "manifest.json"

    def open_for_chunk(self, file_id: str, total: int | None) -> int:
        """A write descriptor on the staging file, created sparse at its full size (left as it
        is when the size is not known yet: a tus upload of deferred length)."""
        directory = self.staging_dir(file_id)
        directory.mkdir(exist_ok=True)
        fd = os.open(directory / "data", os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            if total is not None and os.fstat(fd).st_size != total:
                os.ftruncate(fd, total)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def sync_staging(self, file_id: str) -> None:
        path = self.staging_data(file_id)
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_manifest(self, file_id: str, manifest: dict) -> None:
        write_json_atomic(self.manifest_path(file_id), manifest)

    def read_manifest(self, file_id: str) -> dict | None:
        return read_json(self.manifest_path(file_id))

    def remove_staging(self, file_id: str) -> int:
        """Remove the staged bytes and manifest; returns the bytes freed."""
        return _remove_record_dir(self.staging_dir(file_id), self.manifest_path(file_id))

    # --- final files -------------------------------------------------------------
    def final_dir(self, file_id: str) -> Path:
        return self.files_root / validate_file_id(file_id)

    def final_data(self, file_id: str) -> Path:
        return self.final_dir(file_id) / "data"

    def final_meta_path(self, file_id: str) -> Path:
        return self.final_dir(file_id) / "meta.json"

    def has_record(self, file_id: str) -> bool:
        """Whether a final meta or a manifest of `file_id` exists: two stats, cheap enough for
        the event loop, where reading them is not."""
        return self.final_meta_path(file_id).exists() or self.manifest_path(file_id).exists()

    def read_final_meta(self, file_id: str) -> dict | None:
        return read_json(self.final_meta_path(file_id))

    def publish(self, file_id: str, meta: dict) -> Path:
        """Move the verified staging file into place and record it. Safe to repeat."""
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
        return target

    def remove_final(self, file_id: str) -> int:
        """Remove a final file and its meta; returns the bytes freed."""
        return _remove_record_dir(self.final_dir(file_id), self.final_meta_path(file_id))

    def free_bytes(self) -> int:
        stats = os.statvfs(self.data_dir)
        return stats.f_bavail * stats.f_frsize

    def allocation_for(self, length: int) -> int:
        """Disk space that writing `length` bytes into a sparse staging file may take: whole
        blocks, and one more when the bytes straddle a block boundary at each end."""
        block = self._block
        return (length + block - 1) // block * block + block
