"""`python -m api`: the one way to serve the API (tests, `make run`, the Docker image, compose).

Everything comes from Settings (FT_HOST, FT_PORT, FT_API_WORKERS, FT_KEEPALIVE_TIMEOUT, ...):
uvicorn on uvloop with our bounded httptools protocol (api/http_protocol.py), which adds the
head-size cap, the header-read timeout and the 503 + Retry-After answers when a process is
saturated, and with listening sockets that take every queued connection at once
(api/listener.py). Each worker process builds the app with `api.main:create_served_app` (a factory, as
`uvicorn --factory api.main:create_served_app` would) and reads the same environment.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import uvicorn

from core.config import Settings, settings_or_exit
from core.logs import logging_config

PROTOCOL = "api.http_protocol:BoundedHttpToolsProtocol"
LOOP = "api.listener:new_event_loop"
APP_FACTORY = "api.main:create_served_app"
GRACEFUL_SHUTDOWN = 10  # seconds running requests get at SIGTERM before their connections are cut


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's arguments for these settings."""
    return {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.api_workers,
        "loop": LOOP,
        "http": PROTOCOL,
        "backlog": settings.backlog,
        "timeout_keep_alive": settings.keepalive_timeout,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN,
        "log_level": settings.log_level.lower(),
        "log_config": logging_config(settings.log_format, settings.log_level, settings.request_log),
        "access_log": False,  # api/observability.py writes one line per request instead
        # X-Forwarded-For/-Proto believed from FT_TRUSTED_PROXIES only (uvicorn's default trusts 127.0.0.1).
        "forwarded_allow_ips": settings.trusted_proxies,
        # Saturation is answered by our protocol (JSON body, Retry-After), not uvicorn's bare 503.
        "limit_concurrency": None,
    }


def prepare_multiprocess_metrics(settings: Settings) -> None:
    """Several API processes keep their counters in files of one directory, summed by whichever
    process answers /metrics. Emptied at start: a previous run's counts are not this run's."""
    if settings.api_workers <= 1:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)


def main() -> int:
    settings = settings_or_exit("python -m api")
    prepare_multiprocess_metrics(settings)
    uvicorn.run(APP_FACTORY, **server_options(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
