"""Redis down: 503 `unavailable`, never a 500; health says so too."""

from __future__ import annotations

import httpx

from core.tokens import issue_token
from core.users import UserStore
from ops.redis_server import free_port
from tests.support import JWT_SECRET, bearer, chunk_body, start_api


def test_redis_down_is_503_unavailable(tmp_path, redis_server):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    api, url = start_api(tmp_path / "data", dead_redis, tmp_path)
    try:
        user = UserStore(tmp_path / "data" / "users.sqlite3").set("u", "pw")
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["redis"] != "ok"
        token_response = httpx.post(f"{url}/token", json={"username": "u", "password": "pw"}, timeout=10)
        assert token_response.status_code == 503 and token_response.json()["code"] == "unavailable"
        # A valid token (issued elsewhere) meets the same answer on every Redis-backed endpoint.
        token = issue_token(user, JWT_SECRET, 60)
        status = httpx.get(f"{url}/status/x", headers=bearer(token), timeout=10)
        assert status.status_code == 503 and status.json()["code"] == "unavailable"
        upload = httpx.post(
            f"{url}/upload/x", content=chunk_body(b"abc", 0),
            headers={**bearer(token), "Content-Range": "bytes 0-2/3"}, timeout=10,
        )
        assert upload.status_code == 503 and upload.json()["code"] == "unavailable"
        # Every 503 says when to come back (FT_UNAVAILABLE_RETRY_AFTER, default 5 s).
        for answer in (health, token_response, status, upload):
            assert answer.headers["retry-after"] == "5", answer
    finally:
        api.stop()
