"""Helpers for tests that run the real parts: processes, waiting on conditions, tokens."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from core.users import UserStore
from ops.process import die_with_parent
from ops.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
# Debian's Chromium, driven by Playwright (whose own browser download cannot work here).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_tool(name: str, module_level: bool = False) -> str:
    """The path of a command-line tool a test needs. Missing: a skip on a developer's machine, an
    error in CI (the CI variable is set), where `.ci/run` installs it and a skip would silently
    drop a whole area of tests."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (.ci/run installs it; Debian: apt-get install {name})"
    if os.environ.get("CI"):
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=module_level)


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f": {last_error!r}" if last_error else ""))


def service_env(data_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env.update(
        FT_DATA_DIR=str(data_dir),
        FT_REDIS_URL=redis_url,
        FT_JWT_SECRET=JWT_SECRET,
        FT_MIN_FREE_BYTES="0",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Proc:
    """A child process in its own process group, so that stopping it stops its children too."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only prctl, which needs the child
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_nginx(root: Path, conf: str) -> Proc:
    """nginx in the foreground, everything it writes under `root` (created here)."""
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    access_log = "" if "access_log" in conf else "    access_log off;\n"  # a config's own log is kept
    conf = conf.replace("http {\n", "http {\n" + temp_paths + access_log, 1)
    (root / "nginx.conf").write_text(conf)
    globals_ = f"daemon off; pid {root}/nginx.pid;"
    if os.geteuid() == 0:  # workers would drop to nobody, who cannot read pytest's 0700 directories
        globals_ += f" user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"
    return Proc(
        [
            require_tool("nginx"),
            "-p",
            str(root),
            "-e",
            str(root / "error.log"),
            "-c",
            str(root / "nginx.conf"),
            "-g",
            globals_,
        ],
        dict(os.environ),
        root / "nginx.out",
    ).start()


@contextmanager
def running_nginx(root: Path, conf: str, port: int, ready_path: str) -> Iterator[str]:
    """nginx started with `conf` (listening on `port`) and stopped on the way out; yields its URL
    once `ready_path` answers."""
    proc = start_nginx(root, conf)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"nginx exited: {proc.log()}")
            return httpx.get(f"{url}{ready_path}", timeout=2).status_code < 500

        wait_until(up, timeout=20, what=f"nginx to answer {ready_path}")
        yield url
    finally:
        proc.stop()


def deploy_nginx_conf(port: int, upstream_port: int, files_dir: Path) -> str:
    """deploy/nginx.conf as shipped, but for ports, the files directory and the mime.types include."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for old, new in (
        (r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{port};"),
        (r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        (r"alias /\S+/files/;", f"alias {files_dir}/;"),
        (r"worker_processes auto;", "worker_processes 1;"),
        (r"\n\s*include mime\.types;", ""),
    ):
        conf, n = re.subn(old, new, conf)
        assert n == 1, f"deploy/nginx.conf no longer has {old!r}"
    return conf


def balancer_nginx_conf(port: int, nodes: list[str], access_log: Path) -> str:
    """deploy/nginx-balancer.conf as shipped, but for the node addresses (host:port each), the
    listening port and the access log."""
    conf = (ROOT / "deploy" / "nginx-balancer.conf").read_text()
    example = re.compile(r"\n\s*server 10\.0\.0\.\d+:8000 (.*);")
    options = example.search(conf).group(1)
    servers = "".join(f"\n        server {node} {options};" for node in nodes)
    conf, n = example.subn("", conf)
    assert n == 3, "deploy/nginx-balancer.conf no longer lists three example nodes"
    for old, new in (
        (r"upstream ft_api_nodes \{", "upstream ft_api_nodes {" + servers),
        (r"listen 8080;", f"listen 127.0.0.1:{port};"),
        (r"worker_processes auto;", "worker_processes 1;"),
        (r"access_log logs/balancer-access\.log", f"access_log {access_log}"),
    ):
        conf, n = re.subn(old, new, conf)
        assert n == 1, f"deploy/nginx-balancer.conf no longer has {old!r}"
    return conf


def stop_all(procs) -> None:
    """Stop every process in order, even when stopping one of them fails (that error is raised
    once all the others have been stopped)."""
    with ExitStack() as stopping:
        for proc in reversed(list(procs)):
            stopping.callback(proc.stop)


class ThreadedUvicorn:
    """An ASGI app served by uvicorn in a thread of the test process (so a test can patch it)."""

    def __init__(self, app, lifespan: str = "off"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                loop="uvloop",
                http="httptools",
                lifespan=lifespan,
                log_level="warning",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=20, what="uvicorn to start")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def start_api(
    data_dir: Path, redis_url: str, log_dir: Path, host: str = "127.0.0.1", port: int | None = None, **extra_env: str
) -> tuple[Proc, str]:
    """`python -m api` on host:port (a free port unless given); returns once it answers."""
    port = free_port() if port is None else port
    env = service_env(data_dir, redis_url, FT_HOST=host, FT_PORT=str(port), FT_LOG_LEVEL="warning", **extra_env)
    proc = Proc([PYTHON, "-m", "api"], env, log_dir / f"api-{host}-{port}.log").start()
    url = f"http://{host}:{port}"

    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"API exited:\n{proc.log()}")
        return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200

    try:
        wait_until(up, timeout=30, what="the API to answer")
    except BaseException:
        proc.stop()  # it is the caller's only once it answers
        raise
    return proc, url


def workers_command(command: str, *args: str) -> list[str]:
    """A Celery process as every deployment starts it: `python -m workers worker|beat|flower`."""
    return [PYTHON, "-m", "workers", command, *args]


def start_worker(data_dir: Path, redis_url: str, log_dir: Path, name: str = "w1", **extra_env: str) -> Proc:
    return Proc(
        workers_command(
            "worker",
            "--concurrency=1",
            "--pool=prefork",
            f"--hostname={name}@%h",
            "--without-mingle",
            "--without-gossip",
        ),
        service_env(data_dir, redis_url, **extra_env),
        log_dir / f"worker-{name}.log",
    ).start()


@dataclass
class Stack:
    """The real service: API (uvicorn) and one Celery worker on our Redis."""

    url: str
    data_dir: Path
    redis_url: str
    log_dir: Path
    api: Proc | None
    worker: Proc | None
    users: UserStore | None

    def add_user(self, role: str = "user", password: str = "correct horse battery") -> tuple[str, str]:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        self.users.set(name, password, role)
        return name, password

    def token(self, role: str = "user") -> str:
        name, password = self.add_user(role)
        return login(self.url, name, password)


@contextmanager
def running_stack(root: Path, redis_url: str, **env: str) -> Iterator[Stack]:
    """API and worker on `redis_url`; both stopped on the way out, however it is left: a worker
    left behind would take tasks from a later test's database. Tests may replace `stack.api` or
    `stack.worker` (a restart): whatever is there at the end is stopped."""
    data_dir = root / "data"
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack("", data_dir, redis_url, log_dir, None, None, None)
    with ExitStack() as cleanup:
        cleanup.callback(lambda: stack.worker and stack.worker.stop())  # runs last
        cleanup.callback(lambda: stack.api and stack.api.stop())
        stack.worker = start_worker(data_dir, redis_url, log_dir, **env)
        stack.api, stack.url = start_api(data_dir, redis_url, log_dir, **env)
        stack.users = UserStore(data_dir / "users.sqlite3")  # after the API has set the database up
        wait_until(
            lambda: httpx.get(f"{stack.url}/health", timeout=2).json().get("workers", 0) >= 1,
            timeout=60,
            what="a worker heartbeat",
        )
        yield stack


@contextmanager
def own_stack(root: Path, redis_server_url: str, db: int, **env: str) -> Iterator[Stack]:
    """A stack on database `db` of the tests' own redis-server, flushed before and after."""
    url = redis_server_url.rsplit("/", 1)[0] + f"/{db}"
    database = redis.Redis.from_url(url)
    database.flushdb()
    try:
        with running_stack(root, url, **env) as stack:
            yield stack
    finally:
        database.flushdb()
        database.close()


def new_id(prefix: str = "f") -> str:
    """A fresh file id, so that tests sharing one stack never meet each other's uploads."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def login(url: str, username: str, password: str) -> str:
    response = httpx.post(f"{url}/token", json={"username": username, "password": password}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wire_header(start: int, end: int, crc: int) -> bytes:
    """The 12-byte chunk header exactly as the contract spells it, built here and not by the code
    under test, so that a wrong encoder cannot agree with a wrong decoder."""
    return struct.pack(">III", start % 2**32, end % 2**32, crc)


def chunk_body(payload: bytes, start: int, end: int | None = None, crc: int | None = None) -> bytes:
    """The wire body of one chunk: 12-byte header then payload."""
    end = start + len(payload) - 1 if end is None else end
    return wire_header(start, end, zlib.crc32(payload) if crc is None else crc) + payload


def send_chunk(
    client: httpx.Client,
    url: str,
    token: str,
    file_id: str,
    data: bytes,
    start: int,
    end: int,
    total: int | None = None,
    **headers: str,
) -> httpx.Response:
    """POST the bytes data[start:end+1] of a file as one chunk."""
    total = len(data) if total is None else total
    payload = data[start : end + 1]
    hdrs = {
        **bearer(token),
        "Content-Range": f"bytes {start}-{end}/{total}",
        "Content-Type": "application/octet-stream",
    }
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return client.post(f"{url}/upload/{file_id}", content=chunk_body(payload, start, end), headers=hdrs)


def wait_for_state(
    client: httpx.Client, url: str, token: str, file_id: str, states=("complete", "failed"), timeout: float = 60.0
) -> dict:
    def done():
        body = client.get(f"{url}/status/{file_id}", headers=bearer(token)).json()
        return body if body.get("state") in states else None

    return wait_until(done, timeout=timeout, what=f"{file_id} to reach {states}")


def read_answer(sock) -> tuple[int | None, dict[str, str], bytes]:
    """Read one HTTP answer from a raw socket: (status, headers, body); status None when the
    server closed (or reset) the connection before a whole head arrived."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return None, {}, data
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
        return int(lines[0].split()[1]), headers, body[:length]
    except ConnectionResetError:
        return None, {}, data


def run_on_redis(redis_url: str, make_env: Callable):
    """A runner for async repository tests: run(fn) awaits fn(make_env(client)) on a fresh
    event loop with its own connection to `redis_url`."""
    import asyncio

    import redis.asyncio as aioredis

    def runner(fn):
        async def main():
            client = aioredis.Redis.from_url(redis_url)
            try:
                return await fn(make_env(client))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


async def store_chunk(
    repo,
    storage,
    file_id: str,
    owner: str,
    start: int,
    end: int,
    total: int,
    now: float,
    payload: bytes | None = None,
    file_name: str | None = None,
) -> None:
    """A chunk as the upload service stores it: claim, bytes at their offset, commit."""
    import zlib

    from core.state import Chunk

    payload = payload if payload is not None else os.urandom(end - start + 1)
    chunk = Chunk(start, end, zlib.crc32(payload))
    token = uuid.uuid4().hex[:16]
    claimed = await repo.claim(file_id, owner, False, start, end, total, chunk.crc32, token, 60, True, now=now)
    assert claimed.outcome == "claimed", claimed
    fd = storage.open_for_chunk(file_id, total)
    try:
        os.pwrite(fd, payload, start)
    finally:
        os.close(fd)
    assert (await repo.commit(file_id, token, chunk, file_name, None, now=now)).outcome == "committed"


class Enqueued(list):
    """Stands in for the API's way to queue an assembly (core/jobs.py AssemblyQueue.push):
    records the file ids, in order."""

    async def __call__(self, file_id: str) -> None:
        self.append(file_id)
