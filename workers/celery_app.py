"""The Celery application, built from one Settings object: `create_app(settings)`.

Nothing is read at import time: `python -m workers worker|beat|flower` (workers/__main__.py)
builds Settings once and passes it here, and the tasks and signal handlers find it on the app
(`app.settings`). One app per process.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutdown

import celeryconfig
from core import workers_registry
from core.config import Settings
from core.jobs import PERSIST
from core.redis_clients import redis_client
from workers import observability
from workers import tasks as _tasks  # noqa: F401 - its shared tasks bind to every app created here


class TransferCelery(Celery):
    """Celery with the Settings it was configured from, for the tasks and signal handlers."""

    def __init__(self, settings: Settings, main: str = "file_transfer", **kwargs: Any) -> None:
        super().__init__(main, **kwargs)
        self.settings = settings

    def __reduce_keys__(self) -> dict:
        """A pickled app (Celery pickles it for some pools) comes back with its settings."""
        return {**super().__reduce_keys__(), "settings": self.settings}


def create_app(settings: Settings) -> TransferCelery:
    """The configured app with our tasks registered and this process's signal handlers connected."""
    app = TransferCelery(settings)
    app.conf.update(celeryconfig.build(settings))
    app.finalize()  # binds the shared tasks (workers/tasks.py) now, not at first use
    observability.connect(app)
    heartbeat = Heartbeat(app)
    worker_ready.connect(heartbeat.start, weak=False)
    worker_shutdown.connect(heartbeat.stop, weak=False)
    return app


class Heartbeat:
    """The worker's liveness for GET /health: a thread that beats into Redis while it runs."""

    def __init__(self, app: TransferCelery) -> None:
        self.app = app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self, hostname: str) -> None:
        client = redis_client(self.app.settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        while True:
            with contextlib.suppress(redis.RedisError):  # Redis away: /health reports it; keep trying
                workers_registry.beat(client, hostname)
            if self._stop.wait(workers_registry.HEARTBEAT_EVERY):
                break
        with contextlib.suppress(redis.RedisError):
            workers_registry.forget(client, hostname)

    def start(self, sender: object = None, **_: object) -> None:
        if getattr(sender, "app", self.app) is not self.app:
            return  # another app's worker in this process (not ours to announce)
        hostname = getattr(sender, "hostname", None) or "worker"
        self._thread = threading.Thread(target=self._run, args=(hostname,), name="ft-heartbeat", daemon=True)
        self._thread.start()
        # Pick up assemblies orphaned by a worker that died whole, without waiting for beat.
        self.app.send_task(PERSIST)

    def stop(self, **_: object) -> None:
        """Leave the live set before exiting, so /health stops counting this worker at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
