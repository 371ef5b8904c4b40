"""HTTP under the client: one retry policy, bearer tokens, one connection pool per thread.

Every request of the client goes through `Transport`: `request()` for the small ones (retried
whole), `send()` for one attempt of a chunk or a download whose caller decides what a failure
means (with the same `RetryPolicy`).
"""

from __future__ import annotations

import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from client.errors import ApiError, AuthError, UnavailableError
from client.tokens import TokenCache, renew_at
from client.units import parse_retry_after, retry_delay

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


class RetryPolicy:
    """When to try again and how long to wait first: as long as the server's Retry-After asks
    (at most `max_retry_after`, with jitter), else exponential backoff with jitter. After
    `retries` failed attempts in a row the caller gives up."""

    def __init__(
        self,
        retries: int = 10,
        base: float = 0.25,
        cap: float = 15.0,
        max_retry_after: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.retries = retries
        self.base = base
        self.cap = cap
        self.max_retry_after = max_retry_after
        self.rng = rng or random.Random()

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        return retry_delay(attempt, retry_after, self.base, self.cap, self.max_retry_after, self.rng)

    def wait(self, attempt: int, retry_after: float | None = None) -> None:
        """Sleep before retry number `attempt` (0-based)."""
        time.sleep(self.delay(attempt, retry_after))

    @staticmethod
    def retryable(response: httpx.Response, rate_limited: bool = True) -> bool:
        """5xx the server may recover from, and 429 (`rate_limited`: not for logins, where 429
        is the verdict on failed passwords)."""
        return response.status_code in RETRYABLE_STATUS or (rate_limited and response.status_code == 429)


def api_error(response: httpx.Response) -> ApiError:
    """The contract's `{"code", "detail", ...}` error body, or whatever the answer says."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    code = str(body.get("code") or "")
    if not code:
        code = {
            401: "not_authenticated",
            403: "forbidden",
            404: "not_found",
            429: "too_many_attempts",
            507: "insufficient_storage",
            503: "unavailable",
        }.get(response.status_code, "")
    detail = str(body.get("detail") or "") or (response.text[:200] if not body else "")
    return ApiError(response.status_code, code, detail, body, parse_retry_after(response.headers.get("retry-after")))


def error_token(response: httpx.Response) -> str:
    """The bearer token a request was sent with."""
    return response.request.headers.get("authorization", "").removeprefix("Bearer ")


class Transport:
    """Requests to one server as one user. Thread-safe; one HTTP connection pool per thread."""

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        tokens: TokenCache,
        policy: RetryPolicy,
        timeout: float = 60.0,
        password_prompt: Callable[[], str] | None = None,
    ) -> None:
        self.url = url
        self.username = username
        self.tokens = tokens
        self.policy = policy
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._password = password
        self._password_prompt = password_prompt
        self._token: tuple[str, float] | None = None
        self._auth_lock = threading.Lock()
        self._local = threading.local()
        self._pools: list[httpx.Client] = []
        self._pools_lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None

    # --- connections ---------------------------------------------------------------
    def close(self) -> None:
        with self._pools_lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.close()

    def http(self) -> httpx.Client:
        """This thread's connection pool."""
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = httpx.Client(timeout=self.timeout, headers={"User-Agent": "ft-client/1"}, verify=self.tls())
            self._local.pool = pool
            with self._pools_lock:
                self._pools.append(pool)
        return pool

    def tls(self) -> ssl.SSLContext | bool:
        """One TLS context for all pools: loading the CA certificates takes ~0.2 s each time,
        which every parallel sender paid before its first byte. Plain HTTP needs none."""
        if not self.url.startswith("https:"):
            return False  # no TLS on this URL (redirects are not followed), so nothing to verify
        with self._pools_lock:
            if self._tls_context is None:
                self._tls_context = ssl.create_default_context()
            return self._tls_context

    def unreachable(self, exc: Exception) -> UnavailableError:
        return UnavailableError(
            f"cannot reach {self.url} after {self.policy.retries} retries: {exc.__class__.__name__}: {exc}"
        )

    # --- auth ----------------------------------------------------------------------
    def _password_now(self) -> str:
        if self._password is None and self._password_prompt is not None:
            self._password = self._password_prompt()
        if not self._password:
            raise AuthError(f"no password for user {self.username!r}: set FT_PASSWORD (or run `login` on a terminal)")
        return self._password

    def login(self) -> str:
        """Get a fresh token from `POST /token` and cache it (0600)."""
        if not self.username:
            raise AuthError("no user name: set FT_USERNAME or pass --user")
        response = self.request(
            "POST", "/token", auth=False, json={"username": self.username, "password": self._password_now()}
        )
        if response.status_code != 200:
            error = api_error(response)
            if error.code == "invalid_credentials":
                error.message = f"invalid credentials for user {self.username!r} at {self.url}"
                error.args = (error.message,)
            raise error
        body = response.json()
        token, expires_in = body["access_token"], float(body.get("expires_in", 3600))
        self.tokens.put(self.url, self.username, token, expires_in)
        self._token = (token, renew_at(time.time() + expires_in, expires_in))
        return token

    def bearer(self) -> str:
        """The token to send: the one in memory, else the cached one, else a fresh login. Each is
        used until shortly before it expires."""
        with self._auth_lock:
            if self._token is not None and time.time() < self._token[1]:
                return self._token[0]
            if not self.username:
                raise AuthError("no user name: set FT_USERNAME or pass --user")
            cached = self.tokens.entry(self.url, self.username)
            if cached is not None:
                self._token = cached
                return cached[0]
            return self.login()

    def refresh(self, stale: str) -> None:
        """The server refused `stale` (401): drop it and log in again, once for all threads."""
        with self._auth_lock:
            if self._token is not None and self._token[0] != stale:
                return  # another thread already renewed it
            self._token = None
            if self.username:
                self.tokens.forget(self.url, self.username)
            self.login()

    # --- requests ------------------------------------------------------------------
    def send(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One attempt with the bearer token; transport errors are the caller's to handle.
        With `stream`, the answer's body is not read yet (close the response)."""
        request_headers = {**(headers or {}), "Authorization": f"Bearer {self.bearer()}"}
        request = self.http().build_request(method, f"{self.url}{path}", headers=request_headers, **kwargs)
        return self.http().send(request, stream=stream)

    def request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> httpx.Response:
        """A request retried on connection errors, timeouts, 5xx and 429 (as the policy says),
        logging in again once on a 401. Returns the final answer, whatever its status."""
        attempt, refreshed = 0, False
        while True:
            try:
                response = (
                    self.send(method, path, **kwargs)
                    if auth
                    else self.http().request(method, f"{self.url}{path}", **kwargs)
                )
            except httpx.TransportError as exc:
                if attempt >= self.policy.retries:
                    raise self.unreachable(exc) from None
                self.policy.wait(attempt)
                attempt += 1
                continue
            if auth and response.status_code == 401 and not refreshed:
                refreshed = True
                self.refresh(error_token(response))
                continue
            if self.policy.retryable(response, rate_limited=auth) and attempt < self.policy.retries:
                self.policy.wait(attempt, parse_retry_after(response.headers.get("retry-after")))
                attempt += 1
                continue
            return response
