"""`python -m workers worker|beat|flower [options]`: the one way to start Celery's processes
(`make run`, the Docker image, compose, the tests), as `python -m api` is the API's.

Settings are read once, here, and the Celery app is built from them (workers/celery_app.py);
the log level is FT_LOG_LEVEL, Flower listens on FT_FLOWER_HOST:FT_FLOWER_PORT with
FT_FLOWER_BASIC_AUTH. Further options go to the Celery command as they are (`--concurrency=1`,
`--hostname=w1@%h`, ...) and win over ours.
"""

from __future__ import annotations

import sys

import click

from core.config import Settings, settings_or_exit
from workers import flower
from workers.celery_app import create_app

COMMANDS = ("worker", "beat", "flower")
USAGE = "usage: python -m workers {worker|beat|flower} [celery or flower options]"


def celery_log_level(settings: Settings) -> str:
    """FT_LOG_LEVEL (uvicorn's names) as Celery names it: uvicorn's `trace` is Celery's DEBUG."""
    level = settings.log_level.upper()
    return "DEBUG" if level == "TRACE" else level


def celery_argv(command: str, settings: Settings, argv: list[str]) -> list[str]:
    """The `celery` command line for `command` (worker or beat): our defaults, then `argv`."""
    return [command, f"--loglevel={celery_log_level(settings)}", *argv]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    settings = settings_or_exit(f"python -m workers {command}")
    app = create_app(settings)
    try:
        if command == "flower":
            return flower.run(app, settings, rest)
        return app.start(celery_argv(command, settings, rest)) or 0
    except click.ClickException as exc:  # a bad option: Celery's own message, not a traceback
        exc.show()
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
