"""The app served in the test process on a fakeredis server, with a stand-in for the Celery
worker: the pieces tests/fast/conftest.py builds its fixtures from."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fakeredis
from fastapi.testclient import TestClient

from api.main import create_app
from core import assembly
from core.config import Settings
from core.state import UploadRepository
from core.storage import ByteStore, open_store
from tests.support import JWT_SECRET


def fast_settings(data_dir: Path) -> Settings:
    """Settings of an in-process app: no Redis URL is ever dialled (fakeredis is handed in)."""
    return Settings(data_dir=data_dir, redis_url="redis://fakeredis.invalid/0", jwt_secret=JWT_SECRET, min_free_bytes=0)


class InProcessWorker:
    """Stands in for the Celery worker: `assemble(file_id)` queues the file, and a thread runs
    `core.assembly.assemble`, the domain function the `uploads.assemble` task wraps, with a Redis
    client and a repository of its own, as the task does in its worker process. The API
    answers before the assembly ends, as it does with Celery: tests wait for `complete`."""

    def __init__(self, settings: Settings, server: fakeredis.FakeServer, store: ByteStore | None = None) -> None:
        self.settings = settings
        self.server = server
        self.store = store  # None: a POSIX store on the settings' data dir, as the worker opens
        self.errors: list[BaseException] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="in-process-worker", daemon=True)
        self._thread.start()

    def assemble(self, file_id: str) -> None:
        self._queue.put(file_id)

    def assemblies(self, execute: object) -> InProcessWorker:
        """What the app queues assemblies with (core/jobs.py Jobs.assemblies): this worker's
        queue instead of Celery's list in Redis."""
        return self

    async def push(self, file_id: str) -> None:
        self.assemble(file_id)

    def cleanup(self, older_than: int | None):
        raise NotImplementedError("POST /cleanup runs on a Celery worker: tests/e2e/test_admin.py covers it")

    def result(self, task_id: str):
        raise NotImplementedError("GET /tasks reads Celery results: tests/e2e/test_admin.py covers it")

    def _work(self) -> None:
        while (file_id := self._queue.get()) is not None:
            try:
                asyncio.run(self._assemble(file_id))
            except BaseException as exc:
                self.errors.append(exc)

    async def _assemble(self, file_id: str) -> None:
        redis = fakeredis.FakeAsyncRedis(server=self.server)
        try:
            repo = UploadRepository(redis)
            storage = self.store if self.store is not None else open_store(self.settings)
            await assembly.assemble(repo, storage, file_id, lease_seconds=self.settings.assembly_lease)
        finally:
            await redis.aclose()

    def close(self) -> None:
        """Stop after the queued work; an assembly that raised fails the test here."""
        self._queue.put(None)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the in-process worker did not stop"
        if self.errors:
            raise self.errors[0]


@contextmanager
def in_process_client(
    settings: Settings, server: fakeredis.FakeServer, worker: InProcessWorker, fast_lane: bool = True
) -> Iterator[TestClient]:
    """`create_app(settings)` on the fake server, its lifespan run, as a TestClient; the app's
    store is the worker's (a POSIX store on the data dir unless the worker was given one)."""
    app = create_app(
        settings,
        make_redis=lambda _: fakeredis.FakeAsyncRedis(server=server),
        make_jobs=lambda _: worker,
        make_store=lambda s: worker.store if worker.store is not None else open_store(s),
        fast_lane=fast_lane,
    )
    with TestClient(app) as client:
        yield client
