"""Operators' accounts and their sessions, in the hub's SQLite file beside the slots and the inventory.

Tables
------
``operator_schema``    the schema version of these tables (the hub's ``user_version`` stays the store's).
``operators``          name, argon2id hash of the password (argon2-cffi's defaults: a memory-hard KDF),
                       created, last login.
``operator_sessions``  SHA-256 of the session id (the id itself lives only in the operator's cookie),
                       name, CSRF token, created, last used; deleted at logout, on expiry
                       (:data:`SESSION_LIFETIME` after login) or when idle (:data:`IDLE_TIMEOUT`).

The agents' tokens (``slots``) and these never meet: a slot token opens no page, an operator's
session opens no agent's endpoint. Nothing here logs a password or a session id. Time is the
injected clock's (seconds since the epoch).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ksocket.hub.errors import HubError
from ksocket.hub.store import BUSY_TIMEOUT, Database, Schema, Store

SCHEMA_VERSION: Final = 1
SESSION_LIFETIME: Final = 12 * 3600.0
IDLE_TIMEOUT: Final = 30 * 60.0
TOUCH_EVERY: Final = 60.0
"""A session's last use is written at most this often (a page view is otherwise a read)."""
MAX_PASSWORD: Final = 1024
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS operator_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL,
    last_login REAL
);
CREATE TABLE IF NOT EXISTS operator_sessions (
    id_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES operators (name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS operator_sessions_by_name ON operator_sessions (name);
"""

TABLES: Final = Schema("operators", _SCHEMA, SCHEMA_VERSION, "operator_schema")


@dataclass(frozen=True)
class Operator:
    name: str
    created: float
    last_login: float | None


@dataclass(frozen=True)
class Session:
    """A logged-in operator: ``id`` goes in the cookie, ``csrf`` in every form of the session's pages."""

    id: str
    name: str
    csrf: str
    created: float
    last_used: float


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise HubError(f"invalid operator name {name!r}: use 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_password(password: str) -> str:
    if not password:
        raise HubError("the password is empty")
    if len(password) > MAX_PASSWORD:
        raise HubError(f"the password is longer than {MAX_PASSWORD} characters")
    return password


_HASHER: Final = PasswordHasher()


@functools.lru_cache(maxsize=4)
def _unknown_name_hash(hasher: PasswordHasher) -> str:
    """Verified against when a name is unknown, so that a wrong name costs as long as a wrong password; one
    argon2 hash per hasher and process, not one per connection (each costs ~100 ms and its memory)."""
    return hasher.hash(secrets.token_hex(16))


class Operators(Database):
    """One connection to the hub's database for operators and sessions; used from one thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.path = Path(path)
        self._now = clock
        self._hasher = hasher or _HASHER
        Store(self.path).close()  # the hub's file, created private
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self.create_tables(TABLES)
        except sqlite3.DatabaseError as exc:
            raise HubError(f"{self.path}: not a usable hub database: {exc}") from None

    # ------------------------------------------------------------------ accounts

    def add(self, name: str, password: str) -> None:
        password_hash = self._hasher.hash(check_password(password))
        with self._write() as db:
            if db.execute("SELECT 1 FROM operators WHERE name = ?", (check_name(name),)).fetchone():
                raise HubError(f"operator {name!r} already exists")
            db.execute(
                "INSERT INTO operators (name, password_hash, created) VALUES (?, ?, ?)",
                (name, password_hash, self._now()),
            )

    def remove(self, name: str) -> None:
        """Removes the account and its sessions (logged out at once)."""
        with self._write() as db:
            if db.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount == 0:
                raise HubError(f"no operator named {name!r}")
            db.execute("DELETE FROM operator_sessions WHERE name = ?", (name,))

    def accounts(self) -> list[Operator]:
        rows = self._db.execute("SELECT name, created, last_login FROM operators ORDER BY name")
        return [Operator(*row) for row in rows]

    def exists(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM operators WHERE name = ?", (name,)).fetchone() is not None

    def verify(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s; an unknown name takes as long as a wrong password."""
        row = self._db.execute("SELECT password_hash FROM operators WHERE name = ?", (name,)).fetchone()
        stored = _unknown_name_hash(self._hasher) if row is None else row[0]
        try:
            self._hasher.verify(stored, password[: MAX_PASSWORD + 1])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if row is None:
            return False
        if self._hasher.check_needs_rehash(row[0]):
            with self._write() as db:
                db.execute("UPDATE operators SET password_hash = ? WHERE name = ?", (self._hasher.hash(password), name))
        return True

    # ------------------------------------------------------------------ sessions

    def open_session(self, name: str) -> Session:
        now = self._now()
        session = Session(secrets.token_urlsafe(32), name, secrets.token_urlsafe(32), now, now)
        with self._write() as db:
            db.execute(
                "DELETE FROM operator_sessions WHERE created <= ? OR last_used <= ?",
                (now - SESSION_LIFETIME, now - IDLE_TIMEOUT),
            )
            db.execute(
                "INSERT INTO operator_sessions (id_hash, name, csrf, created, last_used) VALUES (?, ?, ?, ?, ?)",
                (_digest(session.id), name, session.csrf, now, now),
            )
            db.execute("UPDATE operators SET last_login = ? WHERE name = ?", (now, name))
        return session

    def session(self, session_id: str) -> Session | None:
        """The live session of this id, its last use noted; None (and it is deleted) once expired or idle."""
        row = self._db.execute(
            "SELECT name, csrf, created, last_used FROM operator_sessions WHERE id_hash = ?", (_digest(session_id),)
        ).fetchone()
        if row is None:
            return None
        name, csrf, created, last_used = row
        now = self._now()
        if now - created >= SESSION_LIFETIME or now - last_used >= IDLE_TIMEOUT:
            self.close_session(session_id)
            return None
        if now - last_used >= TOUCH_EVERY:
            with self._write() as db:
                db.execute("UPDATE operator_sessions SET last_used = ? WHERE id_hash = ?", (now, _digest(session_id)))
            last_used = now
        return Session(session_id, name, csrf, created, last_used)

    def close_session(self, session_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM operator_sessions WHERE id_hash = ?", (_digest(session_id),))
