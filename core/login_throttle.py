"""Brute-force protection for POST /token.

Every attempt is counted in Redis BEFORE its password is hashed: one Lua script checks both
limits and reserves the attempt atomically, so parallel attempts cannot pass a limit. A right
password gives its reservation back. The limits are per (user name, client address) and per
client address, each in a sliding window of FT_LOGIN_WINDOW seconds; never per user alone, so
a flood from one address cannot lock the user out from the others. IPv6 clients count per /64
(one host usually holds a whole /64).

Password checks (Argon2: 64 MiB and tens of milliseconds of CPU each) run in a thread, at most
FT_LOGIN_HASH_CONCURRENCY at a time per API process, so a flood can neither grow the memory nor
starve the event loop. A login that finds no free slot within FT_LOGIN_HASH_WAIT seconds gets
429 as well, and its attempt is not counted.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable, Iterable
from ipaddress import ip_address, ip_network

import anyio
from redis.asyncio import Redis

from core.config import Settings
from core.errors import InvalidCredentials, TooManyAttempts
from core.users import User

_PREFIX = "ft:login"

# KEYS: one sorted set of attempt times (ms) per limit. ARGV: now_ms, window_ms, member, limits...
# Returns 0 when the attempt is reserved in every set, else the ms until one frees up.
_RESERVE = """
local now, window, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 + i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local excess = redis.call('ZCARD', key) - limit
  if excess >= 0 then
    local freeing = redis.call('ZRANGE', key, excess, excess, 'WITHSCORES')
    wait = math.max(wait, tonumber(freeing[2]) + window - now)
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
end
return 0
"""


def client_key(address: str) -> str:
    """The client as the limits see it: an IPv4 address, an IPv6 /64, or the raw string."""
    try:
        parsed = ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


class LoginThrottle:
    """The limits (keys `ft:login:*`, kept by this module alone) and the hashing slots of one API process."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._window_ms = settings.login_window * 1000
        self._pair_limit = settings.login_max_failures
        self._address_limit = settings.login_max_failures_per_address
        self._slots = anyio.Semaphore(settings.login_hash_concurrency)
        self._slot_wait = settings.login_hash_wait

    def _keys(self, username: str, address: str) -> tuple[str, str]:
        client = client_key(address)
        pair = hashlib.sha256(f"{username}\0{client}".encode()).hexdigest()[:32]
        return f"{_PREFIX}:pair:{pair}", f"{_PREFIX}:addr:{client}"

    async def login(self, username: str, password: str, address: str, check: Callable[[str, str], User | None]) -> User:
        """The user when `check(username, password)` accepts; else InvalidCredentials, or
        TooManyAttempts when a limit is reached or no hashing slot frees up in time."""
        keys = self._keys(username, address)
        member = secrets.token_hex(8)
        wait_ms = await self._reserve(
            keys=list(keys),
            args=[int(time.time() * 1000), self._window_ms, member, self._pair_limit, self._address_limit],
        )
        if wait_ms:
            raise TooManyAttempts(
                "too many failed logins; try again later", retry_after=max(1, math.ceil(int(wait_ms) / 1000))
            )
        try:
            user = await self._check_in_slot(check, username, password)
        except Exception:  # not checked (no slot, or the user store failed): not counted
            await self._give_back(keys, member)
            raise
        if user is None:
            raise InvalidCredentials("wrong user name or password")
        pair_key, address_key = keys
        await self._redis.delete(pair_key)  # this user's failures from this address are forgiven
        await self._give_back([address_key], member)
        return user

    async def _check_in_slot(
        self, check: Callable[[str, str], User | None], username: str, password: str
    ) -> User | None:
        try:
            with anyio.fail_after(self._slot_wait):
                await self._slots.acquire()
        except TimeoutError:
            raise TooManyAttempts("the server is busy checking passwords; try again shortly", retry_after=1) from None
        try:
            return await anyio.to_thread.run_sync(check, username, password)
        finally:
            self._slots.release()

    async def _give_back(self, keys: Iterable[str], member: str) -> None:
        for key in keys:
            await self._redis.zrem(key, member)
