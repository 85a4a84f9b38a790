"""The hub's memory: one SQLite file shared by the server and the ``ksocket hub`` commands.

Tables
------
``slots``       name, SHA-256 of the token, created, revoked (a time, or NULL), and the bytes of
                results stored for it (what ``add_result``'s quota weighs).
``agents``      per slot, the agent last seen on it: agent id, version, name, session id,
                state (connected / disconnected), last heartbeat, connected since.
``operations``  id (unique), slot, name, params (JSON), created, state, refusal reason and
                message, progress, cancel requested / cancel sent.
``results``     (slot, agent id, seq) unique, operation id, ok, data or error (JSON), received.
``records``     (slot, agent id, seq) unique, operation id, kind, document (JSON), received: what an
                operation reported before its result (protocol version 2), stored as it arrives; a
                record's update (the same ``key``) is stored beside it and read in its place.

Agents write only what answers operations issued to their slot: a result, ``accepted``,
``refused`` or ``progress`` for an operation that is not the slot's, or was never sent, raises
``UnknownOperation``. An operation keeps its first result; a slot's results weigh at most its
quota, and a result that would pass it is stored as a failure with code ``storage-full``.

An operation moves ``pending`` (queued, not yet sent) → ``sent`` → ``accepted``, and from any
of these three to ``done`` (a result arrived; ``cancelled`` when its error code is
``cancelled``) or ``refused``; a pending operation cancelled before it was sent becomes
``cancelled`` at once. Pending, sent and accepted operations have no result yet: the hub
sends them again, same id, whenever their slot's agent connects. ``issue_operation`` stores an
operation already sent (for the hub to send at once to the slot's connected agent), unless the
slot has pending operations, which go first.

A ``Store`` may be given an ``on_result`` hook: called with the store, the slot and the operation's id
after each new result is committed, on the store's own connection and thread (the hub's database thread
imports a discovery's result into the inventory so).

Concurrency: the server and short-lived commands (``hub run``, ``hub token add``) open the
same file; WAL mode lets readers run beside the writer, every write is one short
``BEGIN IMMEDIATE`` transaction, and a busy timeout absorbs the rest. A ``Store`` is used
from one thread. Times are seconds since the epoch (``time.time()``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

from ksocket import paths
from ksocket.hub import tokens
from ksocket.hub.errors import HubError, UnknownOperation, UnknownSlot
from ksocket.protocol import ErrorCode, ErrorInfo, JSONObject, Operation, Record, Result

PENDING: Final = "pending"
SENT: Final = "sent"
ACCEPTED: Final = "accepted"
REFUSED: Final = "refused"
DONE: Final = "done"
CANCELLED: Final = "cancelled"
UNRESOLVED: Final = (PENDING, SENT, ACCEPTED)
"""The states of an operation that has no result yet (and is not refused)."""

CONNECTED: Final = "connected"
DISCONNECTED: Final = "disconnected"

SCHEMA_VERSION: Final = 2
STORAGE_FULL: Final = ErrorCode.STORAGE_FULL
"""The error code of a result stored in place of one that would pass its slot's quota."""
BUSY_TIMEOUT: Final = 10.0
_INT64_MAX: Final = 2**63 - 1
MAX_SEQ: Final = _INT64_MAX
"""The largest seq the hub can store."""
_SLOT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS slots (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL,
    result_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS agents (
    slot TEXT PRIMARY KEY REFERENCES slots (name),
    agent TEXT NOT NULL,
    version TEXT NOT NULL,
    name TEXT NOT NULL,
    session TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('connected', 'disconnected')),
    last_heartbeat REAL,
    connected_since REAL
);
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    slot TEXT NOT NULL REFERENCES slots (name),
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('pending', 'sent', 'accepted', 'refused', 'done', 'cancelled')),
    reason TEXT,
    message TEXT,
    done INTEGER,
    total INTEGER,
    cancel_requested REAL,
    cancel_sent REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_by_state ON operations (state, slot);
