"""Sending work to the Celery workers by task name, so the API never imports worker code."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from celery.utils.nodenames import anon_nodename
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import celeryconfig
from core.config import Settings
from core.errors import Unavailable
from core.request_context import TASK_HEADER, request_id

_REDIS_DOWN = (OperationalError, RedisConnectionError, RedisTimeoutError)
log = logging.getLogger("ft.jobs")

ASSEMBLE = "uploads.assemble"
CLEANUP = "uploads.cleanup"
PERSIST = "uploads.persist"
QUEUE = "celery"  # Celery's default queue, the only one the workers consume


def queue_key() -> str:
    """The Redis list holding the tasks waiting for a worker (Celery's key, under our prefix)."""
    return celeryconfig.CELERY_KEY_PREFIX + QUEUE


def celery_client(settings: Settings) -> Celery:
    client = Celery("file_transfer_client")
    client.conf.update(celeryconfig.build(settings))
    return client


def _issued_key(task_id: str) -> str:
    return f"ft:task:{task_id}"


class Jobs:
    """Tasks the API sends. Ids it hands to clients are remembered (as long as their results
    are kept), because Celery reports an id it never saw as merely `pending`."""

    def __init__(self, settings: Settings) -> None:
        self.celery = celery_client(settings)
        self._keep = int(self.celery.conf.result_expires)

    def _send(self, name: str, **options: Any) -> AsyncResult:
        """Celery reports an unreachable result store as a bare RuntimeError (its reconnect gave
        up); both it and a broker that is down are Redis being down: 503, not a 500."""
        if (current := request_id.get()) is not None:
            options["headers"] = {**options.get("headers", {}), TASK_HEADER: current}  # workers/observability.py
        try:
            return self.celery.send_task(name, **options)
        except (*_REDIS_DOWN, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not isinstance(exc.__cause__, _REDIS_DOWN):
                raise
            raise Unavailable("the task queue (Redis) is unavailable; retry later") from exc

    def assemblies(self, execute: Callable[..., Awaitable[Any]]) -> AssemblyQueue:
        """Where the API queues assemblies: not through kombu but with one command on its own
        Redis connection (`execute`), see AssemblyQueue."""
        return AssemblyQueue(execute)

    def cleanup(self, older_than: int | None) -> AsyncResult:
        result = self._send(CLEANUP, kwargs={"older_than": older_than, "wait_for_lock": True})
        self.celery.backend.client.set(_issued_key(result.id), 1, ex=self._keep)
        return result

    def result(self, task_id: str) -> AsyncResult | None:
        """The task's AsyncResult, or None for an id this API never issued (or long expired)."""
        if not self.celery.backend.client.exists(_issued_key(task_id)):
            return None
        return self.celery.AsyncResult(task_id)


# --- assemblies: one Redis command each ---------------------------------------------------------

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(name: str, args: list[Any], task_id: str, *, origin: str, request: str | None = None) -> str:
    """A task for the workers as Celery's `send_task(name, args=args, ignore_result=True)` leaves
    it in Redis: Celery's task message (protocol 2: headers naming the task, a body of `[args,
    kwargs, embed]`) in the envelope of kombu's Redis transport (the body in base64, a delivery
    tag, the queue as routing key). `request` is the request id that the worker's log lines
    repeat. tests/integration/test_assembly_queue.py holds it to Celery's own, field by field."""
    body = json.dumps([args, {}, EMBED]).encode()
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(args),
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if request is not None:
        headers[TASK_HEADER] = request
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


class AssemblyQueue:
    """Queues an assembly with one LPUSH of its task message onto Celery's list, on the caller's
    Redis connection (`execute`: the API's shared connection, a worker's client).

    Through `send_task` an assembly cost ~0.8 ms of CPU in kombu (half of it the `task-sent`
    event), on a thread of its own so that no answer waited for it; but that thread took the
    interpreter from the event loop: when a thousand devices sent their last chunks within a
    second or two (bench/devices.py), the API's throughput fell to a third and those chunks
    waited 1.3 s at p99 against 0.5 s for the others. This costs tens of microseconds and no
    thread. What it leaves out is the `task-sent` event: Flower lists an assembly once a worker
    has received it."""

    def __init__(self, execute: Callable[..., Awaitable[Any]]) -> None:
        self._execute = execute
        self._origin = anon_nodename()  # how Celery names a sender that is not a worker

    async def push(self, file_id: str) -> None:
        message = task_message(ASSEMBLE, [file_id], str(uuid.uuid4()), origin=self._origin, request=request_id.get())
        await self._execute("LPUSH", queue_key(), message)
