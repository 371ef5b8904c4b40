"""core/redis_clients.py against a real redis-server: a busy pool waits and then says busy; a
Redis that is down fails at once, as a different error."""

from __future__ import annotations

import asyncio

import pytest
import redis

from core.config import Settings
from core.redis_clients import RedisBusy, async_redis
from ops.redis_server import free_port


def settings_for(url: str, **extra) -> Settings:
    return Settings(redis_url=url, **extra)


def test_a_request_waits_for_a_busy_connection(redis_db, redis_server):
    url = redis_server.url.rsplit("/", 1)[0] + "/1"

    async def run():
        client = async_redis(settings_for(url, redis_max_connections=1, redis_pool_timeout=5))
        held = asyncio.create_task(client.blpop(["ft-test-nothing"], timeout=1))  # holds the one connection 1 s
        await asyncio.sleep(0.1)
        assert await client.ping() is True  # waited for it instead of failing
        await held
        assert client.connection_pool.max_connections == 1
        await client.aclose()

    asyncio.run(run())


def test_a_pool_that_stays_busy_past_its_timeout_is_busy_not_down(redis_db, redis_server):
    url = redis_server.url.rsplit("/", 1)[0] + "/1"

    async def run():
        client = async_redis(settings_for(url, redis_max_connections=1, redis_pool_timeout=0.2))
        held = asyncio.create_task(client.blpop(["ft-test-nothing"], timeout=1))
        await asyncio.sleep(0.1)
        with pytest.raises(RedisBusy):
            await client.ping()
        await held
        assert await client.ping() is True
        await client.aclose()

    asyncio.run(run())


def test_a_redis_that_is_down_fails_fast_and_is_not_busy():
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def run():
        client = async_redis(settings_for(url))
        with pytest.raises(redis.ConnectionError) as raised:
            await client.ping()
        assert not isinstance(raised.value, RedisBusy)
        await client.aclose()

    asyncio.run(run())
