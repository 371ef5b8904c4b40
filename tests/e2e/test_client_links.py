"""The client on bad links: a proxy (tests/tcp_proxy.py) that cuts every connection after a
number of bytes from the client, and a server that answers 503 with Retry-After."""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from client import Client
from client.units import MiB
from tests.faulty_proxy import FaultyProxy, refuse_first
from tests.support import PYTHON, ROOT, new_id
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def cutting_proxy(stack):
    """Start proxies to the stack that cut each connection after `cut_up_after` bytes client->server."""
    started: list[TcpProxy] = []

    def start(cut_up_after: int) -> TcpProxy:
        proxy = TcpProxy(stack.url, cut_up_after=cut_up_after).__enter__()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.__exit__(None, None, None)


@pytest.fixture
def env(cli_env) -> dict[str, str]:
    return cli_env


def upload(env: dict[str, str], url: str, path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "client", "--url", url, "upload", str(path), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "cut_every, size", [(1 * MiB, 6 * MiB + 777), (8 * MiB, 24 * MiB + 5)], ids=["cut-every-1MiB", "cut-every-8MiB"]
)
def test_default_upload_gets_through_a_link_that_drops_every_few_mib(
    stack, env, cutting_proxy, tmp_path, cut_every, size
):
    """With the default 8 MiB chunks: the first chunk is cut before the upload exists (404 from
    /status must mean "start", not "not found"), and chunks must shrink below the cut length."""
    src = tmp_path / "dropping.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    file_id = new_id()
    proxy = cutting_proxy(cut_every)
    result = upload(env, proxy.url, src, "--file-id", file_id)
    assert result.returncode == 0, result.stderr[-3000:]
    assert proxy.cuts >= 1
    assert (stack.data_dir / "files" / file_id / "data").read_bytes() == data
    assert hashlib.sha256(data).hexdigest() in result.stdout
    assert proxy.up < 2 * size, (proxy.up, size)  # cut chunks cost bytes, but far fewer than the file


# --- Retry-After ------------------------------------------------------------------------------
@pytest.fixture
def refusing_front(stack):
    """Proxies in front of the API that refuse the first requests matching a rule
    (`"METHOD /path-prefix": (how many, status, Retry-After)`) and forward all others."""
    with ExitStack() as running:
        yield lambda rules: running.enter_context(FaultyProxy(stack.url, refuse_first(rules)))


def test_cli_waits_as_long_as_retry_after_says_on_503_and_429(stack, env, refusing_front, tmp_path):
    front = refusing_front(
        {"POST /token": (1, 503, "1"), "POST /upload/": (3, 503, "1"), "GET /download/": (2, 429, "1")}
    )
    src = tmp_path / "patient.bin"
    data = os.urandom(300 * 1024 + 3)
    src.write_bytes(data)
    file_id = new_id()
    up = upload(env, front.url, src, "--file-id", file_id, "--chunk-size", "128KiB")
    assert up.returncode == 0, up.stderr
    assert [seen.status for seen in front.of("POST", "/upload/")] == [503] * 3 + [200] * 3
    assert all(gap >= 1.0 for gap in front.gaps("POST", "/upload/")[:3]), front.gaps("POST", "/upload/")
    assert front.gaps("POST", "/token")[0] >= 1.0  # logging in waits as well

    out = tmp_path / "patient-copy.bin"
    down = subprocess.run(
        [PYTHON, "-m", "client", "--url", front.url, "download", file_id, "-o", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == data
    assert all(gap >= 1.0 for gap in front.gaps("GET", "/download/")[:2]), front.gaps("GET", "/download/")


def test_library_caps_a_long_retry_after(stack, refusing_front, tmp_path):
    """An hour-long Retry-After on /status is waited only `max_retry_after` seconds."""
    front = refusing_front({"GET /status/": (2, 503, "3600")})
    name, password = stack.add_user()
    src = tmp_path / "capped.bin"
    data = os.urandom(70_000)
    src.write_bytes(data)
    with Client(front.url, name, password, cache_dir=tmp_path / "cache", max_retry_after=0.3) as client:
        result = client.upload(src, new_id(), wait_timeout=60)
    assert result.size == len(data)
    gaps = front.gaps("GET", "/status/")
    assert gaps[0] >= 0.3 and gaps[1] >= 0.3, gaps
    assert [seen.status for seen in front.of("GET", "/status/")][:3] == [503, 503, 404]
