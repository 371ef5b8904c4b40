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


def test_connections_go_to_waiters_in_the_order_they_asked(redis_db, redis_server):
    """A request that arrives while others wait queues behind them: it does not take the
    connection that was just freed for the first of them (redis-py's own Condition lets it)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/1"

    async def run():
        client = async_redis(settings_for(url, redis_max_connections=1, redis_pool_timeout=5))
        pool, served = client.connection_pool, []
        held = await pool.get_connection()

        async def request(name: str) -> None:
            connection = await pool.get_connection()
            served.append(name)
            await asyncio.sleep(0)  # hold it for a moment, as a command would
            await pool.release(connection)

        waiting = [asyncio.create_task(request(f"waiter {i}")) for i in range(5)]
        for _ in range(5):  # each task runs up to its wait within a turn of the loop (no I/O: none connects)
            await asyncio.sleep(0)
        release = asyncio.create_task(pool.release(held))
        late = asyncio.create_task(request("late arrival"))  # asks while the freed connection is handed on
        await asyncio.gather(release, late, *waiting)
        assert served == [f"waiter {i}" for i in range(5)] + ["late arrival"]
        assert await client.ping() is True  # the connection came back
        await client.aclose()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_failed_connects_give_their_permit_back_once(redis_db, redis_server):
    """redis-py releases a connection whose connect failed itself: that must not count as a second
    return of its permit (the pool would then let more requests past than it has connections and
    its waiters would no longer be served in order). Looked at from inside: nothing outside shows
    it until the next overload."""
    down = f"redis://127.0.0.1:{free_port()}/0"
    up = redis_server.url.rsplit("/", 1)[0] + "/1"

    async def run():
        for url, expect_error in ((down, True), (up, False)):
            client = async_redis(settings_for(url, redis_max_connections=2))
            for _ in range(5):
                if expect_error:
                    with pytest.raises(redis.ConnectionError):
                        await client.ping()
                else:
                    assert await asyncio.gather(client.ping(), client.ping(), client.ping()) == [True] * 3
            pool = client.connection_pool
            assert pool._permits._value == 2 and not pool._granted
            await client.aclose()

    asyncio.run(asyncio.wait_for(run(), 60))
