"""Every Redis client of the code, given a sentinel:// FT_REDIS_URL, reaches the primary the
sentinels name: the API's bounded pool, the workers' clients, kombu's broker, Celery's result
backend, RedBeat, and `answers()` (make run's check). Real redis-server processes: a primary,
a replica and three sentinels."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest
import redis
from celery import Celery
from redbeat.schedulers import get_redis

import celeryconfig
from core.config import Settings
from core.jobs import Jobs
from core.redis_clients import RedisBusy, async_client, async_redis, redis_client
from ops.redis_server import answers
from tests.sentinel_support import running_sentinel_set


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_sentinel_set(tmp_path_factory.mktemp("sentinel")) as cluster:
        yield cluster


def on_primary(cluster, key: str) -> bool:
    return bool(cluster.server(cluster.primary_port()).exists(key))


def test_a_blocking_client_writes_to_the_primary(cluster):
    key = f"ft:test:{uuid.uuid4().hex}"
    client = redis_client(cluster.url, socket_timeout=2)
    try:
        client.set(key, 1)
        assert on_primary(cluster, key)
    finally:
        client.close()


def test_the_api_pool_is_bounded_and_waits_through_the_sentinels(cluster):
    async def run():
        client = async_redis(Settings(redis_url=cluster.url, redis_max_connections=1, redis_pool_timeout=0.3))
        try:
            key = f"ft:test:{uuid.uuid4().hex}"
            await client.set(key, 1)
            assert on_primary(cluster, key)
            assert client.connection_pool.max_connections == 1
            held = asyncio.create_task(client.blpop([f"ft:test:nothing:{key}"], timeout=1))
            await asyncio.sleep(0.1)
            with pytest.raises(RedisBusy):  # the one connection stays busy past the pool timeout
                await client.ping()
            await held
            assert await client.ping() is True
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_workers_event_loop_client(cluster):
    async def run():
        client = async_client(cluster.url, socket_connect_timeout=2)
        try:
            key = f"ft:test:{uuid.uuid4().hex}"
            await client.set(key, 1)
            return key
        finally:
            await client.aclose()

    assert on_primary(cluster, asyncio.run(run()))


def test_answers_only_for_a_known_master(cluster):
    assert answers(cluster.url, timeout=2)
    assert not answers(replace(cluster.target, master_name="nobody").url(), timeout=1)
    assert not answers(replace(cluster.target, password="wrong").url(), timeout=1)


def test_celery_broker_and_results_go_through_the_sentinels_with_our_prefix(cluster):
    jobs = Jobs(Settings(redis_url=cluster.url))
    try:
        result = jobs.cleanup(older_than=1)  # queued (no worker here) and its id remembered
        primary = cluster.server(cluster.primary_port())
        assert primary.llen("ft:celery:celery") >= 1  # kombu's queue, under Celery's prefix
        assert primary.exists(f"ft:task:{result.id}")  # through the result backend's client
        assert jobs.result(result.id) is not None
        assert not [k for k in primary.keys("*") if not k.startswith(b"ft:")]  # nothing unprefixed
    finally:
        primary.delete("ft:celery:celery")
        jobs.celery.close()


def test_redbeat_reaches_the_primary(cluster):
    app = Celery("redbeat-test")
    app.conf.update(celeryconfig.build(Settings(redis_url=cluster.url)))
    client = get_redis(app)
    key = f"ft:test:{uuid.uuid4().hex}"
    client.set(key, 1)
    assert on_primary(cluster, key)
    app.close()


def test_a_wrong_master_name_is_a_connection_error_not_a_crash(cluster):
    client = redis_client(replace(cluster.target, master_name="nobody").url(), socket_timeout=1)
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()
