"""`make run` (python -m launcher) as a user runs it, for the launcher and supervision tests."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import redis

from ops.redis_server import free_port
from tests.support import PYTHON, Proc, wait_until


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def process_tree(root: int) -> set[int]:
    """`root` and all its descendants, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))):
            parents[int(entry.name)] = info[0]
    tree, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - tree
        tree |= frontier
    return tree


def alive(pid: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] != "Z"


class Launcher:
    def __init__(
        self, tmp: Path, name: str = "launcher", args: tuple[str, ...] = (), data_dir: Path | None = None, **env: str
    ) -> None:
        self.data_dir = data_dir or tmp / "data"
        self.port, self.flower_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.flower = f"http://127.0.0.1:{self.flower_port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FT_", "FLOWER_"))}
        base.update(
            {
                "FT_DATA_DIR": str(self.data_dir),
                "FT_PORT": str(self.port),
                "FT_FLOWER_PORT": str(self.flower_port),
                "FT_MIN_FREE_BYTES": "0",
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        )
        self.proc = Proc([PYTHON, "-m", "launcher", *args], base, tmp / f"{name}.log").start()

    def healthy(self) -> bool:
        body = httpx.get(f"{self.url}/health", timeout=2).json()
        return body.get("redis") == "ok" and body.get("workers", 0) >= 1

    def wait_ready(self) -> None:
        def ready():
            if not self.proc.alive():
                return "exited"  # stop waiting at once
            return "ready in" in self.proc.log() and self.healthy()

        assert wait_until(ready, timeout=90, what="/health green") != "exited", self.proc.log()
        wait_until(
            lambda: httpx.get(f"{self.flower}/", timeout=5).status_code == 401,
            timeout=30,
            what="Flower asking for auth",
        )

    def flower_auth(self, auth: tuple[str, str]) -> None:
        """Every Flower URL, /metrics and /healthcheck included, wants these credentials."""
        for path in ("/api/workers", "/metrics", "/healthcheck"):
            assert httpx.get(f"{self.flower}{path}", timeout=5).status_code == 401, path
            assert httpx.get(f"{self.flower}{path}", auth=(auth[0], "wrong"), timeout=5).status_code == 401, path
            assert httpx.get(f"{self.flower}{path}", auth=auth, timeout=15).status_code == 200, path

    def flower_password(self) -> str:
        return (self.data_dir / "flower_password").read_text().strip()

    def redis(self) -> redis.Redis:
        """A client of the embedded Redis, from the address the launcher printed."""
        port = int(re.search(r"embedded redis-server .* on 127\.0\.0\.1:(\d+)", self.proc.log()).group(1))
        password = (self.data_dir / "redis_password").read_text().strip()
        return redis.Redis(port=port, password=password, socket_timeout=5)

    def child_pid(self, name: str) -> int:
        """The pid of the launcher's direct child running `name` (api, worker, beat, flower, redis)."""
        marks = {
            "api": b"\x00-m\x00api\x00",
            "worker": b"\x00-m\x00workers\x00worker\x00",
            "beat": b"\x00-m\x00workers\x00beat\x00",
            "flower": b"\x00-m\x00workers\x00flower\x00",
            "redis": b"redis-server",
        }
        for pid in process_tree(self.proc.pid) - {self.proc.pid}:
            info = _stat(pid)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if info and info[0] == self.proc.pid and marks[name] in cmdline:
                return pid
        raise LookupError(f"no {name} child of {self.proc.pid}")

    def stop(self, sig: int) -> set[int]:
        """Send `sig`; the launcher must exit and leave none of its processes behind."""
        tree = process_tree(self.proc.pid)
        assert len(tree) >= 5, tree  # launcher, api, worker, beat, flower (and more)
        self.proc.kill(sig)
        self.proc.popen.wait(40)
        wait_until(lambda: not any(alive(pid) for pid in tree), timeout=20, what="the whole process tree to exit")
        return tree

    def close(self) -> None:
        """Teardown: whatever state the test left it in."""
        if self.proc.alive():
            self.proc.kill(signal.SIGTERM)
            try:
                self.proc.popen.wait(40)
            except Exception:
                self.proc.kill(signal.SIGKILL)
                self.proc.popen.wait(10)