CREATE TABLE IF NOT EXISTS results (
    slot TEXT NOT NULL,
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    operation_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    data TEXT,
    error TEXT,
    received REAL NOT NULL,
    PRIMARY KEY (slot, agent, seq)
);
CREATE INDEX IF NOT EXISTS results_by_operation ON results (operation_id);
CREATE TABLE IF NOT EXISTS records (
    slot TEXT NOT NULL,
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    operation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    document TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (slot, agent, seq)
);
CREATE INDEX IF NOT EXISTS records_by_operation ON records (operation_id, seq);
"""


def default_path() -> Path:
    """``$KSOCKET_HOME/var/lib/ksocket/hub.db``."""
    return paths.state_dir() / "hub.db"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Slot:
    name: str
    created: float
    revoked: float | None


@dataclass(frozen=True)
class AgentRecord:
    """The agent last seen on a slot."""

    slot: str
    agent: str
    version: str
    name: str
    session: str
    state: str
    last_heartbeat: float | None
    connected_since: float | None


@dataclass(frozen=True)
class OperationRecord:
    id: str
    slot: str
    name: str
    params: JSONObject
    created: float
    state: str
    reason: str | None
    """Why it was refused (``quota``, ``unknown-operation``, ``invalid-params``)."""
    message: str | None
    done: int | None
    total: int | None
    cancel_requested: float | None
    cancel_sent: float | None
    updated: float

    def to_message(self) -> Operation:
        return Operation(id=self.id, name=self.name, params=self.params)


@dataclass(frozen=True)
class ResultRecord:
    slot: str
    agent: str
    seq: int
    operation_id: str
    ok: bool
    data: JSONObject | None
    error: ErrorInfo | None
    received: float

    def to_message(self) -> Result:
        return Result(id=self.operation_id, seq=self.seq, ok=self.ok, data=self.data, error=self.error)


@dataclass(frozen=True)
class StoredRecord:
    slot: str
    agent: str
    seq: int
    operation_id: str
    kind: str
    document: JSONObject
    received: float

    def to_message(self) -> Record:
        return Record(id=self.operation_id, seq=self.seq, record=self.document)


def _stored_record(row: sqlite3.Row) -> StoredRecord:
    values = dict(zip(row.keys(), row, strict=True))
    values["document"] = json.loads(values["document"])
    return StoredRecord(**values)


def _slot(row: sqlite3.Row) -> Slot:
    return Slot(name=row["name"], created=row["created"], revoked=row["revoked"])


def _agent(row: sqlite3.Row) -> AgentRecord:
    return AgentRecord(**dict(zip(row.keys(), row, strict=True)))


def _operation(row: sqlite3.Row) -> OperationRecord:
    values = dict(zip(row.keys(), row, strict=True))
    values["params"] = json.loads(values["params"])
    return OperationRecord(**values)


def _result(row: sqlite3.Row) -> ResultRecord:
    error = json.loads(row["error"]) if row["error"] is not None else None
    return ResultRecord(
        slot=row["slot"],
        agent=row["agent"],
        seq=row["seq"],
        operation_id=row["operation_id"],
        ok=bool(row["ok"]),
        data=json.loads(row["data"]) if row["data"] is not None else None,
        error=ErrorInfo(code=error["code"], message=error["message"]) if error is not None else None,
        received=row["received"],
    )


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _clamp(value: int) -> int:
    return min(value, _INT64_MAX)


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Schema:
    """The tables of one part of the hub's file and the version of their shape. ``version_table`` holds that
    version in its one row; None: the file's ``user_version`` (the hub store's own)."""

    what: str
    """What the tables hold, as an error names it."""
    tables: str
    """``CREATE … IF NOT EXISTS`` statements, separated by semicolons."""
    version: int
    version_table: str | None = None

    def found(self, db: sqlite3.Connection) -> int:
        """The version the file holds (0: none yet)."""
        if self.version_table is None:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (self.version_table,)).fetchone():
            return 0
        row = db.execute(f"SELECT version FROM {self.version_table}").fetchone()  # noqa: S608 (a module's name)
        return 0 if row is None else int(row[0])

    def record(self, db: sqlite3.Connection, found: int) -> None:
        if self.version_table is None:
            db.execute(f"PRAGMA user_version = {self.version}")
        elif found == 0:
            db.execute(f"INSERT INTO {self.version_table} (version) VALUES (?)", (self.version,))  # noqa: S608
        elif found < self.version:
            db.execute(f"UPDATE {self.version_table} SET version = ?", (self.version,))  # noqa: S608


Upgrade = Callable[[sqlite3.Connection, int], None]
"""Brings tables of an older version (the second argument) to the current shape, in the setup's transaction."""


