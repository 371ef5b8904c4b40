"""Celery tasks: thin wrappers over the domain functions in core/, which tests call directly too.

Task names are stable and carry the file_id in their arguments, so Flower's task list
tells an operator which upload each run was about. They are shared tasks, bound to the app
`workers.celery_app.create_app(settings)` builds; each run takes the settings from that app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from celery import Task, shared_task

from core import assembly, maintenance
from core.config import Settings
from core.files_list import ensure_files_index
from core.jobs import ASSEMBLE, CLEANUP, PERSIST
from core.redis_clients import async_client
from core.state import UploadRepository
from core.storage import ByteStore, open_store

Job = Callable[[UploadRepository, ByteStore, Settings, Callable[[str], None]], Awaitable[dict[str, Any]]]


def _run(task: Task, job: Job) -> dict[str, Any]:
    """Run an async domain job with its collaborators: a Redis connection of its own (one event
    loop per task run), the storage, the app's settings and a way to queue an assembly."""
    app = task.app
    settings: Settings = app.settings

    def enqueue_assembly(file_id: str) -> None:
        app.send_task(ASSEMBLE, args=[file_id])

    async def main() -> dict[str, Any]:
        redis = async_client(settings.redis_url, socket_connect_timeout=5)
        try:
            return await job(UploadRepository(redis), open_store(settings), settings, enqueue_assembly)
        finally:
            await redis.aclose()

    return asyncio.run(main())


@shared_task(name=ASSEMBLE, bind=True)
def assemble(self: Task, file_id: str) -> dict[str, Any]:
    return _run(
        self, lambda repo, storage, s, _: assembly.assemble(repo, storage, file_id, lease_seconds=s.assembly_lease)
    )


@shared_task(name=CLEANUP, bind=True)
def cleanup(self: Task, older_than: float | None = None, wait_for_lock: bool = False) -> dict[str, Any]:
    async def job(
        repo: UploadRepository, storage: ByteStore, s: Settings, enqueue: Callable[[str], None]
    ) -> dict[str, Any]:
        age = s.stale_after if older_than is None else older_than
        wait = 60.0 if wait_for_lock else 0.0
        try:
            report = await maintenance.cleanup(repo, storage, age, wait_for_lock=wait, enqueue_assembly=enqueue)
        except maintenance.JobBusy:
            return {"skipped": "another cleanup is running", "removed": [], "freed_bytes": 0}
        return asdict(report)

    return _run(self, job)


@shared_task(name=PERSIST, bind=True)
def persist(self: Task) -> dict[str, Any]:
    async def job(
        repo: UploadRepository, storage: ByteStore, s: Settings, enqueue: Callable[[str], None]
    ) -> dict[str, Any]:
        # After Redis lost everything, the files list comes back here even if nobody asks for it.
        reindexed = await ensure_files_index(repo, storage, enqueue)
        try:
            report = await maintenance.persist(
                repo, storage, s.persist_after, assembly_grace=s.assembly_lease, enqueue=enqueue
            )
        except maintenance.JobBusy:
            return {"skipped": "another persist is running", "reindexed": reindexed}
        return {**asdict(report), "reindexed": reindexed}

    return _run(self, job)
