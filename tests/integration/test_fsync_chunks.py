"""FT_FSYNC_CHUNKS: each stored chunk is fdatasync'ed before it is acknowledged.

In process (the app under uvicorn in a thread, on a real redis-server) so that the calls
themselves can be counted; tests/e2e/test_upload.py runs the same option end to end.
"""

from __future__ import annotations

import os

import httpx
import pytest

from api.main import create_app
from core.users import UserStore
from tests.support import ThreadedUvicorn, bearer, login, send_chunk

KiB = 1024


@pytest.fixture
def synced_fds(monkeypatch) -> list[str]:
    """Every fdatasync, recorded as the path of the file it was called on, then really done."""
    calls: list[str] = []
    real = os.fdatasync

    def recording(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", recording)
    return calls


@pytest.mark.parametrize("fsync", [True, False], ids=["on", "off"])
def test_each_chunk_is_fdatasynced_only_when_asked(settings, redis_db, synced_fds, fsync):
    settings = settings.model_copy(update={"fsync_chunks": fsync})
    app = create_app(settings)
    UserStore(settings.users_db).set("alice", "correct horse battery")
    data = os.urandom(300 * KiB)
    with ThreadedUvicorn(app, lifespan="on") as server, httpx.Client(timeout=30) as client:
        token = login(server.url, "alice", "correct horse battery")
        for start in range(0, len(data), 100 * KiB):
            r = send_chunk(client, server.url, token, "synced", data, start, start + 100 * KiB - 1)
            assert r.status_code == 200, r.text
        status = client.get(f"{server.url}/status/synced", headers=bearer(token)).json()
    assert status["received_bytes"] == len(data)
    staged = [path for path in synced_fds if path.endswith("/staging/synced/data")]
    assert len(staged) == (3 if fsync else 0), synced_fds
