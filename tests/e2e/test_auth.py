"""CONTRACT 3 over real HTTP: tokens, their claims, and every way a token can be bad."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest

from tests.support import JWT_SECRET, bearer, login, wait_until

PROTECTED = "/status/some-file"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _assert_not_authenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"


def test_token_from_json_has_the_contract_claims(stack):
    name, password = stack.add_user("admin")
    response = httpx.post(f"{stack.url}/token", json={"username": name, "password": password})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    claims = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == name and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"


def test_token_from_oauth2_form(stack):
    name, password = stack.add_user()
    response = httpx.post(f"{stack.url}/token", data={"username": name, "password": password, "grant_type": "password"})
    assert response.status_code == 200
    assert jwt.decode(response.json()["access_token"], JWT_SECRET, algorithms=["HS256"])["role"] == "user"


def test_wrong_password_and_unknown_user_answer_the_same(stack):
    name, _ = stack.add_user()
    wrong = httpx.post(f"{stack.url}/token", json={"username": name, "password": "nope"})
    unknown = httpx.post(f"{stack.url}/token", json={"username": name + "-ghost", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == "invalid_credentials"


def test_unknown_user_costs_a_password_hash_too(stack):
    """Similar cost: the unknown user is verified against a dummy Argon2 hash. Measured as the
    API's CPU time, not wall time: a loaded machine stretches the one but not the other."""
    import psutil

    name, _ = stack.add_user()
    api = psutil.Process(stack.api.pid)

    def cpu_seconds_of(usernames: list[str]) -> float:
        before = api.cpu_times()
        for username in usernames:
            httpx.post(f"{stack.url}/token", json={"username": username, "password": "nope"})
        after = api.cpu_times()
        return (after.user + after.system) - (before.user + before.system)

    known = cpu_seconds_of([name] * 3)
    unknown = cpu_seconds_of([f"ghost-{i}" for i in range(3)])
    # Argon2 verification dominates both; a missing dummy hash would make `unknown` ~100x cheaper.
    assert known >= 0.02, f"three Argon2 verifications took only {known:.3f} s of CPU"
    assert unknown > known / 4, (known, unknown)


@pytest.mark.parametrize("body", [b"", b"{", b'{"username": "x"}', b'{"username": 1, "password": 2}', b"[]"])
def test_malformed_login_is_a_clean_400(stack, body):
    response = httpx.post(f"{stack.url}/token", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_missing_token(stack):
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}"))


@pytest.mark.parametrize("header", ["Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz", "Bearer a.b.c", "bearer"])
def test_malformed_token(stack, header):
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers={"Authorization": header}))


def _claims(stack, name: str, role: str = "user", **over) -> dict:
    now = int(time.time())
    claims = {"sub": name, "uid": stack.users.get(name).id, "role": role, "iat": now, "exp": now + 600, "ver": 0}
    claims.update(over)
    return claims


def test_expired_token(stack):
    name, _ = stack.add_user()
    token = jwt.encode(
        _claims(stack, name, iat=int(time.time()) - 100, exp=int(time.time()) - 10), JWT_SECRET, algorithm="HS256"
    )
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)))


def test_wrongly_signed_token(stack):
    name, _ = stack.add_user()
    token = jwt.encode(_claims(stack, name), "another-secret-another-secret-1234", algorithm="HS256")
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)))


def test_alg_none_token(stack):
    name, _ = stack.add_user("admin")
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(stack, name, 'admin'))}."
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)))


def test_tampered_payload(stack):
    name, password = stack.add_user()
    header, _, signature = login(stack.url, name, password).split(".")
    forged = f"{header}.{_b64(_claims(stack, name, 'admin'))}.{signature}"
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(forged)))


@pytest.mark.parametrize("missing", ["sub", "uid", "role", "iat", "exp", "ver"])
def test_missing_claim(stack, missing):
    name, _ = stack.add_user()
    claims = _claims(stack, name)
    del claims[missing]
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)))


