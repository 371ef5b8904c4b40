"""The API's Redis clients: bounded pools that make a busy Redis wait and a dead one fail fast.

A client per request would open a connection per request: under a few hundred devices at once
the connects themselves timed out and uploads failed with 503 while Redis was fine. Here each
API process has one pool of at most FT_REDIS_MAX_CONNECTIONS connections, reused; a request
that finds them all in use waits up to FT_REDIS_POOL_TIMEOUT seconds for one (Redis is busy:
queue). A Redis that does not accept a connection within FT_REDIS_CONNECT_TIMEOUT (refused
at once, or no answer) is down: after one quick retry the request fails with 503
`unavailable`, well under a second when the connection is refused.

With a `sentinel://` FT_REDIS_URL (core/redis_url.py) every client here asks the sentinels
for the current primary when it opens a connection: after a failover, connections to the old
primary fail (503 `unavailable` meanwhile), and the next ones go to the promoted replica.
Every Redis client of the code is made here (Celery's, kombu's and RedBeat's excepted: those
are configured in celeryconfig.py from the same URL).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff

from core.config import Settings
from core.redis_url import SentinelTarget, is_sentinel_url, parse_sentinel_url

RETRIES = 1  # one more try for a connection that broke or a connect that timed out
BACKOFF = dict(base=0.02, cap=0.1)  # seconds before that try
HEALTH_CHECK_INTERVAL = 30  # a connection idle this long is pinged before use


class RedisBusy(redis.ConnectionError):
    """Every pooled connection stayed in use for FT_REDIS_POOL_TIMEOUT: Redis (or this process)
    is saturated, not down. Answered 503 `overloaded`, not `unavailable`."""


# For the type checker the mixin below is the blocking pool it is mixed into; at run time it is a
# plain class, so that each pool's method order stays as its bases list it.
if TYPE_CHECKING:
    _WaitingBase = aioredis.BlockingConnectionPool
else:
    _WaitingBase = object


class _Waiting(_WaitingBase):
    """A blocking pool whose waiters are served first come, first served, and whose wait that
    runs out is RedisBusy (mixed into the pools below).

    redis-py's blocking pool waits on a Condition: a waiter that is notified must take the
    lock again behind requests that just arrived, which find the freed connection first, and
    it then waits again at the back. With a thousand devices on 64 connections some requests
    waited 6 s for a connection while most waited one. A FIFO semaphore of `max_connections`
    permits in front of it hands connections out in order of asking; the pool's own wait is
    then never taken."""

    _permits: asyncio.Semaphore | None = None
    _granted: set[AbstractConnection] | None = None  # connections handed out under a permit

    # Arguments passed on as given: redis-py deprecates passing a command name at all.
    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._permits is None or self._granted is None:
            self._permits, self._granted = asyncio.Semaphore(self.max_connections), set()
        permits = self._permits
        if permits.locked():  # a wait: bounded by the pool timeout (no timer when a permit is free)
            try:
                async with asyncio.timeout(self.timeout):
                    await permits.acquire()
            except TimeoutError:
                raise self._busy() from None
        else:
            await permits.acquire()
        try:
            # redis-py leaves BlockingConnectionPool.get_connection unannotated. When its connect
            # fails it releases the connection itself: not granted yet, so no permit goes back twice.
            connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException as exc:
            permits.release()
            if isinstance(exc, redis.ConnectionError) and isinstance(exc.__cause__, TimeoutError):
                raise self._busy() from exc
            raise
        self._granted.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            if self._permits is not None and self._granted is not None and connection in self._granted:
                self._granted.discard(connection)
                self._permits.release()

    def _busy(self) -> RedisBusy:
        return RedisBusy(f"no Redis connection came free within {self.timeout:g} s")


class _WaitingPool(_Waiting, aioredis.BlockingConnectionPool):
    pass


class _WaitingSentinelPool(_Waiting, aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The bounded, waiting pool whose connections go to the primary the sentinels name."""


class _SentinelRedis(redis.Redis):
    def close(self) -> None:
        super().close()
        # master_for gives this class a sentinel pool; close its connections to the sentinels too.
        cast(redis.sentinel.SentinelConnectionPool, self.connection_pool).sentinel_manager.close()


class _AsyncSentinelRedis(aioredis.Redis):
    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        # As above: master_for gives this class a sentinel pool.
        await cast(aiosentinel.SentinelConnectionPool, self.connection_pool).sentinel_manager.aclose()


def _sentinel_options(target: SentinelTarget, options: dict[str, Any]) -> dict[str, Any]:
    """Sentinel(...)'s arguments: the primary's credentials and database, and for the sentinels
    their own password and the same socket timeouts."""
    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_password is not None:
        sentinel_kwargs["password"] = target.sentinel_password
    return dict(
        sentinels=list(target.sentinels),
        sentinel_kwargs=sentinel_kwargs,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client on `url`: a plain Redis, or the primary of a Sentinel-watched one."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    client: redis.Redis = redis.sentinel.Sentinel(**_sentinel_options(target, options)).master_for(
        target.master_name, redis_class=_SentinelRedis
    )
    return client


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """An event-loop client on `url` (a worker's task run); `aclose()` closes all it opened."""
    if not is_sentinel_url(url):
        return aioredis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    client: aioredis.Redis = aiosentinel.Sentinel(**_sentinel_options(target, options)).master_for(
        target.master_name, redis_class=_AsyncSentinelRedis
    )
    return client


def _connection_options(settings: Settings) -> dict[str, Any]:
    return {
        "max_connections": settings.redis_max_connections,
        "timeout": settings.redis_pool_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }


def async_redis(settings: Settings) -> aioredis.Redis:
    """The API's event-loop client (uploads, status, health, ...)."""
    # With a pool given, the client uses the retry policy of the pool's connections.
    retry = AsyncRetry(ExponentialWithJitterBackoff(**BACKOFF), RETRIES)
    if is_sentinel_url(settings.redis_url):
        target = parse_sentinel_url(settings.redis_url)
        # The sentinels answer at once or are down: the short connect timeout for all they do.
        quick = {
            "socket_connect_timeout": settings.redis_connect_timeout,
            "socket_timeout": settings.redis_connect_timeout,
        }
        sentinel = aiosentinel.Sentinel(**_sentinel_options(target, quick))
        # master_for's arguments override the Sentinel's for the primary's connections.
        client: aioredis.Redis = sentinel.master_for(
            target.master_name,
            redis_class=_AsyncSentinelRedis,
            connection_pool_class=_WaitingSentinelPool,
            retry=retry,
            **_connection_options(settings),
        )
        return client
    pool = _WaitingPool.from_url(settings.redis_url, retry=retry, **_connection_options(settings))
    # from_pool: the client owns its pool, so aclose() disconnects the pool's connections too
    # (Redis(connection_pool=pool) would leave them open for the garbage collector).
    return aioredis.Redis.from_pool(pool)
