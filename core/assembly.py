"""Verification and assembly of a fully received upload (run by a Celery worker).

Idempotent by construction: it may run twice, or again after being killed at any
point. The staged file is read once: every stored chunk's CRC-32 is re-checked and the
SHA-256 computed in the same pass; then the file is renamed into place (no copy), its
meta written, and only then is the upload marked `complete` in Redis. If a run dies
after the rename, the next run finds the data at its final place and verifies it there.
A Redis lease with a short TTL, renewed while reading, keeps two runs from working on
one file at once; a run killed without releasing it frees the file when the lease ends.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import anyio

from core.checksums import crc32
from core.records import FileMeta, UploadState
from core.state import Chunk, Lease, UploadRepository
from core.storage import ByteReader, ByteStore
from core.tus import build_concatenation, forget_parts, parts_of
from core.uploads import load

READ_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Verification:
    sha256: str
    bad_chunk: Chunk | None


def verify_file(source: ByteReader, chunks: list[Chunk], total: int) -> Verification:
    """One sequential pass: SHA-256 of the whole file and CRC-32 of each stored chunk."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    ordered = sorted(chunks, key=lambda c: c.start)
    index, crc, offset = 0, 0, 0
    bad: Chunk | None = None
    while offset < total:
        n = source.readinto(offset, view[: min(READ_SIZE, total - offset)])
        if not n:
            raise ValueError(f"the stored bytes are shorter than {total}")
        block = view[:n]
        digest.update(block)
        pos = 0
        while pos < n and index < len(ordered):
            chunk = ordered[index]
            take = min(n - pos, chunk.end + 1 - (offset + pos))
            crc = crc32(block[pos : pos + take], crc)
            pos += take
            if offset + pos == chunk.end + 1:
                if crc != chunk.crc32 and bad is None:
                    bad = chunk
                index, crc = index + 1, 0
        offset += n
    return Verification(digest.hexdigest(), bad)


async def assemble(
    repo: UploadRepository, storage: ByteStore, file_id: str, lease_seconds: float = 60.0
) -> dict[str, Any]:
    """Verify and publish `file_id`. Returns a small report (also the Celery task's result)."""
    upload = await load(repo, storage, file_id)
    if upload is None:
        return {"file_id": file_id, "result": "gone"}
    if upload.state != UploadState.ASSEMBLING:
        return {"file_id": file_id, "result": f"nothing to do: {upload.state}"}

    # A run whose process was killed leaves its lease behind until it lapses, and its task is
    # redelivered at once (reject_on_worker_lost): wait up to one lease period for it. A live
    # run keeps renewing its lease, so a duplicate gives up after that and leaves the file to it.
    lease = repo.assembly_lease(file_id, lease_seconds)
    if not await lease.acquire():
        return {"file_id": file_id, "result": "busy: another run holds the lease"}
    try:
        upload = await load(repo, storage, file_id)  # another run may have finished while we waited
        if upload is None or upload.state != UploadState.ASSEMBLING:
            return {"file_id": file_id, "result": f"nothing to do: {upload.state if upload else 'gone'}"}
        chunks = await repo.chunks(file_id)
        parts = parts_of(upload)
        if parts and not await anyio.to_thread.run_sync(storage.has_final, file_id):
            try:
                await build_concatenation(storage, file_id, parts)
            except FileNotFoundError:
                removed = "a partial upload of this concatenation was removed before it was assembled"
                await repo.mark_failed(file_id, removed)
                return {"file_id": file_id, "result": "failed", "error": removed}
        started = time.monotonic()
        source = await anyio.to_thread.run_sync(_staged_or_final, storage, file_id)
        try:
            verification = await _verify_with_lease(lease, source, chunks, upload.total, lease_seconds)
        finally:
            source.close()
        error: str | None = None
        if (bad := verification.bad_chunk) is not None:
            error = f"stored bytes {bad.start}-{bad.end} no longer match their CRC-32; upload them again"
        elif upload.expected_sha256 and verification.sha256 != upload.expected_sha256:
            error = f"SHA-256 mismatch: expected {upload.expected_sha256}, got {verification.sha256}"
        if error is not None:
            await repo.mark_failed(file_id, error)
            return {"file_id": file_id, "result": "failed", "error": error}

        completed_at = time.time()
        meta = FileMeta(
            file_id=file_id,
            owner=upload.owner,
            size=upload.total,
            sha256=verification.sha256,
            expected_sha256=upload.expected_sha256,
            file_name=upload.file_name,
            created_at=upload.created_at,
            completed_at=completed_at,
        )
        await anyio.to_thread.run_sync(storage.publish, file_id, meta.to_json())
        await repo.mark_complete(file_id, verification.sha256, completed_at)
        await anyio.to_thread.run_sync(storage.remove_staged, file_id)
        await forget_parts(repo, storage, parts)
        return {
            "file_id": file_id,
            "result": "complete",
            "sha256": verification.sha256,
            "size": upload.total,
            "seconds": round(time.monotonic() - started, 3),
        }
    finally:
        await lease.release()


def _staged_or_final(storage: ByteStore, file_id: str) -> ByteReader:
    """The staged bytes, or the final ones when a previous run published them, then died."""
    try:
        return storage.read_staged(file_id)
    except FileNotFoundError:
        return storage.read_final(file_id)


async def _verify_with_lease(
    lease: Lease, source: ByteReader, chunks: list[Chunk], total: int, lease_seconds: float
) -> Verification:
    """Run the (blocking) verification in a thread while this task keeps the lease alive."""
    async with anyio.create_task_group() as group:
        result: list[Verification] = []

        async def renew() -> None:
            while True:
                await anyio.sleep(lease_seconds / 3)
                await lease.renew()

        group.start_soon(renew)
        result.append(await anyio.to_thread.run_sync(verify_file, source, chunks, total))
        group.cancel_scope.cancel()
    return result[0]
