"""The launcher's steps: lock the data dir, choose Redis, prepare secrets, supervise the
children until Ctrl-C / SIGTERM, stop them all."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from core.config import MIN_JWT_SECRET_BYTES, Settings, describe_invalid
from launcher.children import Child, say
from launcher.data_dir import PRIVATE_UMASK, DataDirBusy, DataDirLock, make_private
from launcher.disk_reserve import DiskReserve
from launcher.embedded_redis import EmbeddedRedis
from launcher.secret_files import read_or_create
from launcher.supervisor import CrashLoop, Service, Supervisor
from ops.redis_server import answers

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 15.0
HEALTH_EVERY = 1.0
RESERVE_EVERY = 5.0
FLOWER_USER = "flower"
LOG_KEEP_BYTES = 10 * 1024 * 1024


class LaunchError(Exception):
    """A problem the user must fix; printed as one clear line."""


def mask(url: str) -> str:
    """The URL with any password replaced, fit for printing."""
    url = re.sub(r"(sentinel_password=)[^&]*", r"\1***", url)
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def http_url(host: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def api_command() -> list[str]:
    """The API's command line: `python -m api` builds uvicorn from the FT_* settings."""
    return [sys.executable, "-m", "api"]


def workers_command(command: str) -> list[str]:
    """A Celery process's command line: `python -m workers worker|beat|flower` builds it from the
    FT_* settings (workers/__main__.py)."""
    return [sys.executable, "-m", "workers", command]


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


def external_redis(settings: Settings) -> str | None:
    """FT_REDIS_URL when the user set it (it must answer), else None: we embed one."""
    if "redis_url" not in settings.model_fields_set or not settings.redis_url:
        return None
    if not answers(settings.redis_url, timeout=3):
        raise LaunchError(
            f"FT_REDIS_URL={mask(settings.redis_url)} does not answer PING: start that Redis, "
            "fix the URL, or unset FT_REDIS_URL to get an embedded Redis"
        )
    return settings.redis_url


def jwt_secret(settings: Settings, data_dir: Path) -> tuple[str, str]:
    """The secret, and where it came from."""
    if settings.jwt_secret is not None:
        secret, source = settings.jwt_secret.get_secret_value(), "from FT_JWT_SECRET"
    else:
        path = data_dir / "jwt_secret"
        secret, created = read_or_create(path, lambda: secrets.token_urlsafe(48))
        source = f"{'generated into' if created else 'read from'} {path}"
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise LaunchError(f"the JWT secret ({source}) is shorter than {MIN_JWT_SECRET_BYTES} bytes")
    return secret, source


def flower_credentials(settings: Settings, data_dir: Path) -> tuple[str, str]:
    """`user:password` for Flower's basic auth, and how to tell the user about it.

    Never the admin's API password: Flower has credentials of its own.
    """
    if settings.flower_basic_auth is not None:
        credential = settings.flower_basic_auth.get_secret_value()
        if ":" not in credential or "," in credential:
            raise LaunchError("FT_FLOWER_BASIC_AUTH must be user:password, without commas")
        return credential, f"user {credential.split(':', 1)[0]}, password from FT_FLOWER_BASIC_AUTH"
    path = data_dir / "flower_password"
    password, _ = read_or_create(path, lambda: secrets.token_urlsafe(18))
    return f"{FLOWER_USER}:{password}", f"user {FLOWER_USER}, password {password}  (kept in {path})"


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def rotate_logs(logs_dir: Path) -> None:
    """At start, a child's log over LOG_KEEP_BYTES becomes NAME.log.1 (replacing the older one)."""
    for log in logs_dir.glob("*.log"):
        if log.stat().st_size > LOG_KEEP_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make run", description="Run the whole service in the foreground.")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show the children's output (always in FT_DATA_DIR/logs); or FT_VERBOSE=1",
    )
    return parser.parse_args(argv)


