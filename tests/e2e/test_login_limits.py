"""CONTRACT 3 (v2) login limits over real HTTP: counted before hashing, per (user, address) and
per address, X-Forwarded-For believed only from FT_TRUSTED_PROXIES, hashing bounded.

A second client address without any proxy: Linux answers on all of 127.0.0.0/8, so a client
bound to 127.0.0.2 really is another address to the API.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import login

OTHER_ADDRESS = "127.0.0.2"
MiB = 1024 * 1024


def _client(local_address: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(timeout=60, transport=httpx.HTTPTransport(local_address=local_address))


def _login(client: httpx.Client, url: str, name: str, password: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = client.post(f"{url}/token", json={"username": name, "password": password}, headers=headers)
    if response.status_code == 429:
        assert response.json()["code"] == "too_many_attempts"
        assert int(response.headers["retry-after"]) >= 1
    return response.status_code


def _parallel_logins(url: str, names: list[str], password: str) -> Counter:
    def one(name: str) -> int:
        with httpx.Client(timeout=120) as client:
            return _login(client, url, name, password)

    with ThreadPoolExecutor(len(names)) as pool:
        return Counter(pool.map(one, names))


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_parallel_wrong_passwords_cannot_pass_the_limit(stack):
    """50 at once for one user from one address: at most 5 are checked (401), the rest 429."""
    name, password = stack.add_user()
    answers = _parallel_logins(stack.url, [name] * 50, "wrong")
    assert set(answers) <= {401, 429}, answers
    assert 1 <= answers[401] <= 5, answers
    with _client() as client:
        statuses = [_login(client, stack.url, name, "wrong") for _ in range(6 - answers[401])]
        assert statuses[-1] == 429 and statuses.count(401) + answers[401] <= 5
        assert _login(client, stack.url, name, password) == 429


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_login_flood_keeps_api_memory_bounded(stack):
    """Argon2 takes 64 MiB per check: 100 concurrent logins must not mean 100 checks at once."""
    Path(f"/proc/{stack.api.pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
    answers = _parallel_logins(stack.url, [f"ghost-{i}" for i in range(100)], "wrong")
    assert set(answers) <= {401, 429}, answers
    peak = _peak_rss_mib(stack.api.pid)
    # Unbounded this was 2.3 GiB; bounded (2 checks at once) it stays near 77 + 2 x 64 MiB.
    assert peak < 600, f"API peak RSS {peak:.0f} MiB during a login flood"


def test_user_locked_from_one_address_still_logs_in_from_another(stack):
    name, password = stack.add_user()
    with _client() as here, _client(OTHER_ADDRESS) as there:
        assert [_login(here, stack.url, name, "wrong") for _ in range(6)] == [401] * 5 + [429]
        assert _login(here, stack.url, name, password) == 429
        assert _login(there, stack.url, name, password) == 200
        # ...and that success does not forgive the other address's failures.
        assert _login(here, stack.url, name, password) == 429


def test_right_password_clears_the_users_failures_from_that_address(stack):
    name, password = stack.add_user()
    with _client() as client:
        assert [_login(client, stack.url, name, "wrong") for _ in range(4)] == [401] * 4
        assert _login(client, stack.url, name, password) == 200
        assert [_login(client, stack.url, name, "wrong") for _ in range(5)] == [401] * 5


def test_address_limit_spans_users_and_spares_other_addresses(make_stack):
    stack = make_stack(FT_LOGIN_MAX_FAILURES_PER_ADDRESS="3")
    name, password = stack.add_user()
    with _client() as here, _client(OTHER_ADDRESS) as there:
        assert [_login(here, stack.url, f"ghost-{i}", "bad") for i in range(4)] == [401, 401, 401, 429]
        assert _login(here, stack.url, name, password) == 429
        assert _login(there, stack.url, name, password) == 200


def test_forwarded_for_is_ignored_without_trusted_proxies(stack):
    """Every attempt names another X-Forwarded-For: still one address (uvicorn must not believe it either)."""
    name, _ = stack.add_user()
    with _client() as client:
        statuses = [_login(client, stack.url, name, "wrong", forwarded_for=f"203.0.113.{i}") for i in range(6)]
    assert statuses == [401] * 5 + [429]


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(make_stack):
    stack = make_stack(FT_TRUSTED_PROXIES="127.0.0.1/32, ::1", FT_LOGIN_MAX_FAILURES="2")
    name, password = stack.add_user()
    with _client() as proxy, _client(OTHER_ADDRESS) as stranger:
        # Through the trusted proxy: the client is the address the proxy appended last.
        assert [_login(proxy, stack.url, name, "wrong", "198.51.100.7") for _ in range(3)] == [401, 401, 429]
        assert _login(proxy, stack.url, name, password, "198.51.100.8") == 200
        # A client cannot escape by writing its own entries to the left of the proxy's.
        assert _login(proxy, stack.url, name, password, "198.51.100.8, 198.51.100.7") == 429
        # From an untrusted address the header means nothing: counted per 127.0.0.2.
        statuses = [_login(stranger, stack.url, name, "wrong", f"198.51.100.{20 + i}") for i in range(3)]
        assert statuses == [401, 401, 429]
        assert _login(proxy, stack.url, name, password, "198.51.100.9") == 200
        login(stack.url, name, password)  # no header from the proxy itself: its own address
