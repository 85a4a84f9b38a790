"""``ksocket hub inventory import | nodes | node | snapshots | diff | export``, in-process on a database."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jsonschema
import pytest

from ksocket import cli
from ksocket.hub.inventorystore import InventoryStore
from ksocket.hub.store import Store
from ksocket.protocol import Result
from tests.test_inventory import MID_A, Feed, details, host, linux
from tests.test_inventory_store import _records_table


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Two discoveries of the lab: node 1 changed address, node 2 went, node 3 is new."""
    path = tmp_path / "hub.db"
    feed = Feed()
    with InventoryStore(path) as store:
        for documents in (
            [
                host("198.18.0.5", "02:00:00:00:00:05", ports=[22]),
                details("198.18.0.5", [("machine-id", MID_A)], linux("alpha")),
                host("198.18.0.6", "02:00:00:00:00:06"),
            ],
            [host("198.18.0.9", "02:00:00:00:00:05", ports=[22]), host("198.18.0.7", "02:00:00:00:00:07")],
        ):
            discovery = feed.discovery()
            store.apply(discovery, feed.records(discovery, documents))
    return path


def hub(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> tuple[int, str]:
    status = cli.main(["hub", *args, "--db", str(db)])
    out, err = capsys.readouterr()
    return status, out + err


def test_nodes_is_a_table(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    status, out = hub(capsys, db, "nodes")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "VENDOR", "OS", "ADDRESSES", "MACS", "NAMES", "LAST", "SEEN"]
    assert lines[1].split()[:2] == ["1", "host"]
    assert "198.18.0.9" in lines[1] and "alpha" in lines[1] and "Debian GNU/Linux 12 (bookworm)" in lines[1]
    assert len(lines) == 4


def test_nodes_since_a_snapshot_as_json(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    status, out = hub(capsys, db, "nodes", "--json", "--since", "op2")
    assert status == 0
    documents = [json.loads(line) for line in out.splitlines()]
    assert [document["id"] for document in documents] == [1, 3]
    assert documents[0]["keys"] == [
        {"kind": "machine-id", "value": MID_A},
        {"kind": "mac", "value": "02:00:00:00:00:05"},
    ]
    assert documents[0]["lastSeen"] == "1970-01-01T00:33:20Z"
    assert hub(capsys, db, "nodes", "--since", "9")[0] == 1


def test_node_shows_its_history(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    status, out = hub(capsys, db, "node", "1")
    assert status == 0
    assert "addresses  198.18.0.9" in out
    assert "2         addresses  198.18.0.5  198.18.0.9" in out
    status, out = hub(capsys, db, "node", "1", "--json")
    document = json.loads(out)
    assert document["history"] == [{"snapshot": 2, "field": "addresses", "old": ["198.18.0.5"], "new": ["198.18.0.9"]}]
    assert document["details"]["ssh"]["hostname"] == "alpha"
    status, out = hub(capsys, db, "node", "42")
    assert status == 1 and "no node 42" in out


def test_a_merged_node_names_the_node_it_became(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    feed = Feed()
    with InventoryStore(path) as store:
        for documents in (
            [host("198.18.0.5", "02:00:00:00:00:05")],
            [details("198.18.1.7", [("machine-id", MID_A)])],
            [details("198.18.0.5", [("machine-id", MID_A), ("mac", "02:00:00:00:00:05")])],
        ):
            discovery = feed.discovery()
            store.apply(discovery, feed.records(discovery, documents))
    status, out = hub(capsys, path, "node", "2")
    assert status == 1 and "node 2 was merged into node 1" in out
    document = json.loads(hub(capsys, path, "node", "1", "--json")[1])
    assert document["merged"] == [2]


def test_snapshots_and_the_default_diff(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    status, out = hub(capsys, db, "snapshots")
    assert status == 0
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["1", "op1"], ["2", "op2"]]
    status, out = hub(capsys, db, "diff", "--json")
    assert status == 0
    assert json.loads(out) == {
        "from": 1,
        "to": 2,
        "new": [3],
        "gone": [2],
        "back": [],
        "changed": [{"node": 1, "field": "addresses", "old": ["198.18.0.5"], "new": ["198.18.0.9"]}],
    }
    status, out = hub(capsys, db, "diff", "2", "1")
    assert status == 0
    assert out.splitlines()[0].startswith("snapshot 2 ")
    assert ["gone", "3", "addresses", "198.18.0.7", "-"] in [line.split() for line in out.splitlines()]
    assert ["new", "2", "addresses", "-", "198.18.0.6"] in [line.split() for line in out.splitlines()]
    assert hub(capsys, db, "diff", "1")[0] == 1


def test_export_json_and_csv(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    status, out = hub(capsys, db, "export", "--format", "json")
    assert status == 0
    document = json.loads(out)
    assert document["schema"] == "ksocket.inventory/1"
    assert [node["id"] for node in document["nodes"]] == [1, 2, 3]
    assert document["nodes"][0]["ports"] == [22]
    status, out = hub(capsys, db, "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["id"] for row in rows] == ["1", "2", "3"]
    assert rows[0]["keys"] == f"machine-id={MID_A} mac=02:00:00:00:00:05"
    assert rows[0]["names"] == "alpha"


def test_export_follows_the_documented_schema(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    schema = json.loads((Path(__file__).parent.parent / "docs" / "inventory.schema.json").read_text())
    status, out = hub(capsys, db, "export")
    assert status == 0
    jsonschema.validate(json.loads(out), schema)
    document = json.loads(out)
    document["nodes"][0]["kind"] = "toaster"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def test_inventory_import_builds_a_snapshot_from_stored_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    with Store(path) as store:
        store.add_slot("lab")
        op_id = store.add_operation("lab", "networks.discover", {})
        store.claim_pending(["lab"])
    status, out = hub(capsys, path, "inventory", "import", op_id)
    assert status == 1 and "no successful result yet" in out
    with Store(path) as store:
        store.add_result("lab", "agent-1", Result(id=op_id, seq=3, ok=True, data={"hosts": 1}))
    status, out = hub(capsys, path, "inventory", "import", op_id)
    assert status == 1 and "no records stored" in out
    _records_table(path, op_id, [(1, "host", host("198.18.0.5", "02:00:00:00:00:05")[1])])
    status, out = hub(capsys, path, "inventory", "import", op_id)
    assert status == 0
    assert out == "snapshot 1 (lab connected): 1 nodes, 0 changes, 0 merges, 0 edges\n"
    assert hub(capsys, path, "inventory", "import", op_id)[1] == out  # again: the same snapshot, nothing new
