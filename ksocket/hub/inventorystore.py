"""The inventory's tables, in the hub's SQLite file beside :mod:`ksocket.hub.store`'s.

:class:`InventoryStore` loads the :class:`~ksocket.hub.inventory.Inventory` core, writes what one
:meth:`~ksocket.hub.inventory.Inventory.apply` changed (an :class:`~ksocket.hub.inventory.Applied`)
in one transaction, and answers the ``ksocket hub nodes | node | snapshots | diff | export``
commands and the web pages (:meth:`InventoryStore.node_page`: the node list searched, filtered,
sorted and paged in SQL, addresses sorted as addresses by :func:`address_key`, which the store
registers on the connection it opens; the running discoveries' records so far) with indexed queries. The
tables are created on first use; their schema version is the row of ``inventory_schema`` (the hub's
own ``user_version`` stays the hub store's).

Tables
------
``nodes``           id, first seen, last seen, fields (JSON: :class:`~ksocket.hub.inventory.Fields`),
                    details (JSON: the latest section of each protocol).
``node_keys``       identity key (kind, value) -> node: a key names one node.
``node_addresses``  (slot, address, node), first and last seen: every address a node held.
``snapshots``       id (in the order taken), operation id (unique), slot, agent, network, params,
                    summary, taken, nodes (how many it saw).
``snapshot_nodes``  (snapshot, node), the node's fields as that snapshot saw them.
``changes``         node, snapshot, field, old, new (JSON): a node's history.
``merges``          kept, merged, snapshot, key kind and value: which node became which, and why.
``edges``           per snapshot: source, target, kind (host, network, lldp), protocol, table.

A merge rewrites the merged node's history (snapshots, changes, addresses) to the kept id, so that
diffs see one machine; ``hub node`` of a merged id names the node it became.

The running hub imports a discovery as its result is stored (:func:`import_result`, in its database
thread, through :meth:`InventoryStore.sharing` its one connection); :meth:`InventoryStore.topology` is what
``hub topology`` and the web page draw.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from ksocket.hub.errors import HubError
from ksocket.hub.inventory import (
    Applied,
    Change,
    Diff,
    Discovery,
    Edge,
    Fields,
    Inventory,
    Node,
    ScanRecord,
    diff,
    key_order,
)
from ksocket.hub.store import Database, Schema, Store

SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT: Final = 10.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS inventory_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    fields TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_by_last_seen ON nodes (last_seen);
CREATE TABLE IF NOT EXISTS node_keys (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    node INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS node_keys_by_node ON node_keys (node);
CREATE TABLE IF NOT EXISTS node_addresses (
    slot TEXT NOT NULL,
    address TEXT NOT NULL,
    node INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (slot, address, node)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS node_addresses_by_node ON node_addresses (node);
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY,
    operation_id TEXT NOT NULL UNIQUE,
    slot TEXT NOT NULL,
    agent TEXT NOT NULL,
    network TEXT NOT NULL,
    params TEXT NOT NULL,
    summary TEXT NOT NULL,
    taken REAL NOT NULL,
    nodes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_network ON snapshots (slot, network, id);
CREATE TABLE IF NOT EXISTS snapshot_nodes (
    snapshot INTEGER NOT NULL,
    node INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (snapshot, node)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshot_nodes_by_node ON snapshot_nodes (node, snapshot);
CREATE TABLE IF NOT EXISTS changes (
    node INTEGER NOT NULL,
    snapshot INTEGER NOT NULL,
    field TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_node ON changes (node, snapshot);
CREATE TABLE IF NOT EXISTS merges (
    kept INTEGER NOT NULL,
    merged INTEGER NOT NULL,
    snapshot INTEGER NOT NULL,
    key_kind TEXT NOT NULL,
    key_value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS merges_by_merged ON merges (merged);
CREATE TABLE IF NOT EXISTS edges (
    snapshot INTEGER NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    protocol TEXT NOT NULL,
    table_name TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS edges_by_snapshot ON edges (snapshot);
"""