class Database:
    """An open SQLite file of the hub's (``_db``): closed by :meth:`close` or a ``with`` block, written in short
    transactions (:meth:`_write`), its tables made by :meth:`create_tables`. :class:`Store`, the inventory's
    store, the schedules and the operators' accounts are ones."""

    path: Path
    _db: sqlite3.Connection

    @property
    def connection(self) -> sqlite3.Connection:
        """The open connection, for another part of the hub that works on the same file in this thread (the
        hub's database thread writes through one connection: a second one writing the same file made lock
        errors)."""
        return self._db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken at once so that it never waits half-way; inside a :meth:`group`,
        a savepoint of the group's transaction instead (undone alone if it fails)."""
        if self._db.in_transaction:
            self._db.execute("SAVEPOINT write")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK TO write")
                self._db.execute("RELEASE write")
                raise
            self._db.execute("RELEASE write")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def group(self) -> Iterator[None]:
        """One transaction for every write made inside (a group commit): what they wrote is durable only once
        the block has ended; an exception out of the block undoes them all."""
        with self._write():
            yield

    def create_tables(self, schema: Schema, upgrade: Upgrade | None = None) -> None:
        """Creates ``schema``'s missing tables, upgrades older ones and records the version, in one write
        transaction. Tables a newer hub made are refused (a
        :class:`HubError` naming the file and what they hold), and nothing is written."""
        with self._write() as db:
            found = schema.found(db)
            if found > schema.version:
                raise HubError(
                    f"{self.path}: {schema.what} made by a newer hub (schema {found}, this one knows {schema.version})"
                )
            for statement in schema.tables.split(";"):
                if statement.strip():
                    db.execute(statement)
            if upgrade is not None and 0 < found < schema.version:
                upgrade(db, found)
            schema.record(db, found)


_TABLES: Final = Schema("slots and operations", _SCHEMA, SCHEMA_VERSION)


def _upgrade(db: sqlite3.Connection, found: int) -> None:
    if found == 1:  # slots had no result_bytes: weigh what is stored
        db.execute("ALTER TABLE slots ADD COLUMN result_bytes INTEGER NOT NULL DEFAULT 0")
        db.execute(
            "UPDATE slots SET result_bytes = (SELECT COALESCE(SUM(COALESCE(length(CAST(data AS BLOB)), 0)"
            " + COALESCE(length(CAST(error AS BLOB)), 0)), 0) FROM results WHERE results.slot = slots.name)"
        )