def test_hs256_key_confusion_with_another_algorithm(stack):
    name, _ = stack.add_user()
    token = jwt.encode(_claims(stack, name), JWT_SECRET, algorithm="HS512")
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)))


def test_removed_user_token_stops_working(stack):
    name, password = stack.add_user()
    token = login(stack.url, name, password)
    assert httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)).status_code != 401
    stack.users.remove(name)
    # The API reuses a user lookup for FT_USER_CACHE_TTL (2 s): refused within that bound.
    wait_until(
        lambda: httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)).status_code == 401,
        timeout=10,
        what="the removed user's token to be refused",
    )
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)))


def test_token_issued_after_a_reset_works_at_once(stack):
    """The user cache may be late to refuse an old token, never wrong to refuse a new one."""
    name, password = stack.add_user()
    old = login(stack.url, name, password)
    assert httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(old)).status_code == 404  # now cached
    stack.users.set(name, "a new password", "user")
    new = login(stack.url, name, "a new password")
    assert httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(new)).status_code == 404
    wait_until(
        lambda: httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(old)).status_code == 401,
        timeout=10,
        what="the token from before the reset to be refused",
    )


def test_password_reset_revokes_older_tokens(stack):
    name, _password = stack.add_user()
    token = jwt.encode(_claims(stack, name, iat=int(time.time()) - 30), JWT_SECRET, algorithm="HS256")
    stack.users.set(name, "a new password", "user")
    _assert_not_authenticated(httpx.get(f"{stack.url}{PROTECTED}", headers=bearer(token)))


def test_repeated_failures_for_one_user_are_throttled(stack):
    name, password = stack.add_user()
    statuses = [
        httpx.post(f"{stack.url}/token", json={"username": name, "password": "bad"}).status_code for _ in range(6)
    ]
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    blocked = httpx.post(f"{stack.url}/token", json={"username": name, "password": password})
    assert blocked.status_code == 429
    assert blocked.json()["code"] == "too_many_attempts"
    assert int(blocked.headers["retry-after"]) >= 1


def test_health_needs_no_auth(stack):
    response = httpx.get(f"{stack.url}/health")
    assert response.status_code == 200
    assert response.json()["redis"] == "ok"
    assert response.json()["workers"] >= 1


def test_docs_need_no_auth(stack):
    assert httpx.get(f"{stack.url}/docs").status_code == 200
    assert httpx.get(f"{stack.url}/openapi.json").status_code == 200


def test_repeated_failures_from_one_address_are_throttled(make_stack):
    stack = make_stack(FT_LOGIN_MAX_FAILURES_PER_ADDRESS="3")
    name, password = stack.add_user()
    statuses = [
        httpx.post(f"{stack.url}/token", json={"username": f"ghost-{i}", "password": "bad"}).status_code
        for i in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    # The address is blocked even for a user with no failures of its own.
    blocked = httpx.post(f"{stack.url}/token", json={"username": name, "password": password})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1


def test_admin_bootstrap_creates_keeps_and_resets(make_stack):
    from tests.support import start_api

    env = {"FT_ADMIN_USERNAME": "boss", "FT_ADMIN_PASSWORD": "first password"}
    stack = make_stack(**env)
    token = login(stack.url, "boss", "first password")
    assert jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["role"] == "admin"

    def restart(**changes: str) -> str:
        stack.api.stop()
        stack.api, stack.url = start_api(stack.data_dir, stack.redis_url, stack.log_dir, **{**env, **changes})
        return stack.url

    # Same credentials: the admin is left alone, its tokens keep working.
    url = restart()
    assert httpx.post(f"{url}/cleanup", params={"older_than": 10**6}, headers=bearer(token)).status_code == 200
    # New password: reset, and tokens issued before it stop working (even within the same second).
    url = restart(FT_ADMIN_PASSWORD="second password")
    _assert_not_authenticated(httpx.get(f"{url}{PROTECTED}", headers=bearer(token)))
    assert httpx.post(f"{url}/token", json={"username": "boss", "password": "first password"}).status_code == 401
    login(url, "boss", "second password")
