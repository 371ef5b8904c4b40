"""core/redis_mux.py against a real redis-server: many callers on one connection each get their
own reply, whatever happens to the others (an error reply, a caller that gives up, a connection
killed under them, a script cache flushed)."""

from __future__ import annotations

import asyncio
import inspect

import redis

from core.config import Settings
from core.redis_clients import async_redis
from core.redis_mux import SharedConnection

ECHO = "if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end return {KEYS[1], ARGV[1]}"


async def redis_runs(client, command: str) -> bool:
    """Whether Redis is running `command` for some connection (CLIENT LIST, from another one)."""
    return any(c.get("cmd") == command for c in await client.client_list())


async def until(check, what: str, seconds: float = 10.0) -> None:
    """Until `check()` (awaited if need be) is true: the order a test needs, without guessing it
    with a sleep."""
    ends = asyncio.get_running_loop().time() + seconds
    while not (await result if inspect.isawaitable(result := check()) else result):
        if asyncio.get_running_loop().time() > ends:
            raise TimeoutError(f"no {what} after {seconds} s")
        await asyncio.sleep(0.005)


def run_shared(redis_server, body) -> None:
    """`body(shared, client)` on a shared connection of the API's own client kind."""
    url = redis_server.url.rsplit("/", 1)[0] + "/1"

    async def run():
        client = async_redis(Settings(redis_url=url, redis_socket_timeout=5))
        shared = SharedConnection(client)
        try:
            await body(shared, client)
        finally:
            await shared.aclose()
            await client.aclose()

    asyncio.run(run())


def test_concurrent_callers_get_their_own_replies_on_one_connection(redis_db, redis_server):
    async def body(shared, client):
        script = client.register_script(ECHO)
        replies = await asyncio.gather(*(shared.run_script(script, [f"k{i}"], [str(i)]) for i in range(500)))
        assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(500)]
        ids = await asyncio.gather(*(shared.execute("CLIENT", "ID") for _ in range(50)))
        assert len(set(ids)) == 1  # every command went over the same connection

    run_shared(redis_server, body)


def test_an_error_reply_fails_its_own_command_only(redis_db, redis_server):
    async def body(shared, client):
        script = client.register_script(ECHO)
        args = ["a", "fail", "b", "fail", "c"]
        replies = await asyncio.gather(*(shared.run_script(script, ["k"], [a]) for a in args), return_exceptions=True)
        assert replies[0] == [b"k", b"a"] and replies[2] == [b"k", b"b"] and replies[4] == [b"k", b"c"]
        assert all(isinstance(replies[i], redis.ResponseError) for i in (1, 3))
        assert "asked to fail" in str(replies[1])

    run_shared(redis_server, body)


def test_a_caller_that_gives_up_leaves_the_order_of_replies_intact(redis_db, redis_server):
    async def body(shared, client):
        script = client.register_script(ECHO)
        blocked = asyncio.create_task(shared.execute("BLPOP", "ft-test-nothing", "0.5"))
        await until(lambda: redis_runs(client, "blpop"), "the BLPOP at Redis")
        behind = [asyncio.create_task(shared.run_script(script, ["k"], [str(i)])) for i in range(3)]
        await until(lambda: len(shared._replies) == 4, "three commands queued behind it")
        blocked.cancel()  # its reply (nil, in 0.5 s) still comes, first, and is dropped
        assert await asyncio.gather(*behind) == [[b"k", str(i).encode()] for i in range(3)]
        assert await shared.execute("ECHO", "after") == b"after"

    run_shared(redis_server, body)


def test_a_killed_connection_fails_over_to_a_new_one(redis_db, redis_server):
    async def body(shared, client):
        first = await shared.execute("CLIENT", "ID")
        in_flight = asyncio.create_task(shared.execute("BLPOP", "ft-test-nothing", "0.3"))
        await until(lambda: redis_runs(client, "blpop"), "the BLPOP at Redis")
        assert redis_db.client_kill_filter(_id=first) == 1
        # Failed with its connection, then sent once more on a new one (as redis-py's own retry).
        assert await in_flight is None
        second = await shared.execute("CLIENT", "ID")
        assert second != first
        assert [c for c in redis_db.client_list() if int(c["id"]) == first] == []

    run_shared(redis_server, body)


def test_a_flushed_script_cache_is_filled_again(redis_db, redis_server):
    async def body(shared, client):
        script = client.register_script(ECHO)
        assert await shared.run_script(script, ["k"], ["1"]) == [b"k", b"1"]
        await client.script_flush()
        assert await shared.run_script(script, ["k"], ["2"]) == [b"k", b"2"]

    run_shared(redis_server, body)


def test_callers_that_find_a_script_missing_together_load_it_once(redis_db, redis_server):
    """A new API process's first burst, or every chunk in flight when Redis restarts: one SCRIPT
    LOAD for all of them (each used to load it on a pooled connection of its own)."""

    async def script_loads(client) -> int:
        stats = await client.info("commandstats")  # Redis 7 counts subcommands apart; 6 does not
        return int(stats.get("cmdstat_script|load", stats.get("cmdstat_script", {})).get("calls", 0))

    async def body(shared, client):
        script = client.register_script(ECHO)
        await client.script_flush()
        before = await script_loads(client)
        replies = await asyncio.gather(*(shared.run_script(script, ["k"], [str(i)]) for i in range(200)))
        assert replies == [[b"k", str(i).encode()] for i in range(200)]
        assert await script_loads(client) - before == 1

    run_shared(redis_server, body)


def test_a_redis_that_is_gone_fails_every_caller_and_none_hangs(redis_server):
    async def body(shared, client):
        await shared.execute("PING")
        await client.connection_pool.disconnect()
        redis_server.proc.terminate()
        redis_server.proc.wait(10)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(shared.execute("PING") for _ in range(20)), return_exceptions=True), 10
            )
            assert all(isinstance(r, redis.ConnectionError) for r in results), results
        finally:
            redis_server.restart()
        assert await shared.execute("PING") == b"PONG"

    run_shared(redis_server, body)