TABLES: Final = Schema("inventory", _SCHEMA, SCHEMA_VERSION, "inventory_schema")


@dataclass(frozen=True)
class NodeRow:
    id: int
    first_seen: float
    last_seen: float
    fields: Fields


@dataclass(frozen=True)
class SnapshotRow:
    id: int
    operation_id: str
    slot: str
    agent: str
    network: str
    params: Mapping[str, Any]
    summary: Mapping[str, Any]
    taken: float
    nodes: int


@dataclass(frozen=True)
class NodeQuery:
    """One page of the web page's node list: search, filters, order (:data:`NODE_SORTS`), where it starts."""

    search: str = ""
    """Text in a node's addresses, MACs, names, OS or vendor, or its id."""
    kind: str = ""
    network: str = ""
    """Seen by a snapshot of this network."""
    state: str = ""
    """``present`` (in the newest snapshot of a network) or ``gone`` (in none)."""
    sort: str = "id"
    descending: bool = False
    offset: int = 0
    limit: int = 50


NODE_SORTS: Final[Mapping[str, str]] = {
    "id": "id",
    "kind": "json_extract(fields, '$.kind')",
    "name": "json_extract(fields, '$.names[0]')",
    "address": "address_key(json_extract(fields, '$.addresses[0]'))",
    "os": "json_extract(fields, '$.os')",
    "vendor": "json_extract(fields, '$.vendor')",
    "first_seen": "first_seen",
    "last_seen": "last_seen",
}
"""The node list's orders: name -> SQL (this module's text, never a caller's)."""
NODE_STATES: Final = ("present", "gone")
_ODD: Final = b"\x07"
"""Before the text of an address that does not parse: after every IPv4 (version 4) and IPv6 (version 6) key."""
_IN_NEWEST: Final = (
    "id IN (SELECT node FROM snapshot_nodes WHERE snapshot IN (SELECT max(id) FROM snapshots GROUP BY slot, network))"
)
_SEARCHED: Final = (
    "(json_extract(fields, '$.addresses') || json_extract(fields, '$.macs') || json_extract(fields, '$.names')"
    " || json_extract(fields, '$.os') || json_extract(fields, '$.vendor')) LIKE ? ESCAPE '\\'"
)


@dataclass(frozen=True)
class Progress:
    """A ``networks.discover`` operation without its result yet, and how many records it has sent so far."""

    operation_id: str
    slot: str
    state: str
    created: float
    params: Mapping[str, Any]
    records: int
    hosts: int


@dataclass(frozen=True)
class HistoryEntry:
    snapshot: int
    change: Change


@dataclass(frozen=True)
class NodeView:
    """Everything ``hub node ID`` shows."""

    node: NodeRow
    keys: list[tuple[str, str]]
    addresses: list[tuple[str, str, float, float]]
    """(slot, address, first seen, last seen)."""
    details: Mapping[str, Any]
    history: list[HistoryEntry]
    snapshots: list[int]
    merged: list[int]
    """The nodes that were found to be this one."""


def address_key(text: str | None) -> bytes | None:
    """``text``'s sort key as an address (SQL's ``address_key``, so that 198.18.5.9 comes before 198.18.5.10):
    IPv4 by number, then IPv6 by number, then anything else as text; None stays None."""
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return _ODD + text.encode()
    return bytes([address.version]) + address.packed


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _fields(text: str) -> Fields:
    return Fields.from_document(json.loads(text))


