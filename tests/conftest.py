"""Fixtures that run real parts: our own redis-server, the API under uvicorn, Celery workers.

Nothing here touches a Redis that the tests did not start themselves. Its databases:
0 the session stack, 1 `redis_db`/`settings`, 2-11 `make_stack`, 12 test_accel.py,
13 test_disk_full.py, 14 test_launcher.py, 15 test_compose.py.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import hypothesis
import pytest
import redis

from core.config import Settings
from ops.redis_server import free_port, start_redis
from tests.support import JWT_SECRET, ROOT, Stack, own_stack, running_stack

# Property tests: `make test` (and CI) runs hypothesis's usual 100 examples per property;
# `make test-fast`, the developer's loop, a quarter of that (HYPOTHESIS_PROFILE=dev). Tests
# that ask for more examples ask for a multiple of the profile's (`settings.default.max_examples`).
hypothesis.settings.register_profile("dev", max_examples=25)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (make test-slow)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        # Marked for `make test-fast`, which leaves out every test that starts a redis-server.
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_redis)
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
    try:
        yield server
    finally:
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


@pytest.fixture(scope="session")
def stack(tmp_path_factory, redis_server) -> Stack:
    # Every test logs in from 127.0.0.1: the per-address login limit is tested on its own stack.
    with running_stack(
        tmp_path_factory.mktemp("stack"), redis_server.url, FT_LOGIN_MAX_FAILURES_PER_ADDRESS="100000"
    ) as stack:
        yield stack


@pytest.fixture
def make_stack(tmp_path, redis_server):
    """Stacks of their own (own data dir, own Redis database) for tests that break things."""
    with ExitStack() as stacks:
        count = 0

        def make(**env: str) -> Stack:
            nonlocal count
            db = 2 + count
            count += 1
            assert db <= 11, "make_stack has databases 2-11 (see this module's docstring)"
            return stacks.enter_context(own_stack(tmp_path / f"stack{db}", redis_server.url, db, **env))

        yield make


@pytest.fixture
def cli_env(stack, tmp_path) -> dict[str, str]:
    """The environment of a `python -m client` process: a new user of the shared stack, its own
    token cache."""
    name, password = stack.add_user()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env.update(
        FT_USERNAME=name,
        FT_PASSWORD=password,
        FT_CLIENT_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env
