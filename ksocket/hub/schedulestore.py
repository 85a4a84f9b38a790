"""Schedules of discoveries in the hub's SQLite file, and the poller's step that fires them.

:class:`Schedules` works on an open :class:`~ksocket.hub.store.Store` (its connection, its thread): the
``ksocket hub discover --every | schedules | unschedule`` commands on theirs, the hub's poller in the
database thread (:func:`fire_due`). When to fire is :mod:`ksocket.hub.schedule`'s.

Tables
------
``schedule_schema``  one row: the schema version of the schedules' tables (the hub's own
                     ``user_version`` stays the hub store's), as the inventory's ``inventory_schema``.
``schedules``        id, slot, params (JSON), every (seconds), created, next due, last operation (the id
                     of the operation it queued last).

The tables are created by the first schedule; a hub that has none only looks for the table.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any, Final

from ksocket.hub.errors import HubError
from ksocket.hub.schedule import Schedule, firings
from ksocket.hub.store import UNRESOLVED, Schema, Store

__all__ = ["DISCOVER", "SCHEMA_VERSION", "Schedules", "fire_due"]

logger = logging.getLogger(__name__)

DISCOVER: Final = "networks.discover"
SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS schedule_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (
    id INTEGER PRIMARY KEY,
    slot TEXT NOT NULL,
    params TEXT NOT NULL,
    every REAL NOT NULL,
    created REAL NOT NULL,
    next_due REAL NOT NULL,
    last_operation TEXT
);
"""
TABLES: Final = Schema("schedules", _SCHEMA, SCHEMA_VERSION, "schedule_schema")


class Schedules:
    """The schedules of the hub whose database ``store`` holds; used from ``store``'s thread."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.connection  # (one connection: the hub's database thread writes through it)

    def _exists(self) -> bool:
        row = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schedules'").fetchone()
        return row is not None

    def add(self, slot: str, params: dict[str, Any], every: float, first_due: float) -> int:
        """A schedule of ``networks.discover`` with ``params`` (checked by the caller) on ``slot``, due first at
        ``first_due`` (a time), then every ``every`` seconds; returns its id."""
        found = self._store.slot(slot)
        if found is None:
            raise HubError(f"no slot named {slot!r} (ksocket hub token list shows them)")
        if found.revoked is not None:
            raise HubError(f"slot {slot!r} is revoked")
        self._store.create_tables(TABLES)
        cursor = self._db.execute(
            "INSERT INTO schedules (slot, params, every, created, next_due) VALUES (?, ?, ?, ?, ?)",
            (slot, json.dumps(params, ensure_ascii=False), every, time.time(), first_due),
        )
        return int(cursor.lastrowid or 0)

    def schedules(self) -> list[Schedule]:
        if not self._exists():
            return []
        rows = self._db.execute(
            "SELECT id, slot, params, every, next_due, last_operation FROM schedules ORDER BY id"
        ).fetchall()
        return [_schedule(row) for row in rows]

    def remove(self, schedule_id: int) -> bool:
        """False when there is no such schedule."""
        if not self._exists():
            return False
        return self._db.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,)).rowcount > 0

    def unfinished(self, schedules: Sequence[Schedule]) -> set[str]:
        """The last operations of ``schedules`` that have no result yet."""
        ids = [s.last_operation for s in schedules if s.last_operation is not None]
        rows = self._db.execute(
            "SELECT id FROM operations WHERE id IN (SELECT value FROM json_each(?)) AND state IN (?, ?, ?)",
            (json.dumps(ids), *UNRESOLVED),
        )
        return {row[0] for row in rows}

    def fire(self, online: Collection[str], now: float) -> list[str]:
        """Queues the operations of the schedules that fire at ``now``; returns their ids.

        The schedule names its new operation before the operation is queued: a hub that stops in between
        misses that run rather than queueing it twice."""
        schedules = [s for s in self.schedules() if s.slot in online and s.next_due <= now]
        queued = []
        for firing in firings(schedules, now, online=online, unfinished=self.unfinished(schedules)):
            schedule = firing.schedule
            op_id = str(uuid.uuid4())
            self._db.execute(
                "UPDATE schedules SET next_due = ?, last_operation = ? WHERE id = ?",
                (firing.next_due, op_id, schedule.id),
            )
            try:
                self._store.add_operation(schedule.slot, DISCOVER, dict(schedule.params), op_id)
            except HubError as exc:
                logger.error(
                    "hub: schedule %d could not queue its discovery on slot %s: %s", schedule.id, schedule.slot, exc
                )
                continue
            logger.info("hub: schedule %d queued operation %s on slot %s", schedule.id, op_id, schedule.slot)
            queued.append(op_id)
        return queued


def _schedule(row: Sequence[Any]) -> Schedule:
    schedule_id, slot, params, every, next_due, last_operation = row
    return Schedule(schedule_id, slot, json.loads(params), every, next_due, last_operation)


def fire_due(store: Store, online: Sequence[str], now: float | None = None) -> list[str]:
    """The poller's step, in the database thread: fires the due schedules of the ``online`` slots."""
    return Schedules(store).fire(online, time.time() if now is None else now)
