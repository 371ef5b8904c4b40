"""The fast layer: the whole app in the test process, on fakeredis, in well under a second a test.

`TestClient(create_app(settings, make_redis=..., make_jobs=...))` serves every request
in-process; Redis is a fakeredis server (Lua included, through `lupa`) shared by the app and
the stand-in worker below. No redis-server, uvicorn or Celery process is started: those run,
for real, in tests/integration and tests/e2e, which stay the reference.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import pytest
from fastapi.testclient import TestClient

from core.config import Settings
from core.tokens import issue_token
from core.users import UserStore
from tests.fast.inprocess import InProcessWorker, fast_settings, in_process_client
from tests.support import JWT_SECRET, bearer

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
    Their tokens are issued as POST /token issues them; test_signin.py signs in for real."""
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
    settings = fast_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    with closing(sqlite3.connect(users_template[0])) as source, closing(sqlite3.connect(settings.users_db)) as copy:
        source.backup(copy)
    return settings


@pytest.fixture
def fake_server() -> fakeredis.FakeServer:
    """One fake Redis server per test, shared by the app, the worker and the test itself."""
    return fakeredis.FakeServer()


@pytest.fixture
def fake_redis(fake_server) -> Iterator[fakeredis.FakeRedis]:
    """A synchronous client of the same fake server, for a test to look at the keys."""
    client = fakeredis.FakeRedis(server=fake_server)
    yield client
    client.close()


@pytest.fixture
def worker(settings, fake_server) -> Iterator[InProcessWorker]:
    stand_in = InProcessWorker(settings, fake_server)
    try:
        yield stand_in
    finally:
        stand_in.close()


@pytest.fixture
def make_client(settings, fake_server, worker) -> Iterator[Callable[..., TestClient]]:
    """make_client(**settings_changes): the app in-process (lifespan run), on the shared fake
    server; each client is closed (lifespan ended) on the way out."""
    with ExitStack() as clients:

        def make(**changes) -> TestClient:
            app_settings = settings.model_copy(update=changes) if changes else settings
            return clients.enter_context(in_process_client(app_settings, fake_server, worker))

        yield make


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
