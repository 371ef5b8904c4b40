"""The client on bad links: a proxy (tests/tcp_proxy.py) that cuts every connection after a
number of bytes from the client, and a server that answers 503 with Retry-After."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from client.units import MiB
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
def env(stack, tmp_path) -> dict[str, str]:
    name, password = stack.add_user()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env.update(FT_USERNAME=name, FT_PASSWORD=password, FT_CLIENT_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def upload(env: dict[str, str], url: str, path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "client", "--url", url, "upload", str(path), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("cut_every, size", [(1 * MiB, 6 * MiB + 777), (8 * MiB, 24 * MiB + 5)],
                         ids=["cut-every-1MiB", "cut-every-8MiB"])
def test_default_upload_gets_through_a_link_that_drops_every_few_mib(stack, env, cutting_proxy, tmp_path,
                                                                      cut_every, size):
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
