"""Sending work to the Celery workers by task name, so the API never imports worker code."""

from __future__ import annotations

from celery import Celery

import celeryconfig
from core.config import Settings

ASSEMBLE = "uploads.assemble"
CLEANUP = "uploads.cleanup"
PERSIST = "uploads.persist"


def celery_client(settings: Settings) -> Celery:
    client = Celery("file_transfer_client")
    client.conf.update(celeryconfig.build(settings))
    return client


class Jobs:
    def __init__(self, settings: Settings) -> None:
        self.celery = celery_client(settings)

    def assemble(self, file_id: str) -> None:
        self.celery.send_task(ASSEMBLE, args=[file_id])

    def cleanup(self, older_than: int | None):
        return self.celery.send_task(CLEANUP, kwargs={"older_than": older_than, "wait_for_lock": True})

    def result(self, task_id: str):
        return self.celery.AsyncResult(task_id)
