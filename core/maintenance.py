"""Periodic work: removing stale uploads, persisting idle ones, re-starting orphaned assemblies.

Each job runs under a Redis lock of its own, so that two beats, or a beat and an admin,
never run it twice at the same time. The lock has a short TTL renewed as the job
goes, so a worker killed mid-job does not block the next run for long.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from redis.asyncio.lock import Lock

from core.assembly import assembly_lock_key
from core.uploads import UploadService

JOB_LOCK_TTL = 120.0


class JobBusy(Exception):
    """Another run of the same job holds its lock."""


@asynccontextmanager
async def job_lock(redis, name: str, wait: float = 0.0):
    lock = Lock(redis, f"ft:lock:job:{name}", timeout=JOB_LOCK_TTL, blocking=wait > 0, blocking_timeout=wait or None)
    if not await lock.acquire():
        raise JobBusy(name)
    renewed = [time.monotonic()]

    async def keep() -> None:
        if time.monotonic() - renewed[0] > JOB_LOCK_TTL / 3:
            await lock.reacquire()
            renewed[0] = time.monotonic()

    try:
        yield keep
    finally:
        try:
            await lock.release()
        except Exception:
            pass


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0


async def cleanup(
    service: UploadService, older_than: float, now: float | None = None, wait_for_lock: float = 0.0
) -> CleanupReport:
    """Remove uploads not complete with no activity for `older_than` seconds: bytes, state, manifest."""
    now = now if now is not None else time.time()
    cutoff = now - older_than
    repo, storage = service.repo, service.storage
    report = CleanupReport()
    async with job_lock(repo.redis, "cleanup", wait_for_lock) as keep:
        # Uploads whose Redis state was lost but whose manifest survived are restored first,
        # so they are judged by their real last activity, like every other upload.
        for file_id in await anyio.to_thread.run_sync(storage.staged_ids):
            await keep()
            if await repo.get(file_id) is not None:
                continue
            if await service.restore_from_disk(file_id):
                continue
            # No state, no manifest: bytes of a chunk that never completed. Leave recent ones
            # alone (a first chunk may be streaming into it right now).
            modified_at = await anyio.to_thread.run_sync(storage.staged_modified_at, file_id)
            if modified_at is not None and modified_at <= cutoff:
                report.freed_bytes += await anyio.to_thread.run_sync(storage.remove_staged, file_id)
        async for file_id in repo.idle_since(cutoff):
            await keep()
            if await repo.expire_if_stale(file_id, cutoff) != "expired":
                continue
            report.freed_bytes += await anyio.to_thread.run_sync(storage.remove_staged, file_id)
            await repo.forget(file_id)
            report.removed.append(file_id)
    return report


@dataclass
class PersistReport:
    persisted: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)


async def persist(
    service: UploadService, idle_for: float, assembly_grace: float, enqueue, now: float | None = None
) -> PersistReport:
    """fsync idle uploads and write their manifests; re-enqueue assemblies nobody is running."""
    now = now if now is not None else time.time()
    repo, storage = service.repo, service.storage
    report = PersistReport()
    async with job_lock(repo.redis, "persist") as keep:
        async for file_id in repo.idle_since(now - idle_for):
            await keep()
            upload = await repo.get(file_id)
            if upload is None or upload.state not in ("uploading", "failed"):
                continue
            if upload.persisted_at is not None and upload.persisted_at >= upload.updated_at:
                continue  # nothing new since the last manifest
            chunks = await repo.chunks(file_id)
            await anyio.to_thread.run_sync(storage.sync_staged, file_id)
            persisted_at = time.time()
            await anyio.to_thread.run_sync(service.write_manifest, upload, chunks, persisted_at)
            # The upload may have moved on meanwhile; the manifest is then merely conservative.
            await repo.mark_persisted(file_id, persisted_at)
            report.persisted.append(file_id)
        for file_id in await repo.assembling_since(now - assembly_grace):
            if not await repo.redis.exists(assembly_lock_key(file_id)):
                enqueue(file_id)
                report.requeued.append(file_id)
    return report