class Store(Database):
    """One open connection to the hub's database; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[Store, str, str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._now = clock
        self._on_result = on_result
        _create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise HubError(f"{self.path}: cannot open the hub database: {exc}") from None
        self._db.row_factory = sqlite3.Row
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise HubError(f"{self.path}: not a usable hub database: {exc}") from None

    def _setup(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acked result must survive a power cut
        self._db.execute("PRAGMA foreign_keys=ON")
        self.create_tables(_TABLES, _upgrade)

    def _rows(self, sql: str, args: Iterable[object] = ()) -> list[sqlite3.Row]:
        return list(self._db.execute(sql, tuple(args)).fetchall())

    # ------------------------------------------------------------------ slots and tokens

    def add_slot(self, name: str) -> str:
        """Creates slot ``name`` and returns its token: the only time the token exists in full."""
        if not _SLOT_NAME.fullmatch(name):
            raise HubError(f"invalid slot name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
        token = tokens.new_token()
        with self._write() as db:
            if db.execute("SELECT 1 FROM slots WHERE name = ?", (name,)).fetchone():
                raise HubError(f"slot {name!r} already exists (names are never reused, even once revoked)")
            db.execute(
                "INSERT INTO slots (name, token_hash, created) VALUES (?, ?, ?)",
                (name, tokens.hash_token(token), self._now()),
            )
        return token

    def slots(self) -> list[Slot]:
        return [_slot(row) for row in self._rows("SELECT * FROM slots ORDER BY created, name")]

    def slot(self, name: str) -> Slot | None:
        rows = self._rows("SELECT * FROM slots WHERE name = ?", (name,))
        return _slot(rows[0]) if rows else None

    def revoke(self, name: str) -> bool:
        """Revokes slot ``name``; False if it already was."""
        with self._write() as db:
            row = db.execute("SELECT revoked FROM slots WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownSlot(f"no slot named {name!r}")
            if row["revoked"] is not None:
                return False
            db.execute("UPDATE slots SET revoked = ? WHERE name = ?", (self._now(), name))
            return True

    def slot_for_token(self, token: str) -> str | None:
        """The slot this token opens, or None for an unknown or revoked token.

        Every slot's hash is compared in constant time, so the answer takes as long whichever
        slot (if any) matches.
        """
        found: str | None = None
        for row in self._rows("SELECT name, token_hash, revoked FROM slots"):
            if tokens.matches(token, row["token_hash"]) and row["revoked"] is None:
                found = row["name"]
        return found

    def revoked_among(self, slots: Sequence[str]) -> list[str]:
        if not slots:
            return []
        sql = f"SELECT name FROM slots WHERE revoked IS NOT NULL AND name IN ({_marks(slots)})"  # noqa: S608
        return [row["name"] for row in self._rows(sql, slots)]

    def _live_slot(self, db: sqlite3.Connection, name: str) -> None:
        row = db.execute("SELECT revoked FROM slots WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownSlot(f"no slot named {name!r} (ksocket hub token list shows them)")
        if row["revoked"] is not None:
            raise HubError(f"slot {name!r} is revoked")

    # ------------------------------------------------------------------ agents

    def agent(self, slot: str) -> AgentRecord | None:
        rows = self._rows("SELECT * FROM agents WHERE slot = ?", (slot,))
        return _agent(rows[0]) if rows else None

    def agents(self) -> list[tuple[Slot, AgentRecord | None]]:
        """Every slot with the agent last seen on it (None if none ever was)."""
        agents = {row["slot"]: _agent(row) for row in self._rows("SELECT * FROM agents")}
        return [(slot, agents.get(slot.name)) for slot in self.slots()]

    def agent_connected(self, slot: str, *, agent: str, version: str, name: str, session: str) -> None:
        now = self._now()
        with self._write() as db:
            db.execute(
                "INSERT INTO agents (slot, agent, version, name, session, state, last_heartbeat, connected_since)"
                " VALUES (?, ?, ?, ?, ?, 'connected', NULL, ?)"
                " ON CONFLICT (slot) DO UPDATE SET agent = excluded.agent, version = excluded.version,"
                " name = excluded.name, session = excluded.session, state = 'connected', last_heartbeat = NULL,"
                " connected_since = excluded.connected_since",
                (slot, agent, version, name, session, now),
            )

    def agent_heartbeat(self, slot: str, session: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE agents SET last_heartbeat = ? WHERE slot = ? AND session = ?", (self._now(), slot, session)
            )

    def agent_disconnected(self, slot: str, session: str) -> None:
        """Marks the slot's agent disconnected, unless another session has taken the slot since."""
        with self._write() as db:
            db.execute(
                "UPDATE agents SET state = 'disconnected', connected_since = NULL WHERE slot = ? AND session = ?",
                (slot, session),
            )

    def reset_connections(self) -> None:
        """At a server's start: nobody is connected yet, whatever an earlier server left behind."""
        with self._write() as db:
            db.execute("UPDATE agents SET state = 'disconnected', connected_since = NULL WHERE state = 'connected'")

    # ------------------------------------------------------------------ operations

    def add_operation(self, slot: str, name: str, params: JSONObject | None = None, op_id: str | None = None) -> str:
        """Queues operation ``name`` for ``slot`` (state pending) and returns its id."""
        return self._insert_operation(slot, name, params, op_id, claim=False).id

    def issue_operation(
        self, slot: str, name: str, params: JSONObject | None = None, op_id: str | None = None
    ) -> OperationRecord:
        """Queues operation ``name`` for ``slot`` as :meth:`add_operation` does and, in the same transaction,
        claims it (state sent) for its caller to send, unless operations of the slot are still pending (they
        were queued first, so they go first: it stays pending behind them); its row, whose state says which."""
        return self._insert_operation(slot, name, params, op_id, claim=True)

    def _insert_operation(
        self, slot: str, name: str, params: JSONObject | None, op_id: str | None, *, claim: bool
    ) -> OperationRecord:
        op_id = str(uuid.uuid4()) if op_id is None else op_id
        params = {} if params is None else params
        if not op_id or not name:
            raise HubError("an operation needs a non-empty id and name")
        if not isinstance(params, dict):
            raise HubError("an operation's params must be a JSON object")
        try:
            params_json = json.dumps(params, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise HubError(f"params are not JSON: {exc}") from None
        now = self._now()
        with self._write() as db:
            self._live_slot(db, slot)
            if db.execute("SELECT 1 FROM operations WHERE id = ?", (op_id,)).fetchone():
                raise HubError(f"an operation with id {op_id!r} already exists")
            state = SENT if claim and not self._has_pending(db, slot) else PENDING
            db.execute(
                "INSERT INTO operations (id, slot, name, params, created, state, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (op_id, slot, name, params_json, now, state, now),
            )
        return OperationRecord(
            id=op_id,
            slot=slot,
            name=name,
            params=params,
            created=now,
            state=state,
            reason=None,
            message=None,
            done=None,
            total=None,
            cancel_requested=None,
            cancel_sent=None,
            updated=now,
        )

    @staticmethod
    def _has_pending(db: sqlite3.Connection, slot: str) -> bool:
        return (
            db.execute("SELECT 1 FROM operations WHERE slot = ? AND state = 'pending'", (slot,)).fetchone() is not None
        )

    def operation(self, op_id: str) -> OperationRecord | None:
        rows = self._rows("SELECT * FROM operations WHERE id = ?", (op_id,))
        return _operation(rows[0]) if rows else None

    def operations(self, slot: str | None = None) -> list[OperationRecord]:
        if slot is None:
            return [_operation(row) for row in self._rows("SELECT * FROM operations ORDER BY rowid")]
        return [
            _operation(row) for row in self._rows("SELECT * FROM operations WHERE slot = ? ORDER BY rowid", (slot,))
        ]

    def claim_backlog(self, slot: str) -> list[OperationRecord]:
        """Every operation of ``slot`` without a result, oldest first; the pending ones become sent."""
        now = self._now()
        with self._write() as db:
            rows = db.execute(
                "SELECT * FROM operations WHERE slot = ? AND state IN ('pending', 'sent', 'accepted') ORDER BY rowid",
                (slot,),
            ).fetchall()
            db.execute(
                "UPDATE operations SET state = 'sent', updated = ? WHERE slot = ? AND state = 'pending'", (now, slot)
            )
            db.execute(
                "UPDATE operations SET cancel_sent = ? WHERE slot = ? AND cancel_requested IS NOT NULL"
                " AND state IN ('sent', 'accepted')",
                (now, slot),
            )
        return [_operation(row) for row in rows]

    def claim_pending(self, slots: Sequence[str]) -> list[OperationRecord]:
        """The pending operations of these slots, oldest first, now marked sent."""
        if not slots:
            return []
        now = self._now()
        with self._write() as db:
            where = f"state = 'pending' AND slot IN ({_marks(slots)})"
            rows = db.execute(f"SELECT * FROM operations WHERE {where} ORDER BY rowid", tuple(slots)).fetchall()  # noqa: S608
            db.execute(f"UPDATE operations SET state = 'sent', updated = ? WHERE {where}", (now, *slots))  # noqa: S608
        return [_operation(row) for row in rows]

    def claim_cancels(self, slots: Sequence[str]) -> list[OperationRecord]:
        """Operations of these slots whose cancel was asked for but not yet sent; now marked sent."""
        if not slots:
            return []
        now = self._now()
        with self._write() as db:
            where = (
                "cancel_requested IS NOT NULL AND cancel_sent IS NULL AND state IN ('sent', 'accepted')"
                f" AND slot IN ({_marks(slots)})"
            )
            rows = db.execute(f"SELECT * FROM operations WHERE {where} ORDER BY rowid", tuple(slots)).fetchall()  # noqa: S608
            db.execute(f"UPDATE operations SET cancel_sent = ? WHERE {where}", (now, *slots))  # noqa: S608
        return [_operation(row) for row in rows]

    def _update(self, slot: str, op_id: str, assignments: str, values: tuple[Any, ...], states: str = "") -> bool:
        """``UPDATE operations SET assignments`` for operation ``op_id`` of ``slot`` (if in ``states``,
        an SQL list); False if it was in none of them, UnknownOperation if it was never sent there."""
        where = "id = ? AND slot = ?" + (f" AND state IN {states}" if states else "")
        with self._write() as db:
            _issued(db, slot=slot, op_id=op_id)
            sql = f"UPDATE operations SET {assignments}, updated = ? WHERE {where}"  # noqa: S608
            return db.execute(sql, (*values, self._now(), op_id, slot)).rowcount > 0

    def mark_accepted(self, slot: str, op_id: str) -> bool:
        return self._update(slot, op_id, "state = 'accepted'", (), "('pending', 'sent')")

    def mark_refused(self, slot: str, op_id: str, reason: str, message: str) -> bool:
        return self._update(
            slot,
            op_id,
            "state = 'refused', reason = ?, message = ?",
            (reason, message),
            "('pending', 'sent', 'accepted')",
        )

    def mark_progress(self, slot: str, op_id: str, done: int, total: int) -> bool:
        return self._update(slot, op_id, "done = ?, total = ?", (_clamp(done), _clamp(total)))

    def request_cancel(self, op_id: str) -> str:
        """Asks for operation ``op_id`` to be cancelled; returns its state afterwards.

        A pending operation (never sent) is cancelled at once. A sent or accepted one keeps
        its state, with the cancel recorded for the server to send (``cancel_sent`` NULL again
        if the cancel had been sent before). A finished one is left as it is.
        """
        now = self._now()
        with self._write() as db:
            row = db.execute("SELECT state FROM operations WHERE id = ?", (op_id,)).fetchone()
            if row is None:
                raise UnknownOperation(f"no operation with id {op_id!r}")
            state: str = row["state"]
            if state == PENDING:
                db.execute(
                    "UPDATE operations SET state = 'cancelled', cancel_requested = ?, updated = ? WHERE id = ?",
                    (now, now, op_id),
                )
                return CANCELLED
            if state in (SENT, ACCEPTED):
                db.execute(
                    "UPDATE operations SET cancel_requested = ?, cancel_sent = NULL, updated = ? WHERE id = ?",
                    (now, now, op_id),
                )
            return state

    # ------------------------------------------------------------------ results

    def add_result(self, slot: str, agent: str, result: Result, *, quota: int | None = None) -> bool:
        """Stores ``result`` from ``agent`` on ``slot``; False if it is not stored because that (agent,
        seq) was already received or its operation already has a result.

        UnknownOperation if its operation was never issued to ``slot``. The operation becomes
        done, or cancelled when the error code is ``cancelled``. With a ``quota`` (bytes), a result
        that would take the slot's results past it is stored as a ``storage-full`` failure instead.
        """
        if result.seq > _INT64_MAX:
            raise HubError(f"seq {result.seq} is larger than the hub can store")
        data, error = _result_columns(result)
        size = _weight(data, error)
        now = self._now()
        with self._write() as db:
            if db.execute(
                "SELECT 1 FROM results WHERE slot = ? AND agent = ? AND seq = ?", (slot, agent, result.seq)
            ).fetchone():
                return False
            _issued(db, slot=slot, op_id=result.id)
            if db.execute("SELECT 1 FROM results WHERE slot = ? AND operation_id = ?", (slot, result.id)).fetchone():
                return False
            stored = db.execute("SELECT result_bytes FROM slots WHERE name = ?", (slot,)).fetchone()[0]
            if quota is not None and stored + size > quota:
                result = Result.failure(
                    id=result.id,
                    seq=result.seq,
                    code=STORAGE_FULL,
                    message=f"a result of {size} bytes was not kept: slot {slot} holds {stored} of {quota}",
                )
                data, error = _result_columns(result)
                size = _weight(data, error)
            db.execute(
                "INSERT INTO results (slot, agent, seq, operation_id, ok, data, error, received)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (slot, agent, result.seq, result.id, result.ok, data, error, now),
            )
            db.execute("UPDATE slots SET result_bytes = result_bytes + ? WHERE name = ?", (size, slot))
            state = CANCELLED if result.error is not None and result.error.code == ErrorCode.CANCELLED else DONE
            db.execute(
                "UPDATE operations SET state = ?, updated = ?"
                " WHERE id = ? AND slot = ? AND state NOT IN ('done', 'cancelled')",
                (state, now, result.id, slot),
            )
        if self._on_result is not None:
            self._on_result(self, slot, result.id)
        return True

    def add_records(
        self, slot: str, agent: str, records: Sequence[Record], *, quota: int | None = None
    ) -> tuple[int, set[str]]:
        """Stores ``records`` from ``agent`` on ``slot`` in one transaction; returns how many were new (an
        (agent, seq) already received is not stored again) and the ids of operations never sent to the slot,
        whose records are not stored. Past ``quota`` bytes of the slot's results and records, a record is
        dropped (and counted as not new): the operation's result will say ``storage-full``."""
        if any(record.seq > _INT64_MAX for record in records):
            raise HubError(f"a seq of {max(record.seq for record in records)} is larger than the hub can store")
        now = self._now()
        with self._write() as db:
            unknown = {op_id for op_id in {r.id for r in records} if not _was_issued(db, slot=slot, op_id=op_id)}
            stored = db.execute("SELECT result_bytes FROM slots WHERE name = ?", (slot,)).fetchone()[0]
            rows = []
            for r in records:
                document = json.dumps(r.record, ensure_ascii=False)
                if r.id in unknown or (quota is not None and stored + len(document) > quota):
                    continue
                stored += len(document)
                rows.append((slot, agent, r.seq, r.id, r.kind, document, now))
            before = db.total_changes
            db.executemany(
                "INSERT INTO records (slot, agent, seq, operation_id, kind, document, received)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows,
            )
            new = db.total_changes - before
            db.execute("UPDATE slots SET result_bytes = ? WHERE name = ?", (stored, slot))
            return new, unknown

    def records(self, op_id: str) -> list[StoredRecord]:
        """The records of operation ``op_id`` from the slot it was sent to, in the order received (seq order:
        an agent sends them so, and a repeated one is not stored); of the records with one ``key`` (a record
        and its updates), the newest alone."""
        rows = self._rows(
            "SELECT slot, agent, seq, operation_id, kind, document, received FROM ("
            " SELECT r.*, r.rowid AS position, ROW_NUMBER() OVER (PARTITION BY CASE"
            "  WHEN json_type(r.document, '$.key') = 'text' THEN json_extract(r.document, '$.key') ELSE r.rowid END"
            "  ORDER BY r.received DESC, r.rowid DESC) AS newer"
            " FROM records r JOIN operations o ON r.operation_id = o.id AND r.slot = o.slot WHERE o.id = ?"
            ") WHERE newer = 1 ORDER BY received, position",
            (op_id,),
        )
        return [_stored_record(row) for row in rows]

    def result_for(self, op_id: str) -> ResultRecord | None:
        """The first result received for operation ``op_id`` from the slot it was sent to."""
        rows = self._rows(
            "SELECT r.* FROM results r JOIN operations o ON r.operation_id = o.id AND r.slot = o.slot"
            " WHERE o.id = ? ORDER BY r.received, r.rowid LIMIT 1",
            (op_id,),
        )
        return _result(rows[0]) if rows else None

    def results(self, slot: str | None = None) -> list[ResultRecord]:
        if slot is None:
            return [_result(row) for row in self._rows("SELECT * FROM results ORDER BY received, rowid")]
        return [
            _result(row) for row in self._rows("SELECT * FROM results WHERE slot = ? ORDER BY received, rowid", (slot,))
        ]


def _was_issued(db: sqlite3.Connection, *, slot: str, op_id: str) -> bool:
    """Whether operation ``op_id`` was sent to ``slot`` (it is the slot's and not pending)."""
    row = db.execute("SELECT state FROM operations WHERE id = ? AND slot = ?", (op_id, slot)).fetchone()
    return row is not None and row["state"] != PENDING


def _issued(db: sqlite3.Connection, *, slot: str, op_id: str) -> None:
    """UnknownOperation unless operation ``op_id`` was sent to ``slot``."""
    if not _was_issued(db, slot=slot, op_id=op_id):
        raise UnknownOperation(f"operation {op_id!r} was never sent to slot {slot}")


def _result_columns(result: Result) -> tuple[str | None, str | None]:
    """The JSON of a result's data and of its error, as stored."""
    error = None
    if result.error is not None:
        error = json.dumps({"code": result.error.code, "message": result.error.message}, ensure_ascii=False)
    data = None if result.data is None else json.dumps(result.data, ensure_ascii=False)
    return data, error


def _weight(*texts: str | None) -> int:
    """Bytes of UTF-8 these texts take in the database (without a copy of an ASCII one, the usual)."""
    return sum(
        len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        for text in texts
        if text is not None
    )


def _create_private(path: Path) -> None:
    """Creates the database file (and its folder) readable by the owner only.

    An existing file is never opened here: closing a descriptor drops every POSIX lock this
    process holds on the file, SQLite's included, and a hub opens the file twice (its event
    loop's store and its database thread's), so another process could then checkpoint and
    remove the WAL under it ("database disk image is malformed").
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            path.chmod(0o600)
            return
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        raise HubError(f"{path}: cannot create the hub database: {exc.strerror}") from None
