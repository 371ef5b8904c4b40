"""The Celery application: `celery -A workers.celery_app worker|beat|flower`."""

from __future__ import annotations

import threading

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutdown

import celeryconfig
from core import workers_registry
from core.config import Settings
from core.redis_clients import redis_client

settings = Settings()
app = Celery("file_transfer")
app.conf.update(celeryconfig.build(settings))
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)

_heartbeat_stop = threading.Event()
_heartbeat_thread: threading.Thread | None = None


def _heartbeat(hostname: str, redis_url: str) -> None:
    client = redis_client(redis_url, socket_connect_timeout=2, socket_timeout=2)
    while True:
        try:
            workers_registry.beat(client, hostname)
        except redis.RedisError:
            pass  # Redis away: /health reports it; keep trying
        if _heartbeat_stop.wait(workers_registry.HEARTBEAT_EVERY):
            break
    try:
        workers_registry.forget(client, hostname)
    except redis.RedisError:
        pass


@worker_ready.connect
def _on_worker_ready(sender=None, **_: object) -> None:
    global _heartbeat_thread
    hostname = getattr(sender, "hostname", None) or "worker"
    _heartbeat_thread = threading.Thread(
        target=_heartbeat, args=(hostname, settings.redis_url), name="ft-heartbeat", daemon=True
    )
    _heartbeat_thread.start()
    # Pick up assemblies orphaned by a worker that died whole, without waiting for beat.
    app.send_task("uploads.persist")


@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    """Leave the live set before exiting, so /health stops counting this worker at once."""
    _heartbeat_stop.set()
    if _heartbeat_thread is not None:
        _heartbeat_thread.join(timeout=5)
