"""``ksocket.hub.inventorystore``: the inventory written to and read from the hub's SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ksocket.hub.errors import HubError
from ksocket.hub.inventory import Change, Edge, Inventory
from ksocket.hub.inventorystore import InventoryStore
from ksocket.hub.store import Schema, Store
from ksocket.protocol import Record, Result
from tests.test_inventory import MID_A, MID_B, UUID_A, Feed, details, host, linux


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[InventoryStore]:
    with InventoryStore(tmp_path / "hub.db") as store:
        yield store


def run(store: InventoryStore, feed: Feed, *documents: tuple[str, dict[str, object]], seeds: tuple[str, ...] = ()):
    discovery = feed.discovery(seeds=seeds)
    return discovery, store.apply(discovery, feed.records(discovery, documents))


def test_what_is_written_loads_back_and_matches_the_next_discovery(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    feed = Feed()
    with InventoryStore(path) as store:
        run(
            store,
            feed,
            host("198.18.0.5", "02:00:00:00:00:05"),
            details("198.18.0.5", [("machine-id", MID_A)], linux("a")),
        )
    with InventoryStore(path) as store:
        loaded = store.load()
        assert loaded.nodes[1].keys == [("machine-id", MID_A), ("mac", "02:00:00:00:00:05")]
        assert loaded.nodes[1].details["ssh"]["hostname"] == "a"
        assert loaded.address_index == {("lab", "198.18.0.5"): 1}
        feed.inventory = loaded
        _, applied = run(store, feed, host("198.18.0.7", "02:00:00:00:00:05"))
        assert [node.id for node in applied.nodes] == [1]
        view = store.node(1)
    assert view is not None
    assert view.history == [type(view.history[0])(2, Change(1, "addresses", ["198.18.0.5"], ["198.18.0.7"]))]
    assert [address for _, address, _, _ in view.addresses] == ["198.18.0.7", "198.18.0.5"]
    assert view.snapshots == [1, 2]


def test_importing_a_discovery_again_changes_nothing(inventory: InventoryStore) -> None:
    feed = Feed()
    discovery = feed.discovery()
    records = feed.records(discovery, [host("198.18.0.5", "02:00:00:00:00:05")])
    inventory.apply(discovery, records)
    before = _dump(inventory)
    applied = inventory.apply(discovery, records + records)  # with a fresh load, as `hub inventory import` does
    assert applied.changes == []
    assert _dump(inventory) == before
    assert len(inventory.snapshots()) == 1


def _dump(store: InventoryStore) -> list[object]:
    db = store._db
    tables = ("nodes", "node_keys", "node_addresses", "snapshots", "snapshot_nodes", "changes", "merges", "edges")
    return [sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in tables]


def test_a_merge_rewrites_the_merged_nodes_history_to_the_kept_one(inventory: InventoryStore) -> None:
    feed = Feed()
    run(inventory, feed, host("198.18.0.5", "02:00:00:00:00:05"))
    run(inventory, feed, details("198.18.1.7", [("machine-id", MID_A)], linux("a")))
    run(
        inventory,
        feed,
        details("198.18.0.5", [("machine-id", MID_A), ("mac", "02:00:00:00:00:05")], linux("a")),
    )
    assert [row.id for row in inventory.nodes()] == [1]
    assert inventory.node(2) is None
    assert inventory.merged_into(2) == 1
    assert inventory.merged_into(1) is None
    view = inventory.node(1)
    assert view is not None
    assert view.merged == [2]
    assert view.snapshots == [1, 2, 3]
    assert {address for _, address, _, _ in view.addresses} == {"198.18.0.5", "198.18.1.7"}
    assert inventory.node_keys() == {1: [("machine-id", MID_A), ("mac", "02:00:00:00:00:05")]}
    feed.inventory = inventory.load()
    _, applied = run(inventory, feed, host("198.18.0.8", "02:00:00:00:00:08"))
    assert [node.id for node in applied.nodes] == [3]  # the merged node's id is never given again


def test_merges_stay_flat_when_the_kept_node_is_merged_in_turn(inventory: InventoryStore) -> None:
    feed = Feed()
    run(inventory, feed, host("198.18.0.1", "02:00:00:00:00:01"))  # 1
    run(inventory, feed, details("198.18.0.2", [("machine-id", MID_A)]))  # 2
    run(inventory, feed, details("198.18.0.3", [("smbios-uuid", UUID_A)]))  # 3
    run(inventory, feed, details("198.18.0.2", [("machine-id", MID_A), ("smbios-uuid", UUID_A)]))  # 3 into 2
    run(inventory, feed, details("198.18.0.2", [("machine-id", MID_A), ("mac", "02:00:00:00:00:01")]))  # 2 into 1
    assert [row.id for row in inventory.nodes()] == [1]
    assert (inventory.merged_into(2), inventory.merged_into(3)) == (1, 1)


def test_diff_of_the_last_two_snapshots_of_a_network(inventory: InventoryStore) -> None:
    feed = Feed()
    seeds = ("198.18.0.0/24",)
    one, two, three = ("02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03")
    run(inventory, feed, host("198.18.0.1", one), host("198.18.0.2", two), seeds=seeds)
    run(inventory, feed, host("198.18.0.1", one), seeds=seeds)
    run(inventory, feed, host("198.18.9.9", "02:00:00:00:00:99"), seeds=("198.18.9.0/24",))  # another network
    run(inventory, feed, host("198.18.0.11", one), host("198.18.0.2", two), host("198.18.0.3", three), seeds=seeds)
    first, second = inventory.latest_pair()
    assert (first.id, second.id) == (2, 4)
    result = inventory.diff(first, second)
    assert result.new == [4]
    assert result.back == [2]
    assert result.gone == []
    assert result.changed == [Change(1, "addresses", ["198.18.0.1"], ["198.18.0.11"])]
    assert inventory.diff(inventory.snapshot(1), inventory.snapshot(2)).gone == [2]


def test_the_first_snapshot_has_nothing_to_compare(inventory: InventoryStore) -> None:
    with pytest.raises(HubError, match="no snapshot yet"):
        inventory.latest_pair()
    run(inventory, Feed(), host("198.18.0.1", "02:00:00:00:00:01"))
    with pytest.raises(HubError, match="nothing to compare"):
        inventory.latest_pair()


def test_nodes_since_a_snapshot_and_a_first_page(inventory: InventoryStore) -> None:
    feed = Feed()
    run(inventory, feed, host("198.18.0.1", "02:00:00:00:00:01"), host("198.18.0.2", "02:00:00:00:00:02"))
    run(inventory, feed, host("198.18.0.2", "02:00:00:00:00:02"))
    assert [row.id for row in inventory.nodes()] == [1, 2]
    assert [row.id for row in inventory.nodes(since=2)] == [2]
    assert [row.id for row in inventory.nodes(limit=1)] == [1]
    assert inventory.snapshot("op2").id == 2
    with pytest.raises(HubError, match="no snapshot 9"):
        inventory.snapshot(9)


def test_edges_are_kept_per_snapshot(inventory: InventoryStore) -> None:
    feed = Feed()
    source = {"host": "198.18.0.1", "protocol": "ssh", "table": "neighbors"}
    run(inventory, feed, host("198.18.0.5", "02:00:00:00:00:05", learned=[source]))
    assert inventory.edges(1) == [Edge("198.18.0.1", "198.18.0.5", "host", "ssh", "neighbors")]


def test_a_discovery_and_its_records_come_from_the_hubs_tables(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with Store(path) as hub:
        hub.add_slot("lab")
        op_id = hub.add_operation("lab", "networks.discover", {"seeds": ["198.18.0.0/24"]})
        other = hub.add_operation("lab", "system.info")
        hub.claim_pending(["lab"])
    with InventoryStore(path) as store:
        with pytest.raises(HubError, match="no successful result yet"):
            store.discovery(op_id)
        with pytest.raises(HubError, match=r"not a networks\.discover"):
            store.discovery(other)
        with pytest.raises(HubError, match="no operation nope"):
            store.discovery("nope")
        assert store.records(op_id) == []  # none arrived yet
    with Store(path) as hub:
        hub.add_result("lab", "agent-1", Result(id=op_id, seq=3, ok=True, data={"hosts": 1}))
    _records_table(path, op_id, [(1, "host", host("198.18.0.5", "02:00:00:00:00:05")[1])])
    with InventoryStore(path) as store:
        discovery = store.discovery(op_id)
        assert (discovery.slot, discovery.agent, discovery.network) == ("lab", "agent-1", "198.18.0.0/24")
        assert discovery.summary == {"hosts": 1}
        records = store.records(op_id)
        assert [(r.seq, r.kind, r.document["address"]) for r in records] == [(1, "host", "198.18.0.5")]
        applied = store.apply(discovery, records)
        assert list(applied.snapshot.members) == [1]


def _records_table(path: Path, op_id: str, rows: list[tuple[int, str, dict[str, object]]]) -> None:
    """Stores records of operation ``op_id`` from agent-1 on slot lab, as the hub does when they arrive."""
    records = [Record(id=op_id, seq=seq, record={"kind": kind, **document}) for seq, kind, document in rows]
    with Store(path) as hub:
        assert hub.add_records("lab", "agent-1", records) == (len(records), set())


def test_an_inventory_of_a_newer_hub_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    InventoryStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE inventory_schema SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(HubError, match="newer hub"):
        InventoryStore(path)


def test_the_core_can_be_kept_between_applies(inventory: InventoryStore) -> None:
    feed = Feed(Inventory())
    discovery = feed.discovery()
    inventory.apply(discovery, feed.records(discovery, [host("198.18.0.5", "02:00:00:00:00:05")]), feed.inventory)
    assert feed.inventory.nodes[1].fields.addresses == ("198.18.0.5",)
    assert inventory.load().nodes[1].fields == feed.inventory.nodes[1].fields


def test_reloading_between_discoveries_gives_what_the_core_kept_in_memory(tmp_path: Path) -> None:
    mac = "02:00:00:00:00:05"
    discoveries = [
        [host("198.18.0.5", mac), host("198.18.2.1")],
        [details("198.18.1.7", [("machine-id", MID_A)], linux("a")), host("198.18.2.1")],
        [details("198.18.0.5", [("machine-id", MID_A), ("mac", mac)], linux("a"))],  # 2 merges into 1
        [details("198.18.0.6", [("machine-id", MID_B), ("mac", mac)]), host("198.18.2.1")],  # the MAC moves
    ]
    dumps = []
    for reload in (False, True):
        feed = Feed()
        with InventoryStore(tmp_path / f"{reload}.db") as store:
            for documents in discoveries:
                if reload:
                    feed.inventory = store.load()
                discovery = feed.discovery()
                store.apply(discovery, feed.records(discovery, documents), feed.inventory)
            dumps.append(_dump(store))
            assert store.node_keys() == {1: [("machine-id", MID_A)], 4: [("machine-id", MID_B), ("mac", mac)]}
            assert [row.id for row in store.nodes()] == [1, 2, 4]  # 2: 198.18.2.1, known by its address alone
    assert dumps[0] == dumps[1]


def test_a_schema_is_created_upgraded_and_a_newer_one_refused_with_nothing_written(tmp_path: Path) -> None:
    widgets = Schema(
        "widgets",
        "CREATE TABLE IF NOT EXISTS widget_schema (version INTEGER NOT NULL); CREATE TABLE IF NOT EXISTS w (a)",
        2,
        "widget_schema",
    )
    upgrades: list[int] = []
    with Store(tmp_path / "hub.db") as store:
        store.create_tables(replace(widgets, version=1), lambda db, found: upgrades.append(found))
        assert upgrades == []  # a new file has nothing to upgrade
        store.create_tables(widgets, lambda db, found: upgrades.append(found))
        store.create_tables(widgets, lambda db, found: upgrades.append(found))
        assert upgrades == [1]
        assert [tuple(row) for row in store.connection.execute("SELECT version FROM widget_schema")] == [(2,)]
        older = replace(widgets, version=1, tables=widgets.tables + "; CREATE TABLE IF NOT EXISTS extra (b)")
        with pytest.raises(HubError, match=r"hub\.db: widgets made by a newer hub \(schema 2, this one knows 1\)"):
            store.create_tables(older)
        assert store.connection.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall() == []
