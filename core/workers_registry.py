"""Liveness of Celery workers, as heartbeats in a Redis sorted set (cheaper than `inspect ping`)."""

from __future__ import annotations

import time

import redis
import redis.asyncio

WORKERS_KEY = "ft:workers"
HEARTBEAT_EVERY = 5.0
HEARTBEAT_TTL = 3 * HEARTBEAT_EVERY


def beat(client: redis.Redis, hostname: str, now: float | None = None) -> None:
    client.zadd(WORKERS_KEY, {hostname: now if now is not None else time.time()})


def forget(client: redis.Redis, hostname: str) -> None:
    client.zrem(WORKERS_KEY, hostname)


async def count_live(client: redis.asyncio.Redis, now: float | None = None) -> int:
    cutoff = (now if now is not None else time.time()) - HEARTBEAT_TTL
    return await client.zcount(WORKERS_KEY, cutoff, "+inf")
