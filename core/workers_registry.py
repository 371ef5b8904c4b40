"""Liveness of Celery workers, as heartbeats in a Redis sorted set (cheaper than `inspect ping`)."""

from __future__ import annotations

import time

WORKERS_KEY = "ft:workers"
HEARTBEAT_EVERY = 5.0
HEARTBEAT_TTL = 3 * HEARTBEAT_EVERY


def beat(redis, hostname: str, now: float | None = None) -> None:
    redis.zadd(WORKERS_KEY, {hostname: now if now is not None else time.time()})


def forget(redis, hostname: str) -> None:
    redis.zrem(WORKERS_KEY, hostname)


async def count_live(redis, now: float | None = None) -> int:
    cutoff = (now if now is not None else time.time()) - HEARTBEAT_TTL
    return await redis.zcount(WORKERS_KEY, cutoff, "+inf")
