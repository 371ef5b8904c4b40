"""api/__main__.py and api/http_protocol.py: what `python -m api` hands uvicorn."""

from __future__ import annotations

import resource

import uvicorn

from api.__main__ import APP_FACTORY, LOOP, PROTOCOL, server_options
from api.http_protocol import FD_RESERVE, BoundedHttpToolsProtocol, connection_limit
from core.config import Settings


def test_server_options_come_from_settings():
    settings = Settings(host="0.0.0.0", port=8123, api_workers=3, keepalive_timeout=7, backlog=99, log_level="WARNING")
    options = server_options(settings)
    assert options["factory"] is True
    assert (options["host"], options["port"], options["workers"]) == ("0.0.0.0", 8123, 3)
    assert (options["timeout_keep_alive"], options["backlog"], options["log_level"]) == (7, 99, "warning")
    assert options["loop"] == LOOP and options["http"] == PROTOCOL
    assert options["limit_concurrency"] is None  # ours answers it, with JSON and Retry-After


def test_uvicorn_loads_our_protocol_and_app_factory():
    config = uvicorn.Config(
        APP_FACTORY, **{k: v for k, v in server_options(Settings()).items() if k not in ("workers",)}
    )
    assert config.http == PROTOCOL
    from uvicorn.importer import import_from_string

    assert callable(import_from_string(APP_FACTORY))
    assert import_from_string(PROTOCOL) is BoundedHttpToolsProtocol


def test_the_connection_limit_fits_under_the_open_file_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit(10) == 10
    if soft != resource.RLIM_INFINITY:
        assert connection_limit(10**9) == soft - FD_RESERVE
