"""Sending work to the Celery workers by task name, so the API never imports worker code."""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.result import AsyncResult
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

    def assemble(self, file_id: str) -> None:
        """Queued and forgotten: the outcome is the upload's state, so no result is awaited (with
        a result wanted, Celery would subscribe this process to every assembly's result channel)."""
        self._send(ASSEMBLE, args=[file_id], ignore_result=True)

    def cleanup(self, older_than: int | None) -> AsyncResult:
        result = self._send(CLEANUP, kwargs={"older_than": older_than, "wait_for_lock": True})
        self.celery.backend.client.set(_issued_key(result.id), 1, ex=self._keep)
        return result

    def result(self, task_id: str) -> AsyncResult | None:
        """The task's AsyncResult, or None for an id this API never issued (or long expired)."""
        if not self.celery.backend.client.exists(_issued_key(task_id)):
            return None
        return self.celery.AsyncResult(task_id)


class BackgroundSender:
    """Sends assemblies from one thread of its own, in the order asked, so that no request waits
    for the broker. A last chunk's answer waited for `send_task` (a few ms of kombu, tens of ms
    on a busy process), and a thousand devices finishing together queued their sends on the
    shared thread pool, ahead of the chunks that needed a thread: the last chunk took 2.5-4 s at
    p50 against 0.8 s for the others. A send that fails is logged and left to the persist job,
    which queues every assembly nobody runs (as when the send failed in the request); the
    request id of the request that asked goes with it (the task's log lines repeat it)."""

    def __init__(self, send: Callable[[str], object]) -> None:
        self._send = send
        self._queue: queue.SimpleQueue[tuple[contextvars.Context, str] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="assembly-sender", daemon=True)
        self._thread.start()

    def submit(self, file_id: str) -> None:
        self._queue.put((contextvars.copy_context(), file_id))

    def close(self, timeout: float = 10.0) -> None:
        """Send what was asked (for up to `timeout` seconds), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            context, file_id = item
            try:
                context.run(self._send, file_id)
            except Exception as exc:
                log.warning("assembly of %s not queued (%s); the persist job will queue it", file_id, exc)
