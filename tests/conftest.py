"""Fixtures that run real parts: our own redis-server, the API under uvicorn, Celery workers.

Nothing here touches a Redis that the tests did not start themselves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from core.config import Settings
from core.users import UserStore
from ops.redis_server import free_port, start_redis
from tests.support import JWT_SECRET, Proc, login, start_api, start_worker, wait_until


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (make test-slow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with `make test-slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@dataclass
class RedisServer:
    port: int
    url: str
    proc: object
    data_dir: Path

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def restart(self) -> None:
        """Stop and start again: this server keeps nothing on disk, so all state is lost."""
        self.proc.terminate()
        self.proc.wait(10)
        self.proc = start_redis(self.port, self.data_dir, persistent=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    data_dir = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = start_redis(port, data_dir, persistent=False)
    server = RedisServer(port, f"redis://127.0.0.1:{port}/0", proc, data_dir)
    yield server
    server.proc.terminate()
    server.proc.wait(10)


@pytest.fixture
def client():
    """One HTTP client (keep-alive connection) for a test's requests to a stack."""
    with httpx.Client(timeout=120) as c:
        yield c


@pytest.fixture
def redis_db(redis_server) -> redis.Redis:
    """A clean database 1 on our own server (the session stack uses database 0)."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/1")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(tmp_path, redis_server) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/1",
        jwt_secret=JWT_SECRET,
        min_free_bytes=0,
    )


@dataclass
class Stack:
    """The real service: API (uvicorn) and one Celery worker on our Redis."""

    url: str
    data_dir: Path
    redis_url: str
    log_dir: Path
    api: Proc
    worker: Proc
    users: UserStore

    def add_user(self, role: str = "user", password: str = "correct horse battery") -> tuple[str, str]:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        self.users.set(name, password, role)
        return name, password

    def token(self, role: str = "user") -> str:
        name, password = self.add_user(role)
        return login(self.url, name, password)


def _start_stack(root: Path, redis_url: str, **env: str) -> Stack:
    data_dir = root / "data"
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    worker = start_worker(data_dir, redis_url, log_dir, **env)
    api = None
    try:
        api, url = start_api(data_dir, redis_url, log_dir, **env)
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).json().get("workers", 0) >= 1,
                   timeout=60, what="a worker heartbeat")
    except BaseException:
        # Never leave a worker behind: it would take tasks from a later test's database.
        worker.stop()
        if api is not None:
            api.stop()
        raise
    return Stack(url, data_dir, redis_url, log_dir, api, worker, UserStore(data_dir / "users.sqlite3"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory, redis_server) -> Stack:
    # Every test logs in from 127.0.0.1: the per-address login limit is tested on its own stack.
    stack = _start_stack(tmp_path_factory.mktemp("stack"), redis_server.url,
                         FT_LOGIN_MAX_FAILURES_PER_ADDRESS="100000")
    yield stack
    stack.api.stop()
    stack.worker.stop()


@pytest.fixture
def make_stack(tmp_path, redis_server):
    """Stacks of their own (own data dir, own Redis database) for tests that break things."""
    started: list[tuple[Stack, str]] = []

    def make(**env: str) -> Stack:
        db = 2 + len(started)
        url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
        redis.Redis.from_url(url).flushdb()
        stack = _start_stack(tmp_path / f"stack{db}", url, **env)
        started.append((stack, url))
        return stack

    yield make
    for stack, url in started:
        stack.api.stop()
        stack.worker.stop()
        redis.Redis.from_url(url).flushdb()
