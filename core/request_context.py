"""The request id that follows one request from the API into the Celery tasks it sends.

The API sets it per request (api/observability.py); core/jobs.py passes it on in a task header
and the worker sets it again for the task's run (workers/observability.py). Log lines made
meanwhile carry it (core/logs.py), so an operator can follow one upload by it.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar

# Task header (not an argument: task signatures stay as they were, old messages still run).
TASK_HEADER = "ft_request_id"

_SANE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")

request_id: ContextVar[str | None] = ContextVar("ft_request_id", default=None)


def sane_request_id(raw: str | None) -> str | None:
    """A client's X-Request-ID if it is short printable token text; anything else is not trusted
    into our logs (newlines, quotes, kilobytes)."""
    if raw is not None and _SANE.fullmatch(raw):
        return raw
    return None


def new_request_id() -> str:
    """32 random hex digits, as uuid4().hex had: a label to follow a request by, not a secret, so
    from the process's Mersenne Twister (reseeded in a forked child) rather than a getrandom(2)
    call and a UUID object per request (~2 % of a chunk request's CPU)."""
    return f"{random.getrandbits(128):032x}"
