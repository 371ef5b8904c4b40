"""Sign-in, tokens and roles in-process (fakeredis holds the login limits).

The same against uvicorn and a real Redis, and the timing of failures: tests/e2e/test_auth.py,
test_login_limits.py."""

from __future__ import annotations

import jwt
import pytest

from core.tokens import decode_token
from tests.support import JWT_SECRET


def login(client, username: str, password: str):
    return client.post("/token", json={"username": username, "password": password})


def test_a_right_password_gets_a_token_that_works(client, alice):
    answer = login(client, alice.name, alice.password)
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    claims = decode_token(body["access_token"], JWT_SECRET)
    assert (claims.sub, claims.role, claims.exp - claims.iat) == ("alice", "user", 3600)
    assert client.get("/files", headers={"Authorization": f"Bearer {body['access_token']}"}).status_code == 200
    form = client.post("/token", data={"username": alice.name, "password": alice.password})
    assert form.status_code == 200  # the OAuth2 password form of Swagger UI's Authorize button


def test_a_wrong_password_and_an_unknown_user_get_the_same_401(client, alice):
    wrong, unknown = login(client, alice.name, "nope"), login(client, "nobody", "nope")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() and wrong.json()["code"] == "invalid_credentials"
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"] == "Bearer"


def test_repeated_failures_are_429_with_retry_after_but_other_users_may_sign_in(make_client, alice, bob):
    client = make_client(login_max_failures=2, login_window=60)  # each failure costs an Argon2 hash
    answers = [login(client, alice.name, "nope") for _ in range(3)]
    assert [a.status_code for a in answers[:-1]] == [401, 401]
    limited = answers[-1]
    assert (limited.status_code, limited.json()["code"]) == (429, "too_many_attempts")
    assert 0 < int(limited.headers["retry-after"]) <= 60
    assert login(client, alice.name, alice.password).status_code == 429  # counted before the hash
    assert login(client, bob.name, bob.password).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer not.a.token",
        "Basic YWxpY2U6cHc=",
        "Bearer " + jwt.encode({"sub": "alice"}, "another-secret-0123456789abcdef0123456789", algorithm="HS256"),
    ],
)
def test_no_valid_token_is_401_with_www_authenticate(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    for answer in (
        client.get("/files", headers=headers),
        client.get("/status/x", headers=headers),
        client.post("/upload/x", headers=headers, content=b""),
    ):
        assert answer.status_code == 401
        assert answer.json()["code"] == "not_authenticated" and answer.headers["www-authenticate"] == "Bearer"


def test_a_token_of_a_removed_user_stops_working(make_client, alice):
    client = make_client(user_cache_ttl=0)
    assert client.get("/files", headers=alice.headers).status_code == 200
    client.app.state.users.remove(alice.name)
    assert client.get("/files", headers=alice.headers).status_code == 401


def test_admin_endpoints_are_403_for_a_user(client, alice):
    for answer in (client.post("/cleanup", headers=alice.headers), client.get("/tasks/x", headers=alice.headers)):
        assert (answer.status_code, answer.json()["code"]) == (403, "forbidden")


def test_health_needs_no_token_and_counts_no_worker_here(client):
    answer = client.get("/health")
    assert answer.status_code == 503  # no Celery worker heartbeats in the fast layer
    assert answer.json()["redis"] == "ok" and answer.json()["code"] == "unavailable"
