"""Flower with basic auth on every URL: `python -m workers flower [flower options]`.

Flower 2.2 checks credentials in its handlers' `get_current_user`, but `/metrics` and
`/healthcheck` never ask for the current user, so they answer anyone. Here both require
it like every other page, and Flower refuses to start without credentials
(FT_FLOWER_BASIC_AUTH, Flower's own FLOWER_BASIC_AUTH or --basic-auth): it shows task arguments
and can shut workers down. The credentials go to Flower through its environment, never its
command line (`ps` would show them).
"""

from __future__ import annotations

import os
import sys

import tornado.web
from celery import Celery
from flower.views import monitor

from core.config import Settings


def require_auth_everywhere() -> None:
    for handler in (monitor.Metrics, monitor.Healthcheck):
        if not getattr(handler.get, "_ft_authenticated", False):
            handler.get = tornado.web.authenticated(handler.get)
            handler.get._ft_authenticated = True


def run(app: Celery, settings: Settings, argv: list[str]) -> int:
    """Serve Flower for `app` on FT_FLOWER_HOST:FT_FLOWER_PORT (options in `argv` win)."""
    if settings.flower_basic_auth is not None:
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    if not os.environ.get("FLOWER_BASIC_AUTH") and not any(a.startswith("--basic-auth") for a in argv):
        print(
            "workers flower: refusing to start Flower without basic auth: set FT_FLOWER_BASIC_AUTH=user:password",
            file=sys.stderr,
        )
        return 2
    require_auth_everywhere()
    return app.start(["flower", f"--address={settings.flower_host}", f"--port={settings.flower_port}", *argv]) or 0
