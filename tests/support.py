"""Helpers for tests that run the real parts: processes, waiting on conditions, tokens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ops.process import die_with_parent
from ops.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
# Debian's Chromium, driven by Playwright (whose own browser download cannot work here).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
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

    def start(self) -> "Proc":
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent(),
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

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


def start_api(data_dir: Path, redis_url: str, log_dir: Path, **extra_env: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        [PYTHON, "-m", "uvicorn", "api.main:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--loop", "uvloop", "--http", "api.http_protocol:BoundedHttpToolsProtocol", "--log-level", "warning"],
        service_env(data_dir, redis_url, **extra_env),
        log_dir / f"api-{port}.log",
    ).start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"API exited:\n{proc.log()}")
        return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200

    wait_until(up, timeout=30, what="the API to answer")
    return proc, url


def start_worker(data_dir: Path, redis_url: str, log_dir: Path, name: str = "w1", **extra_env: str) -> Proc:
    return Proc(
        [PYTHON, "-m", "celery", "-A", "workers.celery_app", "worker", "--loglevel=INFO",
         "--concurrency=1", "--pool=prefork", f"--hostname={name}@%h", "--without-mingle", "--without-gossip"],
        service_env(data_dir, redis_url, **extra_env),
        log_dir / f"worker-{name}.log",
    ).start()


def new_id(prefix: str = "f") -> str:
    """A fresh file id, so that tests sharing one stack never meet each other's uploads."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def login(url: str, username: str, password: str) -> str:
    response = httpx.post(f"{url}/token", json={"username": username, "password": password}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chunk_body(payload: bytes, start: int, end: int | None = None, crc: int | None = None) -> bytes:
    """The wire body of one chunk: 12-byte header then payload."""
    import zlib

    from core.chunk_header import encode_header

    end = start + len(payload) - 1 if end is None else end
    return encode_header(start, end, zlib.crc32(payload) if crc is None else crc) + payload


def send_chunk(client: httpx.Client, url: str, token: str, file_id: str, data: bytes, start: int, end: int,
               total: int | None = None, **headers: str) -> httpx.Response:
    """POST the bytes data[start:end+1] of a file as one chunk."""
    total = len(data) if total is None else total
    payload = data[start : end + 1]
    hdrs = {**bearer(token), "Content-Range": f"bytes {start}-{end}/{total}",
            "Content-Type": "application/octet-stream"}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return client.post(f"{url}/upload/{file_id}", content=chunk_body(payload, start, end), headers=hdrs)


def wait_for_state(client: httpx.Client, url: str, token: str, file_id: str, states=("complete", "failed"),
                   timeout: float = 60.0) -> dict:
    def done():
        body = client.get(f"{url}/status/{file_id}", headers=bearer(token)).json()
        return body if body.get("state") in states else None

    return wait_until(done, timeout=timeout, what=f"{file_id} to reach {states}")


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


async def store_chunk(repo, storage, file_id: str, owner: str, start: int, end: int, total: int, now: float,
                      payload: bytes | None = None, file_name: str | None = None) -> None:
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
