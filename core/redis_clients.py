"""The API's Redis clients: bounded pools that make a busy Redis wait and a dead one fail fast.

A client per request would open a connection per request: under a few hundred devices at once
the connects themselves timed out and uploads failed with 503 while Redis was fine. Here each
API process has one pool of at most FT_REDIS_MAX_CONNECTIONS connections, reused; a request
that finds them all in use waits up to FT_REDIS_POOL_TIMEOUT seconds for one (Redis is busy:
queue). A Redis that does not accept a connection within FT_REDIS_CONNECT_TIMEOUT (refused
at once, or no answer) is down: after one quick retry the request fails with 503
`unavailable`, well under a second when the connection is refused.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff

from core.config import Settings

RETRIES = 1  # one more try for a connection that broke or a connect that timed out
BACKOFF = dict(base=0.02, cap=0.1)  # seconds before that try
HEALTH_CHECK_INTERVAL = 30  # a connection idle this long is pinged before use


class RedisBusy(redis.ConnectionError):
    """Every pooled connection stayed in use for FT_REDIS_POOL_TIMEOUT: Redis (or this process)
    is saturated, not down. Answered 503 `overloaded`, not `unavailable`."""


class _WaitingPool(aioredis.BlockingConnectionPool):
    async def get_connection(self, *args, **kwargs):
        try:
            return await super().get_connection(*args, **kwargs)
        except redis.ConnectionError as exc:
            if isinstance(exc.__cause__, TimeoutError):  # the wait for a free connection ran out
                raise RedisBusy(f"no Redis connection came free within {self.timeout:g} s") from exc
            raise


def _connection_options(settings: Settings) -> dict:
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
    pool = _WaitingPool.from_url(
        settings.redis_url, retry=AsyncRetry(ExponentialWithJitterBackoff(**BACKOFF), RETRIES),
        **_connection_options(settings))
    return aioredis.Redis(connection_pool=pool)
