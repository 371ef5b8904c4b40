"""Celery tasks: thin wrappers over the domain functions in core/, which tests call directly too.

Task names are stable and carry the file_id in their arguments, so Flower's task list
tells an operator which upload each run was about. They are shared tasks, bound to the app
`workers.celery_app.create_app(settings)` builds; each run takes the settings from that app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from celery import Task, shared_task
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import assembly, maintenance
from core.config import Settings
from core.errors import TransferError
from core.files_list import ensure_files_index
from core.jobs import ASSEMBLE, CLEANUP, PERSIST, AssemblyQueue
from core.redis_clients import async_client
from core.state import UploadRepository
from core.storage import ByteStore, open_store
from core.uploads import EnqueueAssembly

Job = Callable[[UploadRepository, ByteStore, Settings, EnqueueAssembly], Awaitable[dict[str, Any]]]


class _ProcessLoop(threading.local):
    """One event loop and one Redis client per worker process (per thread, for a threads
    pool), kept from task to task.

    A loop and a connection made per task run cost more than a small assembly itself: a
    connect, redis-py's driver-version lookup, a fresh thread pool (about a third of a 1 MiB
    upload's assembly CPU). They are made on first use in each process (after the prefork
    pool's fork, never inherited). A run that raises anything but an OS or domain error
    (TransferError) drops both, and the next run starts afresh: a time limit is raised into
    whatever runs and may leave the loop broken, and after a Redis error the pooled connections
    may lead to a primary that failed over (the task is retried, with a fresh client)."""

    def __init__(self) -> None:
        self._pid = 0
        self._runner: asyncio.Runner | None = None
        self._settings: Settings | None = None  # what the client and storage below were made for
        self._redis: Redis | None = None
        self._storage: ByteStore | None = None

    def run(self, settings: Settings, job: Job) -> dict[str, Any]:
        if self._pid != os.getpid() or self._runner is None:
            self._pid, self._runner = os.getpid(), asyncio.Runner()
            self._settings = self._redis = self._storage = None
        runner = self._runner

        async def main() -> dict[str, Any]:
            if self._settings is not settings or self._redis is None or self._storage is None:
                if self._redis is not None:  # another app's (tests build several in one process)
                    with contextlib.suppress(Exception):
                        await self._redis.aclose()
                self._redis = async_client(settings.redis_url, socket_connect_timeout=5)
                self._storage, self._settings = open_store(settings), settings
            # Assemblies queued again (persist, cleanup) go as the API queues them (core/jobs.py).
            enqueue = AssemblyQueue(self._redis.execute_command).push
            return await job(UploadRepository(self._redis), self._storage, settings, enqueue)

        try:
            return runner.run(main())
        except (OSError, TransferError):  # the disk's or the upload's: loop and client are fine
            raise
        except BaseException:
            self.reset()
            raise

    def reset(self) -> None:
        runner, redis = self._runner, self._redis
        self._runner = None
        self._settings = self._redis = self._storage = None
        if runner is not None:
            if redis is not None:  # the loop may be the broken part: best effort
                with contextlib.suppress(Exception):
                    runner.run(redis.aclose())
            with contextlib.suppress(Exception):
                runner.close()


_process_loop = _ProcessLoop()


def _run(task: Task, job: Job) -> dict[str, Any]:
    """Run an async domain job with its collaborators: this process's Redis client and event
    loop (`_ProcessLoop`), the storage, the app's settings and a way to queue an assembly."""
    return _process_loop.run(task.app.settings, job)


# Redis away (restarting, failing over to a replica) is retried with backoff, each time with a
# fresh client (`_ProcessLoop`); an assembly that still cannot run is queued again by the persist
# sweep once its lease lapsed. The longest wait is far below the broker's visibility timeout.
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError)


# No result stored: an assembly's outcome is the upload's state (GET /status), which nobody reads
# from Celery's backend; Flower still shows it from the worker's task events. Storing it (and the
# STARTED state task_track_started adds) cost two Redis writes and a publish per upload.
@shared_task(
    name=ASSEMBLE,
    bind=True,
    ignore_result=True,
    autoretry_for=REDIS_AWAY,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=False,
    max_retries=8,
)
def assemble(self: Task, file_id: str) -> dict[str, Any]:
    return _run(
        self, lambda repo, storage, s, _: assembly.assemble(repo, storage, file_id, lease_seconds=s.assembly_lease)
    )


@shared_task(name=CLEANUP, bind=True)
def cleanup(self: Task, older_than: float | None = None, wait_for_lock: bool = False) -> dict[str, Any]:
    async def job(repo: UploadRepository, storage: ByteStore, s: Settings, enqueue: EnqueueAssembly) -> dict[str, Any]:
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
    async def job(repo: UploadRepository, storage: ByteStore, s: Settings, enqueue: EnqueueAssembly) -> dict[str, Any]:
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
