"""Celery signal handlers: the worker's log format, one log line per task with the request id
of the API request that sent it, and assembly durations for GET /metrics.

The request id travels in a task header (core/jobs.py), not an argument, so task signatures
stay as they were. Durations go into Redis (core/state.py `record_assembly`), where the API
reads them at scrape time: every worker on every node ends up in one scrape, with no port to
open per worker.
"""

from __future__ import annotations

import logging
import time

import redis
from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

from core.jobs import ASSEMBLE
from core.logs import formatter
from core.request_context import TASK_HEADER, request_id, sane_request_id
from core.state import record_assembly
from workers.celery_app import settings

log = logging.getLogger("ft.task")
_running: dict[str, tuple[float, object]] = {}  # task id -> (start, request id token)
_redis: redis.Redis | None = None


@after_setup_logger.connect
@after_setup_task_logger.connect
def _use_our_format(logger=None, **_: object) -> None:
    """Celery's handlers, our format (JSON with FT_LOG_FORMAT=json)."""
    for handler in getattr(logger, "handlers", ()):
        handler.setFormatter(formatter(settings.log_format))


def _sent_request_id(task) -> str | None:
    raw = getattr(task.request, TASK_HEADER, None) or (task.request.headers or {}).get(TASK_HEADER)
    return sane_request_id(raw) if isinstance(raw, str) else None


@task_prerun.connect
def _task_started(task_id=None, task=None, **_: object) -> None:
    _running[task_id] = (time.monotonic(), request_id.set(_sent_request_id(task)))


@task_postrun.connect
def _task_finished(task_id=None, task=None, args=None, retval=None, state=None, **_: object) -> None:
    started, token = _running.pop(task_id, (time.monotonic(), None))
    seconds = time.monotonic() - started
    result = retval.get("result") if isinstance(retval, dict) else None
    file_id = args[0] if task.name == ASSEMBLE and args else None
    try:
        log.info(
            "%s %s %s",
            task.name,
            state,
            result or "",
            extra={
                "ft": {
                    "task": task.name,
                    "task_id": task_id,
                    "state": state,
                    "file_id": file_id,
                    "result": result,
                    "duration_ms": round(seconds * 1000, 1),
                }
            },
        )
        if task.name == ASSEMBLE and state == "SUCCESS" and result is not None:
            _record_assembly(seconds, result)
    finally:
        if token is not None:
            request_id.reset(token)


def _record_assembly(seconds: float, outcome: str) -> None:
    global _redis  # noqa: PLW0603 - one client per worker process, made on first use (after the fork)
    try:
        if _redis is None:
            _redis = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        record_assembly(_redis, seconds, outcome)
    except redis.RedisError as exc:  # a lost sample is not worth failing the task over
        log.warning("assembly duration not recorded: %s", exc)
