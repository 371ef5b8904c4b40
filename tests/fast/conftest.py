"""The fast layer: the whole app in the test process, on fakeredis, in well under a second a test.

`TestClient(create_app(settings, make_redis=..., make_jobs=...))` serves every request
in-process; Redis is a fakeredis server (Lua included, through `lupa`) shared by the app and
the stand-in worker below. No redis-server, uvicorn or Celery process is started: those run,
for real, in tests/integration and tests/e2e, which stay the reference.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core import assembly
from core.config import Settings
from core.state import UploadRepository
from core.storage import Storage
from core.tokens import issue_token
from core.uploads import UploadService
from core.users import UserStore
from tests.support import JWT_SECRET, bearer


class InProcessWorker:
    """Stands in for the Celery worker: `assemble(file_id)` queues the file, and a thread runs
    `core.assembly.assemble`, the domain function the `uploads.assemble` task wraps, with a Redis
    client and an UploadService of its own, as the task does in its worker process. The API
    answers before the assembly ends, as it does with Celery: tests wait for `complete`."""

    def __init__(self, settings: Settings, server: fakeredis.FakeServer) -> None:
        self.settings = settings
        self.server = server
        self.results: list[dict] = []
        self.errors: list[BaseException] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="in-process-worker", daemon=True)
        self._thread.start()

    def assemble(self, file_id: str) -> None:
        self._queue.put(file_id)

    def cleanup(self, older_than: int | None):
        raise NotImplementedError("POST /cleanup runs on a Celery worker: tests/e2e/test_admin.py covers it")

    def result(self, task_id: str):
        raise NotImplementedError("GET /tasks reads Celery results: tests/e2e/test_admin.py covers it")

    def _work(self) -> None:
        while (file_id := self._queue.get()) is not None:
            try:
                self.results.append(asyncio.run(self._assemble(file_id)))
            except BaseException as exc:  # noqa: BLE001 - reported by close(), never lost
                self.errors.append(exc)

    async def _assemble(self, file_id: str) -> dict:
        redis = fakeredis.FakeAsyncRedis(server=self.server)
        try:
            service = UploadService(self.settings, UploadRepository(redis), Storage(self.settings), self.assemble)
            return await assembly.assemble(service, file_id, lease_seconds=self.settings.assembly_lease)
        finally:
            await redis.aclose()

    def close(self) -> None:
        """Stop after the queued work; an assembly that raised fails the test here."""
        self._queue.put(None)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the in-process worker did not stop"
        if self.errors:
            raise self.errors[0]


PASSWORD = "correct horse battery"
ACCOUNTS = {"alice": "user", "bob": "user", "root": "admin"}


@dataclass(frozen=True)
class Account:
    name: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


@pytest.fixture(scope="session")
def users_template(tmp_path_factory) -> tuple[Path, dict[str, Account]]:
    """A user store with alice, bob and root (admin), made once: an Argon2 hash costs a good
    fraction of a second, so each test gets a copy of this file rather than hashing again.
    Their tokens are issued as POST /token issues them; test_auth.py signs in for real."""
    path = tmp_path_factory.mktemp("users") / "users.sqlite3"
    store = UserStore(path)
    accounts = {}
    for name, role in ACCOUNTS.items():
        user = store.set(name, PASSWORD, role)
        accounts[name] = Account(name, PASSWORD, issue_token(user, JWT_SECRET, 3600))
    return path, accounts


@pytest.fixture
def settings(tmp_path, users_template) -> Settings:
    """Overrides the real-Redis `settings` of tests/conftest.py: nothing here needs a Redis URL.
    The data directory starts with a copy of the template's users."""
    settings = Settings(data_dir=tmp_path / "data", redis_url="redis://fakeredis.invalid/0", jwt_secret=JWT_SECRET,
                        min_free_bytes=0)
    settings.data_dir.mkdir(parents=True)
    with closing(sqlite3.connect(users_template[0])) as source, closing(sqlite3.connect(settings.users_db)) as copy:
        source.backup(copy)
    return settings


@pytest.fixture
def redis_server_fake() -> fakeredis.FakeServer:
    """One fake Redis server per test, shared by the app, the worker and the test itself."""
    return fakeredis.FakeServer()


@pytest.fixture
def fake_redis(redis_server_fake) -> Iterator[fakeredis.FakeRedis]:
    """A synchronous client of the same fake server, for a test to look at the keys."""
    client = fakeredis.FakeRedis(server=redis_server_fake)
    yield client
    client.close()


@pytest.fixture
def worker(settings, redis_server_fake) -> Iterator[InProcessWorker]:
    stand_in = InProcessWorker(settings, redis_server_fake)
    try:
        yield stand_in
    finally:
        stand_in.close()


@pytest.fixture
def make_client(settings, redis_server_fake, worker) -> Iterator[Callable[..., TestClient]]:
    """make_client(**settings_changes): the app in-process (lifespan run), on the shared fake
    server; each client is closed (lifespan ended) on the way out."""
    clients: list[TestClient] = []

    def make(**changes) -> TestClient:
        app_settings = settings.model_copy(update=changes) if changes else settings
        app = create_app(app_settings, make_redis=lambda _: fakeredis.FakeAsyncRedis(server=redis_server_fake),
                         make_jobs=lambda _: worker)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in reversed(clients):
            client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture
def alice(users_template) -> Account:
    return users_template[1]["alice"]


@pytest.fixture
def bob(users_template) -> Account:
    return users_template[1]["bob"]


@pytest.fixture
def admin(users_template) -> Account:
    return users_template[1]["root"]
