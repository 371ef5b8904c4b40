"""Durable user accounts: a small SQLite file under FT_DATA_DIR (survives any Redis loss).

Passwords are stored only as Argon2 hashes. Every user has a stable `id`, never reused: a user
removed and added again under the same name is a new identity with none of the old one's files
or tokens. Every token carries the user's id and `token_version`; resetting the password bumps
the version, which invalidates every token issued before, even in the same second (a token's
`iat` has whole seconds only). Removing the user invalidates them too.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pwdlib import PasswordHash

from core.single_flight import SingleFlight
from core.threads import run_blocking

ROLES = ("admin", "user")
_hasher = PasswordHash.recommended()
# Verified against when the user is unknown, so both failures cost the same time.
_DUMMY_HASH = _hasher.hash("not a real password; equalises timing")

_COLUMNS = "name, id, role, created_at, token_version"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    id TEXT,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    created_at REAL NOT NULL,
    token_version INTEGER NOT NULL DEFAULT 0
)
"""


def new_user_id() -> str:
    """128 random bits: never handed out twice, so never shared by two users of one name."""
    return "u_" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    id: str
    role: str
    created_at: float
    token_version: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner_id(self) -> str:
        """What uploads record as their owner. Compare ownership only through this."""
        return self.id


class UserStore:
    """One connection per thread; SQLite's own locking serialises writers across processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._connect()
        db.execute("PRAGMA journal_mode=WAL")
        self._migrate(db)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Give every user a stable id; idempotent, and safe with several processes starting.

        Users created before ids existed keep their NAME as their id: what they uploaded was
        recorded under that name, so it stays theirs. Every user created afterwards gets a
        random `u_...` id, so a new user of a removed user's name never matches those files.
        """
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
            if "id" not in columns:
                db.execute("ALTER TABLE users ADD COLUMN id TEXT")
            db.execute("UPDATE users SET id = name WHERE id IS NULL")
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS users_id ON users (id)")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def get(self, name: str) -> User | None:
        row = self._connect().execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone()
        return User(*row) if row else None

    def get_by_id(self, user_id: str) -> User | None:
        row = self._connect().execute(f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
        return User(*row) if row else None

    def list(self) -> list[User]:
        rows = self._connect().execute(f"SELECT {_COLUMNS} FROM users ORDER BY name").fetchall()
        return [User(*row) for row in rows]

    def set(self, name: str, password: str, role: str = "user") -> User:
        """Create the user, or reset its password and role (same id). Old tokens stop working."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if not name or len(name) > 128 or not name.isprintable() or ":" in name:
            raise ValueError("user name must be 1-128 printable characters without ':'")
        if not password:
            raise ValueError("password must not be empty")
        self._connect().execute(
            "INSERT INTO users (name, id, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET password_hash = excluded.password_hash,"
            " role = excluded.role, token_version = token_version + 1",
            (name, new_user_id(), _hasher.hash(password), role, time.time()),
        )
        user = self.get(name)
        assert user is not None
        return user

    def remove(self, name: str) -> User | None:
        """Delete the user; returns who was removed (its id still owns its files), or None."""
        row = self._connect().execute(f"DELETE FROM users WHERE name = ? RETURNING {_COLUMNS}", (name,)).fetchone()
        return User(*row) if row else None

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password is right; None otherwise, in about the same time."""
        row = self._connect().execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            _hasher.verify(password, _DUMMY_HASH)
            return None
        if not _hasher.verify(password, row[0]):
            return None
        return self.get(name)


class RecentUsers:
    """The user behind each request's token, without SQLite on the event loop.

    A user read from the store is reused for `ttl` seconds: a removed user's or an old
    password's token keeps working at most that long. A token that does not match what is
    remembered (say, issued after a password reset) is checked against the store again, so
    the cache can only be late to refuse, never wrong to refuse."""

    MAX_ENTRIES = 10_000

    def __init__(self, store: UserStore, ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        self._entries: dict[str, tuple[float, User]] = {}
        self._lookups: SingleFlight[tuple[float, User | None]] = SingleFlight()

    def remember(self, user: User) -> None:
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[user.name] = (time.monotonic() + self._ttl, user)

    async def matching(self, name: str, user_id: str, token_version: int) -> User | None:
        """The user `name` if it still has this id and token version; else None."""

        def matches(user: User | None) -> bool:
            return user is not None and user.id == user_id and user.token_version == token_version

        asked = time.monotonic()
        expires, user = self._entries.get(name, (0.0, None))
        if expires > asked and matches(user):
            return user
        started, user = await self._lookup(name)
        if not matches(user) and started < asked:  # read before this token may have been issued
            started, user = await self._lookup(name)
        return user if matches(user) else None

    async def _lookup(self, name: str) -> tuple[float, User | None]:
        """The store's answer for `name` and when it was asked. Callers that miss together share
        one read: when an entry expires under a thousand devices, each request would otherwise
        queue its own thread hop (2,578 reads in one 13 s run, waiting p50 0.6 s)."""
        return await self._lookups.run(name, partial(self._read, name))

    async def _read(self, name: str) -> tuple[float, User | None]:
        started = time.monotonic()
        user = await run_blocking(self._store.get, name)
        if user is None:
            self._entries.pop(name, None)
        else:
            self.remember(user)
        return started, user
