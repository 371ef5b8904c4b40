"""One way to start each process: `python -m api`, `python -m workers worker|beat|flower`.

Settings are read by the entry point and passed in, never at import time; the Celery app is
built from them (workers/celery_app.py `create_app`) with the reliability options it needs.
"""

from __future__ import annotations

import os
import subprocess
import sys

from core.config import Settings
from tests.support import ROOT
from workers.__main__ import celery_argv
from workers.__main__ import main as workers_main
from workers.celery_app import TransferCelery, create_app

ENTRY_MODULES = (
    "core.config",
    "celeryconfig",
    "core.jobs",
    "workers.celery_app",
    "workers.tasks",
    "workers.observability",
    "workers.beat",
    "workers.flower",
    "workers.__main__",
    "api.__main__",
    "api.main",
    "launcher.run",
)


def _python(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FT_", "FLOWER_"))}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_no_module_reads_settings_at_import():
    """With an environment Settings() refuses, every module still imports: none reads it."""
    imports = "; ".join(f"import {name}" for name in ENTRY_MODULES) + "; from core.config import Settings"
    result = _python("-c", f"{imports}\ntry: Settings()\nexcept ValueError: print('refused')", FT_PORT="not-a-port")
    assert result.returncode == 0, result.stderr  # importing them all did not notice...
    assert result.stdout.strip() == "refused"  # ...an environment Settings() refuses


def test_the_app_is_built_from_the_settings_passed_in():
    first = create_app(Settings(redis_url="redis://127.0.0.1:1/3", task_visibility_timeout=7200))
    second = create_app(Settings(redis_url="redis://127.0.0.1:2/4"))
    assert isinstance(first, TransferCelery) and first.settings.redis_url == "redis://127.0.0.1:1/3"
    assert first.conf.broker_url == "redis://127.0.0.1:1/3" and second.conf.broker_url == "redis://127.0.0.1:2/4"
    conf = first.conf
    # The reliability options (celeryconfig.py says why).
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_connection_retry_on_startup is True
    assert conf.broker_transport_options["visibility_timeout"] == 7200 > conf.task_time_limit
    assert conf.beat_scheduler == "workers.beat:SteadyRedBeatScheduler"
    assert {"uploads.assemble", "uploads.cleanup", "uploads.persist"} <= set(first.tasks)
    # Each task runs with its own app's settings.
    assert first.tasks["uploads.assemble"].app is first and second.tasks["uploads.assemble"].app is second


def test_celery_options_come_from_settings_and_the_command_line_wins():
    assert celery_argv("worker", Settings(log_level="warning"), []) == ["worker", "--loglevel=WARNING"]
    assert celery_argv("beat", Settings(log_level="trace"), []) == ["beat", "--loglevel=DEBUG"]  # uvicorn's name
    argv = celery_argv("worker", Settings(), ["--loglevel=DEBUG", "--concurrency=1"])
    assert argv[-2:] == ["--loglevel=DEBUG", "--concurrency=1"]  # later options win in Celery's parser


def test_usage_and_a_flower_without_credentials_are_refused(monkeypatch, capsys):
    for name in [n for n in os.environ if n.startswith(("FT_", "FLOWER_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FT_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    assert workers_main(["uvicorn"]) == 2
    assert "python -m workers {worker|beat|flower}" in capsys.readouterr().err
    assert workers_main(["flower"]) == 2
    assert "refusing to start Flower without basic auth" in capsys.readouterr().err
    assert workers_main(["worker", "--no-such-option"]) == 2  # Celery's message, not a traceback
    assert "no-such-option" in capsys.readouterr().err


def test_bad_settings_are_named_in_one_line_each_not_a_traceback():
    for argv in (["-m", "api"], ["-m", "workers", "worker"], ["-m", "workers", "beat"]):
        result = _python(*argv, FT_PORT="not-a-port", FT_API_WORKERS="0", FT_JWT_SECRET="s3cret-value-not-echoed")
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr and "invalid configuration" in result.stderr
        assert "FT_PORT: Input should be a valid integer" in result.stderr
        assert "FT_API_WORKERS: Input should be greater than or equal to 1" in result.stderr
        assert "not-a-port" not in result.stderr  # values are not repeated (a secret's could be)
