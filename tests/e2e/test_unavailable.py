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
        users = UserStore(tmp_path / "data" / "users.sqlite3")
        user, admin = (
            issue_token(users.set(name, "pw", role), JWT_SECRET, 60)
            for name, role in (("u", "user"), ("boss", "admin"))
        )
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["redis"] != "ok"
        token_response = httpx.post(f"{url}/token", json={"username": "u", "password": "pw"}, timeout=10)
        assert token_response.status_code == 503 and token_response.json()["code"] == "unavailable"
        # A valid token (issued elsewhere) meets the same answer on every Redis-backed endpoint.
        answers = [health, token_response]
        chunk = {"content": chunk_body(b"abc", 0), "headers": {"Content-Range": "bytes 0-2/3"}}
        tus_headers = {"Tus-Resumable": "1.0.0"}
        for method, path, token, extra in [
            ("GET", "/status/x", user, {}),
            ("POST", "/upload/x", user, chunk),
            ("DELETE", "/upload/x", user, {}),
            ("GET", "/download/x", user, {}),
            ("GET", "/download/x", user, {"headers": {"Range": "bytes=0-1"}}),
            ("POST", "/cleanup", admin, {}),
            ("POST", "/cleanup", admin, {"params": {"older_than": 0}}),
            ("GET", "/tasks/00000000-0000-0000-0000-000000000000", admin, {}),
            ("POST", "/files/", user, {"headers": {**tus_headers, "Upload-Length": "3"}}),
            (
                "PATCH",
                "/files/x",
                user,
                {
                    "content": b"abc",
                    "headers": {**tus_headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                },
            ),
            ("DELETE", "/files/x", user, {"headers": tus_headers}),
        ]:
            headers = {**bearer(token), **extra.pop("headers", {})}
            r = httpx.request(method, f"{url}{path}", headers=headers, timeout=30, **extra)
            assert r.status_code == 503 and r.json()["code"] == "unavailable", (method, path, r.text)
            answers.append(r)
        head = httpx.head(f"{url}/download/x", headers=bearer(user), timeout=30)
        assert head.status_code == 503 and head.content == b""
        tus_head = httpx.head(f"{url}/files/x", headers={**bearer(user), **tus_headers}, timeout=30)
        assert tus_head.status_code == 503
        # Every 503 says when to come back (FT_UNAVAILABLE_RETRY_AFTER, default 5 s).
        for answer in [*answers, head, tus_head]:
            assert answer.headers["retry-after"] == "5", answer
    finally:
        api.stop()
