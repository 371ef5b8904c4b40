"""The worker's tasks keep one event loop and one Redis client per process (workers/tasks.py
`_ProcessLoop`): made once, reused by every run, made afresh after a run that broke the loop
and for another app's settings. No Redis is needed: a client connects on first use only."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.config import Settings
from core.errors import NotFound
from workers.celery_app import create_app
from workers.tasks import _ProcessLoop


def _settings(tmp_path, port: int = 1) -> Settings:
    return Settings(redis_url=f"redis://127.0.0.1:{port}/0", data_dir=tmp_path)


@pytest.fixture
def loop():
    process_loop = _ProcessLoop()
    yield process_loop
    process_loop.reset()


def _probe(seen: list):
    async def job(repo, storage, settings, enqueue):
        seen.append((asyncio.get_running_loop(), repo.redis, storage))
        return {}

    return job


def _failing(exc: BaseException):
    async def job(repo, storage, settings, enqueue):
        raise exc

    return job


def test_runs_share_one_loop_and_one_client(loop, tmp_path):
    seen, settings = [], _settings(tmp_path)
    for _ in range(3):
        loop.run(settings, _probe(seen))
    assert len({id(s[0]) for s in seen}) == 1
    assert len({id(s[1]) for s in seen}) == 1
    assert len({id(s[2]) for s in seen}) == 1
    assert not seen[0][0].is_closed()
    loop.reset()
    assert seen[0][0].is_closed()


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyboardInterrupt()])
def test_an_unexpected_error_starts_the_next_run_afresh(loop, tmp_path, error):
    seen, settings = [], _settings(tmp_path)
    loop.run(settings, _probe(seen))
    with pytest.raises(type(error)):
        loop.run(settings, _failing(error))
    loop.run(settings, _probe(seen))
    assert seen[0][0] is not seen[1][0] and seen[0][0].is_closed()
    assert seen[0][1] is not seen[1][1]


@pytest.mark.parametrize("error", [OSError(28, "full"), NotFound("no such upload")])
def test_disk_and_domain_errors_keep_the_loop(loop, tmp_path, error):
    seen, settings = [], _settings(tmp_path)
    loop.run(settings, _probe(seen))
    with pytest.raises(type(error)):
        loop.run(settings, _failing(error))
    loop.run(settings, _probe(seen))
    assert seen[0][0] is seen[1][0] and seen[0][1] is seen[1][1]


def test_a_redis_error_gets_a_fresh_client_and_the_assembly_is_retried(loop, tmp_path):
    """Pooled connections may lead to a primary that failed over: the next run connects anew
    (asking the sentinels), and the assemble task is retried on such errors, with backoff."""
    seen, settings = [], _settings(tmp_path)
    loop.run(settings, _probe(seen))
    with pytest.raises(RedisConnectionError):
        loop.run(settings, _failing(RedisConnectionError("Connection closed by server.")))
    loop.run(settings, _probe(seen))
    assert seen[0][1] is not seen[1][1]
    task = create_app(settings).tasks["uploads.assemble"]
    assert set(task.autoretry_for) >= {RedisConnectionError, RedisTimeoutError} and task.max_retries >= 3
    assert task.retry_backoff_max < settings.task_visibility_timeout


def test_another_apps_settings_get_their_own_client(loop, tmp_path):
    seen: list = []
    first, second = _settings(tmp_path / "a", 1), _settings(tmp_path / "b", 2)
    loop.run(first, _probe(seen))
    loop.run(second, _probe(seen))
    assert seen[0][0] is seen[1][0]  # one loop
    assert seen[0][1] is not seen[1][1] and seen[1][1].connection_pool.connection_kwargs["port"] == 2


def test_each_thread_has_its_own_loop(loop, tmp_path):
    seen, settings = [], _settings(tmp_path)
    loop.run(settings, _probe(seen))

    def in_a_thread() -> None:
        loop.run(settings, _probe(seen))
        loop.reset()

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join(10)
    assert seen[0][0] is not seen[1][0]
