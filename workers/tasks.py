"""Celery tasks: thin wrappers over the domain functions in core/, which tests call directly too.

Task names are stable and carry the file_id in their arguments, so Flower's task list
tells an operator which upload each run was about.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from core import assembly, maintenance
from core.config import Settings
from core.files_list import ensure_files_index
from core.jobs import ASSEMBLE, CLEANUP, PERSIST
from core.redis_clients import async_client
from core.state import UploadRepository
from core.storage import open_store
from core.uploads import UploadService
from workers import observability  # noqa: F401 - its signal handlers: task log lines, assembly metrics
from workers.celery_app import app, settings


def _enqueue_assembly(file_id: str) -> None:
    app.send_task(ASSEMBLE, args=[file_id])


def _run(job):
    """Run an async domain job with its own Redis connection (one event loop per task run)."""

    async def main():
        redis = async_client(settings.redis_url, socket_connect_timeout=5)
        try:
            service = UploadService(settings, UploadRepository(redis), open_store(settings), _enqueue_assembly)
            return await job(service, settings)
        finally:
            await redis.aclose()

    return asyncio.run(main())


@app.task(name=ASSEMBLE)
def assemble(file_id: str) -> dict:
    return _run(lambda service, s: assembly.assemble(service, file_id, lease_seconds=s.assembly_lease))


@app.task(name=CLEANUP)
def cleanup(older_than: float | None = None, wait_for_lock: bool = False) -> dict:
    async def job(service: UploadService, s: Settings) -> dict:
        age = s.stale_after if older_than is None else older_than
        try:
            report = await maintenance.cleanup(service, age, wait_for_lock=60.0 if wait_for_lock else 0.0)
        except maintenance.JobBusy:
            return {"skipped": "another cleanup is running", "removed": [], "freed_bytes": 0}
        return asdict(report)

    return _run(job)


@app.task(name=PERSIST)
def persist() -> dict:
    async def job(service: UploadService, s: Settings) -> dict:
        # After Redis lost everything, the files list comes back here even if nobody asks for it.
        reindexed = await ensure_files_index(service)
        try:
            report = await maintenance.persist(
                service, s.persist_after, assembly_grace=s.assembly_lease, enqueue=service.enqueue_assembly
            )
        except maintenance.JobBusy:
            return {"skipped": "another persist is running", "reindexed": reindexed}
        return {**asdict(report), "reindexed": reindexed}

    return _run(job)
