"""Periodic work: removing stale uploads, persisting idle ones, re-starting orphaned assemblies.

Each job runs under a Redis lock of its own, so that two beats, or a beat and an admin,
never run it twice at the same time. The lock has a short TTL renewed as the job
goes, so a worker killed mid-job does not block the next run for long.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from core.errors import UnreadableRecord
from core.records import UploadState
from core.state import UploadRepository
from core.storage import ByteStore
from core.uploads import EnqueueAssembly, restore_from_disk, write_manifest

JOB_LOCK_TTL = 120.0


class JobBusy(Exception):
    """Another run of the same job holds its lock."""


@asynccontextmanager
async def job_lock(
    repo: UploadRepository, name: str, wait: float = 0.0
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Hold job `name`'s lease (JobBusy if another run holds it after `wait` seconds); yields
    `keep`, to be awaited often: it renews the lease once a third of its TTL has passed."""
    lease = repo.job_lease(name, JOB_LOCK_TTL, wait)
    if not await lease.acquire():
        raise JobBusy(name)
    renewed = [time.monotonic()]

    async def keep() -> None:
        if time.monotonic() - renewed[0] > JOB_LOCK_TTL / 3:
            await lease.renew()
            renewed[0] = time.monotonic()

    try:
        yield keep
    finally:
        with contextlib.suppress(Exception):  # Redis away: the lease lapses by itself
            await lease.release()


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0


async def cleanup(
    repo: UploadRepository,
    storage: ByteStore,
    older_than: float,
    now: float | None = None,
    wait_for_lock: float = 0.0,
    enqueue_assembly: EnqueueAssembly | None = None,
) -> CleanupReport:
    """Remove uploads not complete with no activity for `older_than` seconds: bytes, state, manifest."""
    now = now if now is not None else time.time()
    cutoff = now - older_than
    report = CleanupReport()
    async with job_lock(repo, "cleanup", wait_for_lock) as keep:
        # Uploads whose Redis state was lost but whose manifest survived are restored first,
        # so they are judged by their real last activity, like every other upload.
        for file_id in await anyio.to_thread.run_sync(storage.staged_ids):
            await keep()
            if await repo.get(file_id) is not None:
                continue
            try:
                if await restore_from_disk(repo, storage, file_id, enqueue_assembly):
                    continue
            except UnreadableRecord:
                continue  # a record this release cannot read: left for an operator, never removed
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
    repo: UploadRepository,
    storage: ByteStore,
    idle_for: float,
    assembly_grace: float,
    enqueue: EnqueueAssembly,
    now: float | None = None,
) -> PersistReport:
    """fsync idle uploads and write their manifests; re-enqueue assemblies nobody is running."""
    now = now if now is not None else time.time()
    report = PersistReport()
    async with job_lock(repo, "persist") as keep:
        async for file_id in repo.idle_since(now - idle_for):
            await keep()
            upload = await repo.get(file_id)
            if upload is None or upload.state not in (UploadState.UPLOADING, UploadState.FAILED):
                continue
            if upload.persisted_at is not None and upload.persisted_at >= upload.updated_at:
                continue  # nothing new since the last manifest
            chunks = await repo.chunks(file_id)
            await anyio.to_thread.run_sync(storage.sync_staged, file_id)
            persisted_at = time.time()
            await anyio.to_thread.run_sync(write_manifest, storage, upload, chunks, persisted_at)
            # The upload may have moved on meanwhile; the manifest is then merely conservative.
            await repo.mark_persisted(file_id, persisted_at)
            report.persisted.append(file_id)
        for file_id in await repo.assembling_since(now - assembly_grace):
            if not await repo.assembly_running(file_id):
                await enqueue(file_id)
                report.requeued.append(file_id)
    return report
