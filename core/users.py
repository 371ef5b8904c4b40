"""Durable user accounts: a small SQLite file under FT_DATA_DIR (survives any Redis loss).

Passwords are stored only as Argon2 hashes. Every token carries the user's `token_version`;
resetting the password bumps it, which invalidates every token issued before, even in the same
second (a token's `iat` has whole seconds only). Removing the user invalidates them too.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pwdlib import PasswordHash

ROLES = ("admin", "user")
_hasher = PasswordHash.recommended()
# Verified against when the user is unknown, so both failures cost the same time.
_DUMMY_HASH = _hasher.hash("not a real password; equalises timing")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    created_at REAL NOT NULL,
    token_version INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    created_at: float
    token_version: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner_id(self) -> str:
        """What uploads record as their owner. Compare ownership only through this."""
        return self.name


class UserStore:
    """One connection per thread; SQLite's own locking serialises writers across processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def get(self, name: str) -> User | None:
        row = self._connect().execute(
            "SELECT name, role, created_at, token_version FROM users WHERE name = ?", (name,)
        ).fetchone()
        return User(*row) if row else None

    def list(self) -> list[User]:
        rows = self._connect().execute(
            "SELECT name, role, created_at, token_version FROM users ORDER BY name"
        ).fetchall()
        return [User(*row) for row in rows]

    def set(self, name: str, password: str, role: str = "user") -> User:
        """Create the user, or reset its password and role. Old tokens stop working."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if not name or len(name) > 128 or not name.isprintable() or ":" in name:
            raise ValueError("user name must be 1-128 printable characters without ':'")
        if not password:
            raise ValueError("password must not be empty")
        now = time.time()
        self._connect().execute(
            "INSERT INTO users (name, password_hash, role, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET password_hash = excluded.password_hash,"
            " role = excluded.role, token_version = token_version + 1",
            (name, _hasher.hash(password), role, now),
        )
        user = self.get(name)
        assert user is not None
        return user

    def remove(self, name: str) -> bool:
        cursor = self._connect().execute("DELETE FROM users WHERE name = ?", (name,))
        return cursor.rowcount > 0

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password is right; None otherwise, in about the same time."""
        row = self._connect().execute(
            "SELECT password_hash FROM users WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            _hasher.verify(password, _DUMMY_HASH)
            return None
        if not _hasher.verify(password, row[0]):
            return None
        return self.get(name)
