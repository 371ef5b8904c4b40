"""Celery tasks: thin wrappers over the domain functions in core/, which tests call directly too.

Task names are stable and carry the file_id in their arguments, so Flower's task list
tells an operator which upload each run was about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from core import assembly, maintenance
from core.config import Settings
from core.files_list import ensure_files_index
from core.jobs import ASSEMBLE, CLEANUP, PERSIST
from core.redis_clients import async_client
from core.state import UploadRepository
from core.storage import ByteStore, open_store
from workers import observability  # noqa: F401 - its signal handlers: task log lines, assembly metrics
from workers.celery_app import app, settings


def _enqueue_assembly(file_id: str) -> None:
    app.send_task(ASSEMBLE, args=[file_id])


def _run(job: Callable[[UploadRepository, ByteStore, Settings], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run an async domain job with its collaborators: a Redis connection of its own (one event
    loop per task run) and the storage."""

    async def main() -> dict[str, Any]:
        redis = async_client(settings.redis_url, socket_connect_timeout=5)
        try:
            return await job(UploadRepository(redis), open_store(settings), settings)
        finally:
            await redis.aclose()

    return asyncio.run(main())


@app.task(name=ASSEMBLE)
def assemble(file_id: str) -> dict[str, Any]:
    return _run(lambda repo, storage, s: assembly.assemble(repo, storage, file_id, lease_seconds=s.assembly_lease))


@app.task(name=CLEANUP)
def cleanup(older_than: float | None = None, wait_for_lock: bool = False) -> dict[str, Any]:
    async def job(repo: UploadRepository, storage: ByteStore, s: Settings) -> dict[str, Any]:
        age = s.stale_after if older_than is None else older_than
        wait = 60.0 if wait_for_lock else 0.0
        try:
            report = await maintenance.cleanup(
                repo, storage, age, wait_for_lock=wait, enqueue_assembly=_enqueue_assembly
            )
        except maintenance.JobBusy:
            return {"skipped": "another cleanup is running", "removed": [], "freed_bytes": 0}
        return asdict(report)

    return _run(job)


@app.task(name=PERSIST)
def persist() -> dict[str, Any]:
    async def job(repo: UploadRepository, storage: ByteStore, s: Settings) -> dict[str, Any]:
        # After Redis lost everything, the files list comes back here even if nobody asks for it.
        reindexed = await ensure_files_index(repo, storage, _enqueue_assembly)
        try:
            report = await maintenance.persist(
                repo, storage, s.persist_after, assembly_grace=s.assembly_lease, enqueue=_enqueue_assembly
            )
        except maintenance.JobBusy:
            return {"skipped": "another persist is running", "reindexed": reindexed}
        return {**asdict(report), "reindexed": reindexed}

    return _run(job)
