"""Flower with basic auth on every URL: `python -m workers.flower [flower options]`.

Flower 2.2 checks credentials in its handlers' `get_current_user`, but `/metrics` and
`/healthcheck` never ask for the current user, so they answer anyone. Here both require
it like every other page, and Flower refuses to start without credentials
(FLOWER_BASIC_AUTH or --basic-auth): it shows task arguments and can shut workers down.
"""

from __future__ import annotations

import os
import sys

import tornado.web
from celery.bin.celery import main as celery_main
from flower.views import monitor


def require_auth_everywhere() -> None:
    for handler in (monitor.Metrics, monitor.Healthcheck):
        if not getattr(handler.get, "_ft_authenticated", False):
            handler.get = tornado.web.authenticated(handler.get)
            handler.get._ft_authenticated = True


def main(argv: list[str]) -> int:
    if not os.environ.get("FLOWER_BASIC_AUTH") and not any(a.startswith("--basic-auth") for a in argv):
        print(
            "workers.flower: refusing to start Flower without basic auth: set FLOWER_BASIC_AUTH=user:password",
            file=sys.stderr,
        )
        return 2
    require_auth_everywhere()
    sys.argv = ["celery", "-A", "workers.celery_app", "flower", *argv]
    return celery_main()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