class Launch:
    """One `make run`: what it prepared, and the loop that keeps it running."""

    def __init__(self, settings: Settings, verbose: bool, stopper: Stopper) -> None:
        self.settings = settings
        self.verbose = verbose
        self.stopper = stopper
        self.data_dir = settings.data_dir.resolve()
        self.logs_dir = self.data_dir / "logs"
        self.api_url = http_url(settings.host, settings.port)
        self.flower_url = http_url(settings.flower_host, settings.flower_port)
        self.summary: list[str] = []
        self.supervisor = Supervisor([])
        self.reserve: DiskReserve | None = None

    def choose_redis(self) -> tuple[str, EmbeddedRedis | None, str]:
        """FT_REDIS_URL, else an embedded Redis (with its disk reserve); and the summary line."""
        redis_url = external_redis(self.settings)
        if redis_url is not None:
            return redis_url, None, f"FT_REDIS_URL {mask(redis_url)}"
        try:
            embedded = EmbeddedRedis(self.data_dir, self.settings.redis_server)
        except RuntimeError as exc:
            raise LaunchError(str(exc)) from None
        self.reserve = DiskReserve(embedded.dir)
        self.reserve.allocate()
        return (
            embedded.url,
            embedded,
            (
                f"embedded redis-server {embedded.version()} ({embedded.chosen_by}) on {embedded.address}, "
                f"data in {embedded.dir}\n"
                f"          binary {embedded.binary}\n"
                "          (FT_REDIS_SERVER=PATH runs another binary; FT_REDIS_URL=URL uses your own Redis)"
            ),
        )

    def prepare(self) -> tuple[dict[str, str], EmbeddedRedis | None, str]:
        """Redis and secrets; prints the summary block. Returns the children's environment,
        the embedded Redis if any, and Flower's credentials."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        rotate_logs(self.logs_dir)
        redis_url, embedded, redis_line = self.choose_redis()
        secret, secret_source = jwt_secret(self.settings, self.data_dir)
        flower_auth, flower_hint = flower_credentials(self.settings, self.data_dir)
        self.summary = [
            f"  data    {self.data_dir}  (logs in {self.logs_dir})",
            f"  redis   {redis_line}",
            f"  jwt     secret {secret_source}",
            f"  api     {self.api_url}   docs: {self.api_url}/docs",
            f"  flower  {self.flower_url}   {flower_hint}",
        ]
        say("File Transfer API (make run): API, Celery worker, beat and Flower; Ctrl-C stops them all")
        for line in self.summary:
            say(line)
        env = {k: v for k, v in os.environ.items() if k not in ("FLOWER_BASIC_AUTH", "FT_FLOWER_BASIC_AUTH")}
        env.update(
            FT_REDIS_URL=redis_url,
            FT_JWT_SECRET=secret,
            FT_DATA_DIR=str(self.data_dir),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        return env, embedded, flower_auth

    def child(self, name: str, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> Callable[[], Child]:
        return lambda: Child(name, args, env, str(cwd), self.logs_dir / f"{name}.log", echo=self.verbose)

    def services(self, env: dict[str, str], embedded: EmbeddedRedis | None, flower_auth: str) -> list[Service]:
        services = []
        if embedded is not None:
            services.append(Service("redis", self.start_redis(embedded, env), stop_last=True))
        services += [
            Service("api", self.child("api", api_command(), env)),
            Service("worker", self.child("worker", workers_command("worker"), env)),
            Service("beat", self.child("beat", workers_command("beat"), env)),
            # The credentials go through the environment, so they do not show in `ps`.
            Service(
                "flower",
                self.child(
                    "flower",
                    workers_command("flower"),
                    {**env, "FT_FLOWER_BASIC_AUTH": flower_auth},
                ),
            ),
        ]
        return services

    def start_redis(self, embedded: EmbeddedRedis, env: dict[str, str]) -> Callable[[], Child]:
        start = self.child("redis", embedded.args(), env, embedded.dir)

        def run() -> Child:
            embedded.write_config()
            return start()

        return run

    def run(self) -> int:
        env, embedded, flower_auth = self.prepare()
        services = self.services(env, embedded, flower_auth)
        self.supervisor = Supervisor(services)
        started = time.monotonic()
        if embedded is not None:
            services[0].run()
            redis_child = services[0].child
            if not embedded.wait_ready(lambda: redis_child.poll() is None and not self.stopper.event.is_set()):
                if self.stopper.event.is_set():
                    return 0
                tail = "\n".join(f"    {line}" for line in redis_child.log_tail())
                raise LaunchError(f"the embedded redis-server did not come up; {redis_child.log_path}:\n{tail}")
        for service in services:
            if service.child is None:
                service.run()
        say(
            f"starting {', '.join(s.name for s in services)} ..."
            + ("" if self.verbose else f" (their output: {self.logs_dir}/NAME.log; --verbose shows it here)")
        )
        self.supervise(started)
        say(f"{self.stopper.signame} received; stopping")
        return 0

    def supervise(self, started: float) -> None:
        """Restart what dies; report when /health turns red and when it is green again."""
        ready, healthy, red_since, next_probe, next_reserve = False, False, started, 0.0, 0.0
        while not self.stopper.event.wait(0.2):
            self.supervisor.check()
            now = time.monotonic()
            if self.reserve is not None and now >= next_reserve:
                next_reserve = now + RESERVE_EVERY
                self.reserve.check()
            if now < next_probe:
                continue
            next_probe = now + (HEALTH_EVERY if ready else 0.25)
            ok = health_ok(self.api_url)
            if ok and not ready:
                ready = healthy = True
                self.say_ready(now - started)
            elif ok and not healthy:
                healthy = True
                say(f"/health green again after {now - red_since:.1f} s")
            elif not ok and healthy:
                healthy, red_since = False, now
                say("/health is red (the API, Redis or the worker is away); waiting for it to come back")

    def say_ready(self, seconds: float) -> None:
        say(f"ready in {seconds:.1f} s")
        for line in self.summary:
            say(line)
        if self.settings.admin_username and self.settings.admin_password:
            say(f"  next    open {self.api_url}/ in a browser and sign in as {self.settings.admin_username!r}")
        else:
            say(f"  next    add a user (it asks for the password), then open {self.api_url}/ in a browser:")
            say("          .venv/bin/python -m api.users add NAME --admin")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.umask(PRIVATE_UMASK)
    stopper = Stopper()
    try:
        settings = Settings()
    except ValidationError as exc:
        say("error: invalid configuration")
        for line in describe_invalid(exc):
            say(f"  {line}")
        return 2
    launch = Launch(settings, args.verbose or settings.verbose, stopper)
    lock = DataDirLock(launch.data_dir)
    try:
        launch.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock.acquire()
        make_private(launch.data_dir)
        return launch.run()
    except (LaunchError, DataDirBusy, CrashLoop) as exc:
        say(f"error: {exc}")
        return 1
    finally:
        launch.supervisor.stop(STOP_TIMEOUT, lambda: stopper.hurry)
        lock.release()
        if launch.supervisor.services:
            say("all stopped")
