"""core/users.py on a real SQLite file: stable ids, the migration of the old schema, the user
cache; and the pure address rules of the login limits (api/deps.py, core/login_throttle.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
from pwdlib import PasswordHash

from api.deps import client_address
from core.config import Settings, parse_networks
from core.login_throttle import client_key
from core.tokens import decode_token, issue_token
from core.users import RecentUsers, UserStore

SECRET = "unit-test-secret-0123456789abcdef0123"

OLD_SCHEMA = """
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    created_at REAL NOT NULL,
    token_version INTEGER NOT NULL DEFAULT 0
)
"""


def _old_database(path, *names: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        for name in names:
            db.execute(
                "INSERT INTO users VALUES (?, ?, 'user', ?, 3)",
                (name, PasswordHash.recommended().hash("pw"), time.time()),
            )


def test_new_users_get_random_ids_that_a_new_user_of_the_same_name_does_not_inherit(tmp_path):
    store = UserStore(tmp_path / "users.sqlite3")
    first = store.set("erin", "pw")
    assert first.id.startswith("u_") and len(first.id) == 34 and first.owner_id == first.id
    assert store.set("erin", "pw2").id == first.id  # a password reset keeps the identity
    assert store.remove("erin").id == first.id
    again = store.set("erin", "pw")
    assert again.id != first.id and again.token_version == 0
    assert store.get_by_id(first.id) is None and store.get_by_id(again.id) == again


def test_migration_keeps_old_users_and_their_files_by_name(tmp_path):
    path = tmp_path / "users.sqlite3"
    _old_database(path, "alice", "bob")
    store = UserStore(path)
    alice = store.authenticate("alice", "pw")
    # Created before ids: the name is the id, so uploads recorded under "alice" stay hers.
    assert alice is not None and alice.id == alice.owner_id == "alice" and alice.token_version == 3
    assert UserStore(path).get("bob").id == "bob"  # opening again changes nothing
    store.remove("alice")
    assert store.set("alice", "pw").id.startswith("u_")  # a later alice is someone else
    with pytest.raises(sqlite3.IntegrityError):  # ids are unique
        store._connect().execute("UPDATE users SET id = 'bob' WHERE name = 'alice'")


def test_token_carries_the_stable_id(tmp_path):
    user = UserStore(tmp_path / "users.sqlite3").set("carol", "pw")
    claims = decode_token(issue_token(user, SECRET, 60), SECRET)
    assert (claims.sub, claims.uid, claims.ver) == ("carol", user.id, 0)


def test_recent_users_refuse_late_but_never_wrongly(tmp_path):
    store = UserStore(tmp_path / "users.sqlite3")
    recent = RecentUsers(store, ttl=0.5)
    user = store.set("dave", "pw")

    async def scenario():
        assert await recent.matching("dave", user.id, 0) == user
        store.remove("dave")
        assert await recent.matching("dave", user.id, 0) == user  # remembered: late to refuse
        await asyncio.sleep(0.6)
        assert await recent.matching("dave", user.id, 0) is None
        newer = store.set("dave", "pw")
        assert await recent.matching("dave", user.id, 0) is None  # same version, other id
        store.set("dave", "pw2")
        assert (await recent.matching("dave", newer.id, 1)).token_version == 1  # new token at once

    asyncio.run(scenario())


class GatedStore(UserStore):
    """A store whose reads from other threads (the cache's) are counted, and held after reading
    until `release` is set."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.reads = 0
        self.read = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def get(self, name: str):
        user = super().get(name)
        if threading.current_thread() is threading.main_thread():
            return user  # the store's own read, in set()
        self.reads += 1
        self.read.set()
        assert self.release.wait(timeout=20)
        return user


def test_recent_users_that_miss_together_share_one_read(tmp_path):
    store = GatedStore(tmp_path / "users.sqlite3")
    recent = RecentUsers(store, ttl=60)
    user = store.set("erin", "pw")
    store.release.clear()

    async def scenario():
        callers = [asyncio.create_task(recent.matching("erin", user.id, 0)) for _ in range(200)]
        await asyncio.sleep(0)  # every caller has missed the cache and asked
        store.release.set()
        return await asyncio.gather(*callers)

    assert asyncio.run(scenario()) == [user] * 200
    assert store.reads == 1


def test_a_token_newer_than_the_shared_read_is_read_again(tmp_path):
    """A caller that joins a read begun before its token's password change must not be refused
    on that read's answer: it reads once more."""
    store = GatedStore(tmp_path / "users.sqlite3")
    recent = RecentUsers(store, ttl=60)
    user = store.set("frank", "pw")
    store.release.clear()

    async def scenario():
        first = asyncio.create_task(recent.matching("frank", user.id, 0))
        # Until its read has the old version (and is held there).
        assert await asyncio.get_running_loop().run_in_executor(None, store.read.wait, 20)
        changed = store.set("frank", "pw2")  # a token of version 1 is issued now
        second = asyncio.create_task(recent.matching("frank", changed.id, 1))
        await asyncio.sleep(0)  # it joins the read under way
        store.release.set()
        return await first, await second

    old, new = asyncio.run(scenario())
    assert old.token_version == 0
    assert new is not None and new.token_version == 1
    assert store.reads == 2


PROXIES = parse_networks("10.0.0.0/8, 192.0.2.1")


@pytest.mark.parametrize(
    "peer,forwarded,expected",
    [
        ("198.51.100.1", ["203.0.113.9"], "198.51.100.1"),  # not a proxy: header ignored
        ("192.0.2.1", ["203.0.113.9"], "203.0.113.9"),
        ("192.0.2.1", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),  # client-written left part ignored
        ("192.0.2.1", ["203.0.113.9, 10.1.2.3"], "203.0.113.9"),  # through two trusted proxies
        ("192.0.2.1", ["203.0.113.9", "10.1.2.3"], "203.0.113.9"),  # several header lines
        ("192.0.2.1", ["10.0.0.5, 10.1.2.3"], "10.0.0.5"),  # all trusted: the left-most
        ("192.0.2.1", [], "192.0.2.1"),
        ("192.0.2.1", ["garbage"], "garbage"),
    ],
)
def test_client_address(peer, forwarded, expected):
    assert client_address(peer, forwarded, PROXIES) == expected


def test_no_trusted_proxies_by_default():
    assert Settings().trusted_proxy_networks == ()
    assert client_address("127.0.0.1", ["203.0.113.9"], ()) == "127.0.0.1"
    with pytest.raises(ValueError):
        Settings(trusted_proxies="10.0.0.0/8, not-an-address")


def test_client_key_groups_ipv6_by_64():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:198.51.100.1") == client_key("198.51.100.1") == "198.51.100.1"
