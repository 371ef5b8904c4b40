"""The assembly message the API pushes itself (core/jobs.py AssemblyQueue) against Celery's own
on a real redis-server: the same fields with the same values, bar the ids each message draws;
and a real Celery worker, configured as ours (celeryconfig.build), runs such a message with its
argument and the request id. If a Celery or kombu upgrade changes what they send, the first test says what."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import redis.asyncio as aioredis
from celery import Celery
from celery.contrib.testing.worker import start_worker

import celeryconfig
from core.jobs import ASSEMBLE, AssemblyQueue, Jobs, queue_key, task_message
from core.request_context import TASK_HEADER, request_id
from tests.support import wait_until

DRAWN = {("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"), ("properties", "delivery_tag")}


def flattened(raw: bytes) -> dict[tuple[str, str], object]:
    message = json.loads(raw)
    fields: dict[tuple[str, str], object] = {("", k): v for k, v in message.items() if not isinstance(v, dict)}
    for part in ("headers", "properties"):
        fields.update({(part, k): v for k, v in message[part].items()})
    return fields


def push(settings, file_id: str, request: str | None) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        token = request_id.set(request)
        try:
            await AssemblyQueue(client.execute_command).push(file_id)
        finally:
            request_id.reset(token)
            await client.aclose()

    asyncio.run(go())


def test_the_pushed_message_is_the_one_celery_sends(settings, redis_db):
    jobs = Jobs(settings)
    token = request_id.set("req-1")
    try:
        jobs.celery.send_task(ASSEMBLE, args=["file-1"], ignore_result=True, headers={TASK_HEADER: "req-1"})
    finally:
        request_id.reset(token)
    push(settings, "file-1", "req-1")
    ours, celerys = (flattened(raw) for raw in redis_db.lrange(queue_key(), 0, -1))  # LPUSH: newest first
    # reply_to: where Celery would send a result; an ignored result has none to send.
    celerys.pop(("properties", "reply_to"))
    assert ours.keys() == celerys.keys()
    differing = {key for key in ours if ours[key] != celerys[key]}
    assert differing == DRAWN
    assert ours[("headers", "origin")] == celerys[("headers", "origin")]  # the same process


def test_a_celery_worker_runs_the_message_with_its_argument_and_request_id(settings, redis_db):
    """Under a name of its own (not shared): the real `uploads.assemble` belongs to the workers'
    app, and Celery registers a task name once per process."""
    app = Celery("task-message-test")
    app.conf.update(celeryconfig.build(settings))
    app.conf.worker_hijack_root_logger = False
    ran: list[tuple[str, object]] = []
    done = threading.Event()

    @app.task(name="tests.echo", bind=True, ignore_result=True, shared=False)
    def echo(self, file_id: str) -> None:
        ran.append((file_id, getattr(self.request, TASK_HEADER, None)))
        done.set()

    message = task_message("tests.echo", ["file-2"], str(uuid.uuid4()), origin="test", request="req-2")
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        redis_db.lpush(queue_key(), message)
        wait_until(done.is_set, timeout=20, what="the worker to run the pushed message")
    assert ran == [("file-2", "req-2")]
    assert redis_db.llen(queue_key()) == 0
