"""Redis down: 503 `unavailable`, never a 500; health says so too."""

from __future__ import annotations

import time

import httpx
import jwt

from core.users import UserStore
from ops.redis_server import free_port
from tests.support import JWT_SECRET, bearer, chunk_body, start_api


def token_for(name: str, role: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": name, "role": role, "iat": now, "exp": now + 60, "ver": 0}, JWT_SECRET, algorithm="HS256")


def test_redis_down_is_503_unavailable(tmp_path, redis_server):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    api, url = start_api(tmp_path / "data", dead_redis, tmp_path)
    try:
        users = UserStore(tmp_path / "data" / "users.sqlite3")
        users.set("u", "pw")
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["redis"] != "ok"
        token_response = httpx.post(f"{url}/token", json={"username": "u", "password": "pw"}, timeout=10)
        assert token_response.status_code == 503 and token_response.json()["code"] == "unavailable"
        # A valid token (issued elsewhere) meets the same answer on every Redis-backed endpoint.
        users.set("boss", "pw", "admin")
        user, admin = token_for("u", "user"), token_for("boss", "admin")
        chunk = {"content": chunk_body(b"abc", 0), "headers": {"Content-Range": "bytes 0-2/3"}}
        for method, path, token, extra in [
            ("GET", "/status/x", user, {}),
            ("POST", "/upload/x", user, chunk),
            ("DELETE", "/upload/x", user, {}),
            ("GET", "/download/x", user, {}),
            ("GET", "/download/x", user, {"headers": {"Range": "bytes=0-1"}}),
            ("POST", "/cleanup", admin, {}),
            ("POST", "/cleanup", admin, {"params": {"older_than": 0}}),
            ("GET", "/tasks/00000000-0000-0000-0000-000000000000", admin, {}),
        ]:
            headers = {**bearer(token), **extra.pop("headers", {})}
            r = httpx.request(method, f"{url}{path}", headers=headers, timeout=30, **extra)
            assert r.status_code == 503 and r.json()["code"] == "unavailable", (method, path, r.text)
        head = httpx.head(f"{url}/download/x", headers=bearer(user), timeout=30)
        assert head.status_code == 503 and head.content == b""
    finally:
        api.stop()
