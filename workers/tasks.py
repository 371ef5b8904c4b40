"""Celery tasks: thin wrappers over the domain functions in core/, which tests call directly too.

Task names are stable and carry the file_id in their arguments, so Flower's task list
tells an operator which upload each run was about. They are shared tasks, bound to the app
`workers.celery_app.create_app(settings)` builds; each run takes the settings from that app.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from celery import Task, shared_task

from core import assembly, maintenance
from core.config import Settings
from core.files_list import ensure_files_index
from core.jobs import ASSEMBLE, CLEANUP, PERSIST
from core.redis_clients import async_client
from core.state import UploadRepository
from core.storage import Storage
from core.uploads import UploadService


def _run(task: Task, job):
    """Run an async domain job with its own Redis connection (one event loop per task run)."""
    app = task.app
    settings: Settings = app.settings

    def enqueue_assembly(file_id: str) -> None:
        app.send_task(ASSEMBLE, args=[file_id])

    async def main():
        redis = async_client(settings.redis_url, socket_connect_timeout=5)
        try:
            service = UploadService(settings, UploadRepository(redis), Storage(settings), enqueue_assembly)
            return await job(service, settings)
        finally:
            await redis.aclose()

    return asyncio.run(main())


@shared_task(name=ASSEMBLE, bind=True)
def assemble(self: Task, file_id: str) -> dict:
    return _run(self, lambda service, s: assembly.assemble(service, file_id, lease_seconds=s.assembly_lease))


@shared_task(name=CLEANUP, bind=True)
def cleanup(self: Task, older_than: float | None = None, wait_for_lock: bool = False) -> dict:
    async def job(service: UploadService, s: Settings) -> dict:
        age = s.stale_after if older_than is None else older_than
        try:
            report = await maintenance.cleanup(service, age, wait_for_lock=60.0 if wait_for_lock else 0.0)
        except maintenance.JobBusy:
            return {"skipped": "another cleanup is running", "removed": [], "freed_bytes": 0}
        return asdict(report)

    return _run(self, job)


@shared_task(name=PERSIST, bind=True)
def persist(self: Task) -> dict:
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

    return _run(self, job)
