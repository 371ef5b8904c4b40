"""Helpers for tests that break things: raw-socket chunks, process surgery, extra Celery processes."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from tests.support import Proc, bearer, chunk_body, service_env, stop_all, wait_until, workers_command

MiB = 1024 * 1024


# --- raw HTTP ------------------------------------------------------------------------------


def raw_chunk_request(
    url: str, token: str, file_id: str, payload: bytes, start: int, total: int, content_length: int | None = None
) -> tuple[bytes, bytes]:
    """The head and body of `POST /upload/{file_id}` for one chunk, as bytes on the wire."""
    end = start + len(payload) - 1
    body = chunk_body(payload, start)
    host = urlsplit(url).netloc
    head = (
        f"POST /upload/{file_id} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Range: bytes {start}-{end}/{total}\r\n"
        f"Content-Length: {len(body) if content_length is None else content_length}\r\n"
        "\r\n"
    ).encode()
    return head, body


def open_partial_chunk(
    url: str, token: str, file_id: str, payload: bytes, start: int, total: int, send_body_bytes: int
) -> socket.socket:
    """Send the head of a chunk and only the first `send_body_bytes` of its body; leave it open."""
    head, body = raw_chunk_request(url, token, file_id, payload, start, total)
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(head + body[:send_body_bytes])
    return sock


def drop(sock: socket.socket, abortive: bool) -> None:
    """Close like a crashed client (RST) or like one that gave up (FIN)."""
    if abortive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


# --- looking inside a stack -----------------------------------------------------------------


def claims_key(file_id: str) -> str:
    return f"ft:up:{file_id}:claims"


def stack_redis(stack) -> redis.Redis:
    """A client on the stack's own database (always one the tests started)."""
    return redis.Redis.from_url(stack.redis_url)


def status(client: httpx.Client, stack, token: str, file_id: str) -> httpx.Response:
    return client.get(f"{stack.url}/status/{file_id}", headers=bearer(token))


def post_chunk(
    client: httpx.Client, url: str, token: str, file_id: str, payload: bytes, start: int, total: int, **headers: str
) -> httpx.Response:
    end = start + len(payload) - 1
    hdrs = {
        **bearer(token),
        "Content-Range": f"bytes {start}-{end}/{total}",
        "Content-Type": "application/octet-stream",
    }
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return client.post(f"{url}/upload/{file_id}", content=chunk_body(payload, start), headers=hdrs)


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (Linux)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


@dataclass
class BigFile:
    """A file of `count` blocks of `block` bytes, block i being a random block stamped with i.

    Never held in memory whole: blocks are made on demand, which keeps multi-GiB files cheap.
    """

    count: int
    block: int = 64 * MiB

    def __post_init__(self) -> None:
        self._base = os.urandom(self.block)

    @property
    def size(self) -> int:
        return self.count * self.block

    def part(self, i: int) -> bytes:
        return i.to_bytes(8, "big") + self._base[8:]

    def parts(self) -> Iterator[tuple[int, bytes]]:
        for i in range(self.count):
            yield i * self.block, self.part(i)

    def sha256(self) -> str:
        if getattr(self, "_sha256", None) is None:
            digest = hashlib.sha256()
            for _, part in self.parts():
                digest.update(part)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def matches(self, path: Path) -> bool:
        if path.stat().st_size != self.size:
            return False
        with open(path, "rb") as handle:
            return all(handle.read(self.block) == part for _, part in self.parts())


# --- extra processes ------------------------------------------------------------------------


class Processes:
    """Extra service processes a test starts; all stopped at teardown."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def start(self, args: list[str], stack, log_name: str, **env: str) -> Proc:
        proc = Proc(args, service_env(stack.data_dir, stack.redis_url, **env), stack.log_dir / log_name).start()
        self.started.append(proc)
        return proc

    def beat(self, stack, name: str, **env: str) -> Proc:
        return self.start(
            # --schedule only matters if RedBeat were not used: keep any such file out of the repo.
            workers_command("beat", "--loglevel=DEBUG", f"--schedule={stack.data_dir / f'beat-{name}.db'}"),
            stack,
            f"beat-{name}.log",
            **env,
        )

    def worker(self, stack, name: str, **env: str) -> Proc:
        proc = self.start(
            workers_command(
                "worker",
                "--concurrency=1",
                "--pool=prefork",
                f"--hostname={name}@%h",
                "--without-mingle",
                "--without-gossip",
            ),
            stack,
            f"worker-{name}.log",
            **env,
        )
        return proc

    def stop_all(self) -> None:
        stop_all(reversed(self.started))


_TASK_LINE = re.compile(r"Task (?P<name>[\w.]+)\[(?P<id>[0-9a-f-]+)\] (?P<what>received|succeeded|raised|retry)")


def task_events(log: str, name: str) -> list[tuple[str, str]]:
    """(task id, event) pairs for task `name` in a worker log, in order."""
    return [(m["id"], m["what"]) for m in _TASK_LINE.finditer(log) if m["name"] == name]


def wait_for_log(proc: Proc, pattern: str, timeout: float = 30.0, count: int = 1) -> list[str]:
    regex = re.compile(pattern)

    def found():
        if not proc.alive():
            raise RuntimeError(f"{proc.args[:6]} exited:\n{proc.log()[-3000:]}")
        hits = regex.findall(proc.log())
        return hits if len(hits) >= count else None

    return wait_until(found, timeout=timeout, what=f"{pattern!r} x{count} in {proc.log_path.name}")
