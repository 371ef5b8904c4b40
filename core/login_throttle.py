"""Brute-force protection for POST /token, counted in Redis with the `limits` library.

Only failures are counted: per user name (FT_LOGIN_MAX_FAILURES) and per client address
(FT_LOGIN_MAX_FAILURES_PER_ADDRESS, higher: many users may share one NAT address), each in a
moving window of FT_LOGIN_WINDOW seconds.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from core.config import Settings
from core.errors import TooManyAttempts
from core.redis_clients import sync_pool


class LoginThrottle:
    def __init__(self, settings: Settings) -> None:
        self._limits = {
            "user": RateLimitItemPerSecond(settings.login_max_failures, settings.login_window),
            "addr": RateLimitItemPerSecond(settings.login_max_failures_per_address, settings.login_window),
        }
        # A bounded pool with the API's timeouts: a Redis that is down fails the login fast (503).
        storage = RedisStorage(settings.redis_url, connection_pool=sync_pool(settings), key_prefix="ft:login",
                               wrap_exceptions=True)
        self._limiter = MovingWindowRateLimiter(storage)

    def _keys(self, username: str, address: str):
        return [(self._limits["user"], "user", username), (self._limits["addr"], "addr", address)]

    def check(self, username: str, address: str) -> None:
        """Refuse before any password work when either key is over its limit."""
        for limit, *key in self._keys(username, address):
            if not self._limiter.test(limit, *key):
                reset_at = self._limiter.get_window_stats(limit, *key).reset_time
                retry_after = max(1, math.ceil(reset_at - time.time()))
                raise TooManyAttempts(
                    "too many failed logins; try again later", retry_after=retry_after
                )

    def record_failure(self, username: str, address: str) -> None:
        for limit, *key in self._keys(username, address):
            self._limiter.hit(limit, *key)

    def reset_user(self, username: str) -> None:
        """A successful login clears the user's count (not the address's)."""
        self._limiter.clear(self._limits["user"], "user", username)
