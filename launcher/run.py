"""The launcher's steps: choose Redis, prepare secrets, run the children, stop them all."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from core.config import DEFAULT_REDIS_URL, MIN_JWT_SECRET_BYTES, Settings
from launcher.children import Child, say, stop_all
from launcher.secret_files import read_or_create
from ops.redis_server import answers, find_redis_server, free_port

ROOT = Path(__file__).resolve().parent.parent
# Test-only: the Redis URL probed when FT_REDIS_URL is unset (tests point it at a free port,
# because the real default may belong to someone else). Not a user setting.
DEFAULT_URL_OVERRIDE = "FT_LAUNCHER_DEFAULT_REDIS_URL"
STOP_TIMEOUT = 15.0


class LaunchError(Exception):
    """A problem the user must fix; printed as one clear line."""


def info(text: str) -> None:
    say("launcher", text)


def mask(url: str) -> str:
    """The URL with any password replaced, fit for printing."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_url(host: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Stopper:
    """SIGINT/SIGTERM ask for a stop; a second one asks to hurry (no graceful wait)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signame: str | None = None
        self.hurry = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.event.is_set():
            self.hurry = True
            return
        self.signame = signal.Signals(signum).name
        self.event.set()


def choose_redis(settings: Settings, data_dir: Path, stopper: Stopper) -> tuple[str, Child | None]:
    """The Redis URL to use, and the embedded redis-server when we had to start one."""
    if "redis_url" in settings.model_fields_set and settings.redis_url:
        if not answers(settings.redis_url, timeout=3):
            raise LaunchError(f"FT_REDIS_URL={mask(settings.redis_url)} does not answer PING: start that Redis, "
                              "fix the URL, or unset FT_REDIS_URL to get an embedded Redis")
        info(f"Redis: using FT_REDIS_URL {mask(settings.redis_url)}")
        return settings.redis_url, None
    default = os.environ.get(DEFAULT_URL_OVERRIDE) or DEFAULT_REDIS_URL
    if answers(default, timeout=1):
        info(f"Redis: using the Redis answering at {mask(default)}")
        return default, None

    parts = urlsplit(default)
    port = parts.port or 6379
    if not port_is_free(port):
        port = free_port()
    url = f"redis://127.0.0.1:{port}{parts.path or '/0'}"
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    info(f"Redis: nothing answers at {mask(default)}; starting an EMBEDDED redis-server on 127.0.0.1:{port} "
         f"(data and redis.log in {redis_dir})")
    child = Child("redis", embedded_redis_args(port, redis_dir), dict(os.environ), str(redis_dir))
    deadline = time.monotonic() + 15
    while not answers(url, timeout=0.2):
        if child.poll() is not None or stopper.event.is_set() or time.monotonic() > deadline:
            stop_all([child], STOP_TIMEOUT)
            if stopper.event.is_set():
                return url, None
            raise LaunchError(f"the embedded redis-server did not come up; see {redis_dir / 'redis.log'}")
        time.sleep(0.05)
    return url, child


def embedded_redis_args(port: int, redis_dir: Path) -> list[str]:
    """The same persistent set-up as ops.redis_server.start_redis(persistent=True).

    Started here rather than through start_redis so that it gets its own session (a
    Ctrl-C must not stop Redis before the workers) and dies with the launcher.
    """
    return [
        find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(redis_dir),
        "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(redis_dir / "redis.log"),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "3600 1 300 100 60 10000",
    ]


def jwt_secret(settings: Settings, data_dir: Path) -> str:
    if settings.jwt_secret is not None:
        secret, source = settings.jwt_secret.get_secret_value(), "FT_JWT_SECRET"
    else:
        path = data_dir / "jwt_secret"
        secret, created = read_or_create(path, lambda: secrets.token_urlsafe(48))
        source = f"{'generated into' if created else 'read from'} {path}"
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise LaunchError(f"the JWT secret ({source}) is shorter than {MIN_JWT_SECRET_BYTES} bytes")
    info(f"JWT secret: {source}")
    return secret


def flower_credentials(settings: Settings, data_dir: Path) -> tuple[str, str]:
    """`user:password` for Flower's basic auth, and how to tell the user about it."""
    if settings.flower_basic_auth is not None:
        credential = settings.flower_basic_auth.get_secret_value()
        if ":" not in credential or "," in credential:
            raise LaunchError("FT_FLOWER_BASIC_AUTH must be user:password, without commas")
        return credential, f"user {credential.split(':', 1)[0]!r}, password from FT_FLOWER_BASIC_AUTH"
    if settings.admin_username and settings.admin_password:
        credential = f"{settings.admin_username}:{settings.admin_password.get_secret_value()}"
        if "," not in credential:  # Flower splits its credential list on commas
            return credential, f"user {settings.admin_username!r}, password FT_ADMIN_PASSWORD"
        info("Flower cannot take credentials with a comma; using a generated password instead")
    path = data_dir / "flower_password"
    password, _ = read_or_create(path, lambda: secrets.token_urlsafe(18))
    return f"admin:{password}", f"user 'admin', password {password} (kept in {path})"


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def main() -> int:
    stopper = Stopper()
    try:
        settings = Settings()
    except ValidationError as exc:
        info(f"error: invalid FT_ settings:\n{exc}")
        return 2
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    api_url = http_url(settings.host, settings.port)
    flower_url = http_url("127.0.0.1", settings.flower_port)
    info("File Transfer API: runs the API, one Celery worker, Celery beat and Flower "
         "in the foreground; Ctrl-C stops them all")
    info(f"Data directory: {data_dir}")

    children: list[Child] = []
    redis_child: Child | None = None
    try:
        redis_url, redis_child = choose_redis(settings, data_dir, stopper)
        secret = jwt_secret(settings, data_dir)
        flower_auth, flower_hint = flower_credentials(settings, data_dir)
        if stopper.event.is_set():
            return 0

        env = {k: v for k, v in os.environ.items() if k not in (DEFAULT_URL_OVERRIDE, "FLOWER_BASIC_AUTH")}
        env.update(FT_REDIS_URL=redis_url, FT_JWT_SECRET=secret, FT_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
        py, celery = [sys.executable, "-m"], [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
        plan = [
            ("api", py + ["uvicorn", "api.main:create_app", "--factory", "--host", settings.host,
                          "--port", str(settings.port), "--loop", "uvloop", "--http", "api.http_protocol:BoundedHttpToolsProtocol",
                          "--timeout-graceful-shutdown", "10",
                          # X-Forwarded-For/-Proto believed from FT_TRUSTED_PROXIES only (default: nobody).
                          "--forwarded-allow-ips", settings.trusted_proxies],
             # uvicorn reads its --workers default from WEB_CONCURRENCY.
             {**env, "WEB_CONCURRENCY": str(settings.api_workers)}),
            ("worker", celery + ["worker", "--loglevel=INFO"], env),
            ("beat", celery + ["beat", "--loglevel=INFO"], env),
            # The credentials go through the environment, so they do not show in `ps`.
            ("flower", celery + ["flower", "--address=127.0.0.1", f"--port={settings.flower_port}"],
             {**env, "FLOWER_BASIC_AUTH": flower_auth}),
        ]
        for name, args, child_env in plan:
            children.append(Child(name, args, child_env, str(ROOT)))

        info(f"API:    {api_url}   docs: {api_url}/docs")
        info(f"Flower: {flower_url}   basic auth: {flower_hint}")
        info(f"Redis:  {mask(redis_url)}{'  (embedded)' if redis_child else ''}")

        started, ready, next_probe = time.monotonic(), False, 0.0
        while not stopper.event.wait(0.25):
            dead = next((c for c in children + [redis_child] if c and c.poll() is not None), None)
            if dead is not None:
                info(f"{dead.name} exited unexpectedly (status {dead.poll()}); stopping the others")
                return 1
            if not ready and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + 0.5
                if health_ok(api_url):
                    ready = True
                    info(f"ready in {time.monotonic() - started:.1f}s: {api_url} (GET /health is green)")
        info(f"{stopper.signame} received; stopping")
        return 0
    except LaunchError as exc:
        info(f"error: {exc}")
        return 1
    finally:
        stop_all(children, STOP_TIMEOUT, lambda: stopper.hurry)
        if redis_child is not None:
            stop_all([redis_child], STOP_TIMEOUT, lambda: stopper.hurry)
            info("embedded Redis stopped")
        info("all stopped")