class InventoryStore(Database):
    """One connection to the hub's database for the inventory; used from one thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        Store(self.path).close()  # the hub's file, created private, with the tables records come from
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.create_function("address_key", 1, address_key, deterministic=True)
            self.create_tables(TABLES)
        except sqlite3.DatabaseError as exc:
            raise HubError(f"{self.path}: not a usable inventory: {exc}") from None

    # ------------------------------------------------------------------ the core in and out

    def load(self) -> Inventory:
        """The inventory as stored: nodes with their keys and details, and who last held each address."""
        keys = self.node_keys()
        nodes = [
            Node(
                id=node_id,
                first_seen=first,
                last_seen=last,
                keys=keys.get(node_id, []),
                fields=_fields(fields),
                details=json.loads(details),
            )
            for node_id, first, last, fields, details in self._db.execute(
                "SELECT id, first_seen, last_seen, fields, details FROM nodes"
            )
        ]
        addresses = {
            (slot, address): node_id
            for slot, address, node_id in self._db.execute(
                "SELECT slot, address, node FROM node_addresses ORDER BY last_seen, node"
            )
        }
        (merged,) = self._db.execute("SELECT max(merged) FROM merges").fetchone()
        return Inventory(nodes, addresses, next_id=(merged or 0) + 1)

    def apply(self, discovery: Discovery, records: Iterable[ScanRecord], inventory: Inventory | None = None) -> Applied:
        """Applies one discovery to ``inventory`` (else the stored one) and writes what changed."""
        applied = (inventory or self.load()).apply(discovery, records)
        self.save(applied)
        return applied

    def save(self, applied: Applied) -> int:
        """Writes ``applied`` in one transaction; returns its snapshot's id (the same one when it is taken again)."""
        discovery = applied.snapshot.discovery
        with self._write() as db:
            snapshot = self._snapshot(db, applied)
            for merge in applied.merges:
                self._rewrite(db, merge.kept, merge.merged)
                db.execute(
                    "INSERT INTO merges (kept, merged, snapshot, key_kind, key_value) VALUES (?, ?, ?, ?, ?)",
                    (merge.kept, merge.merged, snapshot, *merge.key),
                )
            self._nodes(db, applied.nodes, applied.removed)
            db.executemany(
                "INSERT INTO node_addresses (slot, address, node, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET first_seen = min(first_seen, excluded.first_seen),"
                " last_seen = max(last_seen, excluded.last_seen)",
                [
                    (discovery.slot, address, node_id, discovery.taken, discovery.taken)
                    for node_id, fields in applied.snapshot.members.items()
                    for address in fields.addresses
                ],
            )
            db.executemany(
                "INSERT INTO changes (node, snapshot, field, old, new) VALUES (?, ?, ?, ?, ?)",
                [(c.node, snapshot, c.field, _dumps(c.old), _dumps(c.new)) for c in applied.changes],
            )
        return snapshot

    @staticmethod
    def _snapshot(db: sqlite3.Connection, applied: Applied) -> int:
        """Inserts the snapshot's header, or finds it when its operation was taken before; (re)writes its rows."""
        discovery = applied.snapshot.discovery
        db.execute(
            "INSERT INTO snapshots (operation_id, slot, agent, network, params, summary, taken, nodes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (operation_id) DO UPDATE SET nodes = excluded.nodes",
            (
                discovery.operation_id,
                discovery.slot,
                discovery.agent,
                discovery.network,
                _dumps(discovery.params),
                _dumps(discovery.summary),
                discovery.taken,
                len(applied.snapshot.members),
            ),
        )
        (snapshot,) = db.execute(
            "SELECT id FROM snapshots WHERE operation_id = ?", (discovery.operation_id,)
        ).fetchone()
        db.execute("DELETE FROM snapshot_nodes WHERE snapshot = ?", (snapshot,))
        db.executemany(
            "INSERT INTO snapshot_nodes (snapshot, node, fields) VALUES (?, ?, ?)",
            [(snapshot, node_id, _dumps(fields.as_document())) for node_id, fields in applied.snapshot.members.items()],
        )
        db.execute("DELETE FROM edges WHERE snapshot = ?", (snapshot,))
        db.executemany(
            "INSERT INTO edges (snapshot, source, target, kind, protocol, table_name) VALUES (?, ?, ?, ?, ?, ?)",
            [(snapshot, e.source, e.target, e.kind, e.protocol, e.table) for e in applied.snapshot.edges],
        )
        return int(snapshot)

    @staticmethod
    def _rewrite(db: sqlite3.Connection, kept: int, merged: int) -> None:
        """The merged node's history becomes the kept one's (where both were seen, the kept one's row stays)."""
        db.execute("UPDATE OR IGNORE snapshot_nodes SET node = ? WHERE node = ?", (kept, merged))
        db.execute("DELETE FROM snapshot_nodes WHERE node = ?", (merged,))
        db.execute("UPDATE OR IGNORE node_addresses SET node = ? WHERE node = ?", (kept, merged))
        db.execute("DELETE FROM node_addresses WHERE node = ?", (merged,))
        db.execute("UPDATE changes SET node = ? WHERE node = ?", (kept, merged))
        db.execute("UPDATE merges SET kept = ? WHERE kept = ?", (kept, merged))

    @staticmethod
    def _nodes(db: sqlite3.Connection, nodes: Sequence[Node], removed: Sequence[int]) -> None:
        gone = [*removed, *(node.id for node in nodes)]
        db.executemany("DELETE FROM nodes WHERE id = ?", [(node_id,) for node_id in removed])
        db.executemany("DELETE FROM node_keys WHERE node = ?", [(node_id,) for node_id in gone])
        db.executemany(
            "INSERT INTO nodes (id, first_seen, last_seen, fields, details) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET first_seen = excluded.first_seen, last_seen = excluded.last_seen,"
            " fields = excluded.fields, details = excluded.details",
            [
                (node.id, node.first_seen, node.last_seen, _dumps(node.fields.as_document()), _dumps(node.details))
                for node in nodes
            ],
        )
        db.executemany(
            "INSERT OR REPLACE INTO node_keys (kind, value, node) VALUES (?, ?, ?)",
            [(kind, value, node.id) for node in nodes for kind, value in node.keys],
        )

    # ------------------------------------------------------------------ what the commands show

    def nodes(self, *, since: int | None = None, limit: int | None = None) -> list[NodeRow]:
        """Nodes by id; ``since``: only those seen in that snapshot or later."""
        taken = self.snapshot(since).taken if since is not None else float("-inf")
        rows = self._db.execute(
            "SELECT id, first_seen, last_seen, fields FROM nodes WHERE last_seen >= ? ORDER BY id LIMIT ?",
            (taken, -1 if limit is None else limit),
        )
        return [NodeRow(node_id, first, last, _fields(fields)) for node_id, first, last, fields in rows]

    def node(self, node_id: int) -> NodeView | None:
        row = self._db.execute(
            "SELECT id, first_seen, last_seen, fields, details FROM nodes WHERE id = ?", (node_id,)
        ).fetchone()
        if row is None:
            return None
        history = [
            HistoryEntry(snapshot, Change(node_id, name, json.loads(old), json.loads(new)))
            for snapshot, name, old, new in self._db.execute(
                "SELECT snapshot, field, old, new FROM changes WHERE node = ? ORDER BY snapshot, rowid", (node_id,)
            )
        ]
        return NodeView(
            node=NodeRow(row[0], row[1], row[2], _fields(row[3])),
            keys=sorted(
                self._db.execute("SELECT kind, value FROM node_keys WHERE node = ?", (node_id,)), key=key_order
            ),
            addresses=list(
                self._db.execute(
                    "SELECT slot, address, first_seen, last_seen FROM node_addresses WHERE node = ?"
                    " ORDER BY last_seen DESC, address",
                    (node_id,),
                )
            ),
            details=json.loads(row[4]),
            history=history,
            snapshots=[
                s for (s,) in self._db.execute("SELECT snapshot FROM snapshot_nodes WHERE node = ?", (node_id,))
            ],
            merged=[
                m for (m,) in self._db.execute("SELECT merged FROM merges WHERE kept = ? ORDER BY rowid", (node_id,))
            ],
        )

    def merged_into(self, node_id: int) -> int | None:
        """The node that ``node_id`` was merged into, or None (merges stay flat: when the kept node is
        merged in turn, its earlier merges name the new keeper)."""
        row = self._db.execute(
            "SELECT kept FROM merges WHERE merged = ? ORDER BY rowid DESC LIMIT 1", (node_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def node_keys(self) -> dict[int, list[tuple[str, str]]]:
        """Every node's identity keys, strongest first."""
        keys: dict[int, list[tuple[str, str]]] = {}
        for kind, value, node_id in self._db.execute("SELECT kind, value, node FROM node_keys"):
            keys.setdefault(node_id, []).append((kind, value))
        return {node_id: sorted(held, key=key_order) for node_id, held in keys.items()}

    def snapshots(self) -> list[SnapshotRow]:
        return self._snapshots("1 ORDER BY id")

    def snapshot(self, reference: int | str) -> SnapshotRow:
        """A snapshot by id or by its operation's id."""
        found = self._snapshots("id = ? OR operation_id = ?", (reference, str(reference)))
        if not found:
            raise HubError(f"no snapshot {reference}")
        return found[0]

    def _snapshots(self, condition: str, args: Sequence[object] = ()) -> list[SnapshotRow]:
        # the condition is one of this module's, never a caller's text
        sql = f"SELECT id, operation_id, slot, agent, network, params, summary, taken, nodes FROM snapshots WHERE {condition}"  # noqa: S608, E501
        rows = self._db.execute(sql, tuple(args))
        return [_snapshot_row(row) for row in rows]

    def edges(self, snapshot: int) -> list[Edge]:
        return [
            Edge(*row)
            for row in self._db.execute(
                "SELECT source, target, kind, protocol, table_name FROM edges WHERE snapshot = ?"
                " ORDER BY source, target, kind, protocol, table_name",
                (snapshot,),
            )
        ]

    def latest_pair(self) -> tuple[SnapshotRow, SnapshotRow]:
        """The newest snapshot and the one before it of the same slot and network."""
        newest = self._snapshots("1 ORDER BY id DESC LIMIT 1")
        if not newest:
            raise HubError("no snapshot yet")
        second = newest[0]
        before = self._snapshots(
            "slot = ? AND network = ? AND id < ? ORDER BY id DESC LIMIT 1", (second.slot, second.network, second.id)
        )
        if not before:
            raise HubError(f"snapshot {second.id} is the first of {second.slot} {second.network}: nothing to compare")
        return before[0], second

    def diff(self, first: SnapshotRow, second: SnapshotRow) -> Diff:
        """From ``first`` to ``second``. Rows whose stored fields are the same text are equal and never parsed."""
        a, b = self._members(first.id), self._members(second.id)
        differ = {node_id for node_id in a.keys() & b.keys() if a[node_id] != b[node_id]}
        arrived = sorted(b.keys() - a.keys())
        seen_before = [
            node_id
            for (node_id,) in self._db.execute(
                "SELECT DISTINCT n.node FROM snapshot_nodes n JOIN snapshots s ON s.id = n.snapshot"
                " WHERE n.node IN (SELECT value FROM json_each(?)) AND s.slot = ? AND s.network = ? AND s.id < ?",
                (json.dumps(arrived), second.slot, second.network, second.id),
            )
        ]
        return diff(
            {node_id: _fields(a[node_id]) for node_id in a if node_id in differ or node_id not in b},
            {node_id: _fields(b[node_id]) for node_id in b if node_id in differ or node_id not in a},
            seen_before,
        )

    # ------------------------------------------------------------------ what the web page shows

    def node_page(self, query: NodeQuery) -> tuple[list[NodeRow], int]:
        """One page of the nodes that match ``query``, and how many match in all."""
        conditions, args = _node_conditions(query)
        where = " AND ".join(conditions) or "1"
        order = NODE_SORTS.get(query.sort, "id") + (" DESC" if query.descending else "")
        (total,) = self._db.execute(f"SELECT count(*) FROM nodes WHERE {where}", args).fetchone()  # noqa: S608
        rows = self._db.execute(
            f"SELECT id, first_seen, last_seen, fields FROM nodes WHERE {where} ORDER BY {order}, id"  # noqa: S608
            " LIMIT ? OFFSET ?",
            (*args, query.limit, query.offset),
        )
        return [NodeRow(node_id, first, last, _fields(fields)) for node_id, first, last, fields in rows], int(total)

    def networks(self) -> list[str]:
        """Every network a snapshot looked at."""
        return [network for (network,) in self._db.execute("SELECT DISTINCT network FROM snapshots ORDER BY network")]

    def running_discoveries(self) -> list[Progress]:
        """The ``networks.discover`` operations still waiting for their result, with their records so far."""
        rows = self._db.execute(
            "SELECT o.id, o.slot, o.state, o.created, o.params, count(r.seq),"
            " count(CASE WHEN r.kind = 'host' THEN 1 END)"
            " FROM operations o LEFT JOIN records r ON r.operation_id = o.id AND r.slot = o.slot"
            " WHERE o.name = 'networks.discover' AND o.state IN ('pending', 'sent', 'accepted')"
            " GROUP BY o.id ORDER BY o.created"
        )
        return [
            Progress(operation_id, slot, state, created, json.loads(params), records, hosts)
            for operation_id, slot, state, created, params, records, hosts in rows
        ]

    def _members(self, snapshot: int) -> dict[int, str]:
        return dict(self._db.execute("SELECT node, fields FROM snapshot_nodes WHERE snapshot = ?", (snapshot,)))

    # ------------------------------------------------------------------ the hub's records

    def discovery(self, operation_id: str) -> Discovery:
        """The header of a ``networks.discover`` operation whose result has arrived, from the hub's tables."""
        row = self._db.execute(
            "SELECT o.slot, o.name, o.params, r.agent, r.ok, r.data, r.received FROM operations o"
            " LEFT JOIN results r ON r.operation_id = o.id AND r.slot = o.slot WHERE o.id = ?"
            " ORDER BY r.received LIMIT 1",
            (operation_id,),
        ).fetchone()
        if row is None:
            raise HubError(f"no operation {operation_id}")
        slot, name, params, agent, ok, data, received = row
        if name != "networks.discover":
            raise HubError(f"operation {operation_id} is a {name}, not a networks.discover")
        if received is None or not ok:
            raise HubError(f"operation {operation_id} has no successful result yet")
        return Discovery(operation_id, slot, agent, json.loads(params), json.loads(data or "{}"), received)

    def records(self, operation_id: str) -> list[ScanRecord]:
        """The records the hub stored for ``operation_id`` (none before the hub has a records table)."""
        try:
            rows = self._db.execute(
                "SELECT r.operation_id, r.slot, r.agent, r.seq, r.received, r.kind, r.document FROM records r"
                " JOIN operations o ON r.operation_id = o.id AND r.slot = o.slot WHERE o.id = ? ORDER BY r.seq",
                (operation_id,),
            ).fetchall()
        except sqlite3.OperationalError:  # no such table: this hub stores no records yet
            return []
        return [
            ScanRecord(operation_id, slot, agent, seq, received, kind, json.loads(document))
            for operation_id, slot, agent, seq, received, kind, document in rows
        ]

    # ------------------------------------------------------------------ the hub's own use: its import, topology

    @classmethod
    def sharing(cls, store: Store) -> InventoryStore:
        """The inventory on ``store``'s connection, in ``store``'s thread: the hub's database thread writes
        through one connection (a second one writing the same file is what made lock errors). Close ``store``,
        not this; use it inside :func:`plain_rows`."""
        inventory = cls.__new__(cls)
        inventory.path = store.path
        inventory._db = store.connection
        inventory.create_tables(TABLES)
        return inventory

    def latest(self) -> SnapshotRow:
        """The newest snapshot."""
        newest = self._snapshots("1 ORDER BY id DESC LIMIT 1")
        if not newest:
            raise HubError("no snapshot yet")
        return newest[0]

    def topology(self, snapshot: SnapshotRow) -> Topology:
        """What ``hub topology`` and the web page draw: the snapshot's edges and the nodes they touch."""
        members = {node_id: _fields(fields) for node_id, fields in self._members(snapshot.id).items()}
        return Topology(
            snapshot=snapshot,
            nodes=[TopologyNode(node_id, members[node_id]) for node_id in sorted(members)],
            edges=self.edges(snapshot.id),
        )


@dataclass(frozen=True)
class TopologyNode:
    id: int
    fields: Fields


@dataclass(frozen=True)
class Topology:
    """A snapshot's learned topology: who revealed whom (``Edge``), and the snapshot's nodes, so that an
    edge's address can be named by its node (:meth:`node_of`)."""

    snapshot: SnapshotRow
    nodes: list[TopologyNode]
    edges: list[Edge]

    def node_of(self) -> dict[str, int]:
        """Address -> the node that held it in this snapshot."""
        return {address: node.id for node in self.nodes for address in node.fields.addresses}

    def as_document(self) -> dict[str, Any]:
        """The JSON of ``hub topology --json`` (docs/inventory.md)."""
        node_of = self.node_of()
        return {
            "snapshot": self.snapshot.id,
            "operation": self.snapshot.operation_id,
            "slot": self.snapshot.slot,
            "network": self.snapshot.network,
            "taken": datetime.fromtimestamp(self.snapshot.taken, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nodes": [
                {
                    "id": node.id,
                    "kind": node.fields.kind,
                    "addresses": list(node.fields.addresses),
                    "names": list(node.fields.names),
                }
                for node in self.nodes
            ],
            "edges": [
                {
                    "source": edge.source,
                    "sourceNode": node_of.get(edge.source),
                    "target": edge.target,
                    "targetNode": node_of.get(edge.target),
                    "kind": edge.kind,
                    "protocol": edge.protocol,
                    "table": edge.table,
                }
                for edge in self.edges
            ],
        }


@contextmanager
def plain_rows(store: Store) -> Iterator[None]:
    """Rows as tuples on ``store``'s connection for a while: the inventory reads tuples, the hub's store
    ``sqlite3.Row``s."""
    connection = store.connection
    factory = connection.row_factory
    connection.row_factory = None
    try:
        yield
    finally:
        connection.row_factory = factory


def import_result(store: Store, operation_id: str) -> int | None:
    """Imports operation ``operation_id``'s discovery into the inventory, on ``store``'s connection, when it
    is a ``networks.discover`` whose result is a success: returns its snapshot's id, else None. Idempotent,
    as ``hub inventory import`` (which does the same on a connection of its own)."""
    operation = store.operation(operation_id)  # its name first: another operation's result is never read
    if operation is None or operation.name != "networks.discover":
        return None
    with plain_rows(store):
        inventory = InventoryStore.sharing(store)
        try:
            discovery = inventory.discovery(operation_id)
        except HubError:  # a failure: nothing to import
            return None
        records = inventory.records(operation_id)
        if not records:
            return None
        inventory.apply(discovery, records)
        return inventory.snapshot(operation_id).id


def _node_conditions(query: NodeQuery) -> tuple[list[str], list[object]]:
    conditions: list[str] = []
    args: list[object] = []
    search = query.search.strip()
    if search.isdigit() and len(search) < 19:
        conditions.append(f"(id = ? OR {_SEARCHED})")
        args.append(int(search))
    elif search:
        conditions.append(_SEARCHED)
    if search:
        args.append("%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    if query.kind:
        conditions.append("json_extract(fields, '$.kind') = ?")
        args.append(query.kind)
    if query.network:
        conditions.append(  # a few probes of (node, snapshot) per node, not every snapshot's rows
            "EXISTS (SELECT 1 FROM snapshot_nodes n WHERE n.node = nodes.id"
            " AND n.snapshot IN (SELECT id FROM snapshots WHERE network = ?))"
        )
        args.append(query.network)
    if query.state in NODE_STATES:
        conditions.append(_IN_NEWEST if query.state == "present" else f"NOT {_IN_NEWEST}")
    return conditions, args


def _snapshot_row(row: Sequence[Any]) -> SnapshotRow:
    snapshot_id, operation_id, slot, agent, network, params, summary, taken, nodes = row
    return SnapshotRow(
        snapshot_id, operation_id, slot, agent, network, json.loads(params), json.loads(summary), taken, nodes
    )
