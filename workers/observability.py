"""Celery signal handlers: the worker's log format, one log line per task with the request id
of the API request that sent it, and assembly durations for GET /metrics.

The request id travels in a task header (core/jobs.py), not an argument, so task signatures
stay as they were. Durations go into Redis (core/state.py `record_assembly`), where the API
reads them at scrape time: every worker on every node ends up in one scrape, with no port to
open per worker.

`connect(app)` (called by workers/celery_app.py `create_app`) connects the handlers, with the
app's settings: nothing is read at import time.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import redis
from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

from core.jobs import ASSEMBLE
from core.logs import formatter
from core.redis_clients import redis_client
from core.request_context import TASK_HEADER, request_id, sane_request_id
from core.state import record_assembly

if TYPE_CHECKING:
    from workers.celery_app import TransferCelery

log = logging.getLogger("ft.task")


def connect(app: TransferCelery) -> None:
    """Connect the handlers for `app`'s process (strong references: they live as long as it)."""
    handlers = _Handlers(app.settings.log_format, app.settings.redis_url)
    after_setup_logger.connect(handlers.use_our_format, weak=False)
    after_setup_task_logger.connect(handlers.use_our_format, weak=False)
    task_prerun.connect(handlers.task_started, weak=False)
    task_postrun.connect(handlers.task_finished, weak=False)


def _sent_request_id(task) -> str | None:
    raw = getattr(task.request, TASK_HEADER, None) or (task.request.headers or {}).get(TASK_HEADER)
    return sane_request_id(raw) if isinstance(raw, str) else None


class _Handlers:
    def __init__(self, log_format: str, redis_url: str) -> None:
        self.log_format = log_format
        self.redis_url = redis_url
        self._running: dict[str, tuple[float, object]] = {}  # task id -> (start, request id token)
        self._redis: redis.Redis | None = None

    def use_our_format(self, logger=None, **_: object) -> None:
        """Celery's handlers, our format (JSON with FT_LOG_FORMAT=json)."""
        for handler in getattr(logger, "handlers", ()):
            handler.setFormatter(formatter(self.log_format))

    def task_started(self, task_id=None, task=None, **_: object) -> None:
        self._running[task_id] = (time.monotonic(), request_id.set(_sent_request_id(task)))

    def task_finished(self, task_id=None, task=None, args=None, retval=None, state=None, **_: object) -> None:
        started, token = self._running.pop(task_id, (time.monotonic(), None))
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
                self._record_assembly(seconds, result)
        finally:
            if token is not None:
                request_id.reset(token)

    def _record_assembly(self, seconds: float, outcome: str) -> None:
        try:
            if self._redis is None:
                self._redis = redis_client(self.redis_url, socket_connect_timeout=2, socket_timeout=2)
            record_assembly(self._redis, seconds, outcome)
        except redis.RedisError as exc:  # a lost sample is not worth failing the task over
            log.warning("assembly duration not recorded: %s", exc)
