"""The running hub keeps its inventory and its schedules: a discovery's result is imported as it is stored
(once, whatever an agent re-sends), a failing import loses nothing, and a due schedule fires once across a
restart. A real hub on a real socket, a scripted agent."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ksocket import cli
from ksocket.hub.inventorystore import InventoryStore
from ksocket.hub.store import Store
from ksocket.protocol import Ack, HeartbeatAck, Operation, Record, Result
from tests.hubtools import QUIET, RawClient, RecordingHub, add_slot, authenticated, run
from tests.test_inventory import MID_A, details, host, linux

pytestmark = [pytest.mark.peer, pytest.mark.timeout(60)]

DISCOVERED = [
    host("198.18.0.5", "02:00:00:00:00:05", ports=[22]),
    details("198.18.0.5", [("machine-id", MID_A)], linux("alpha")),
    host("198.18.0.6", "02:00:00:00:00:06", learned=[{"host": "198.18.0.5", "protocol": "ssh", "table": "arp"}]),
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "hub.db"


async def report(client: RawClient, op_id: str, first_seq: int = 1) -> None:
    """What an agent sends for a discovery: its records, then its result; each acked."""
    seq = first_seq
    for kind, document in DISCOVERED:
        await client.send(Record(id=op_id, seq=seq, record={"kind": kind, **document}))
        assert await client.expect(Ack) == Ack(seq=seq)
        seq += 1
    await client.send(Result.success(id=op_id, seq=seq, data={"hosts": 2}))
    assert await client.expect(Ack) == Ack(seq=seq)


async def settled(hub: RecordingHub) -> None:
    """Waits for every job of the database thread so far (the import runs as the job after the result's)."""
    await hub.db.call(Store.slots)


def dump(db: Path) -> dict[str, list[Any]]:
    with sqlite3.connect(db) as connection:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("snapshots", "snapshot_nodes", "nodes", "node_keys", "changes", "merges", "edges")
        }


def test_a_discovery_is_imported_when_its_result_is_stored_and_a_resume_changes_nothing(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = add_slot(db)
    caplog.set_level(logging.INFO, "ksocket.hub")

    async def main() -> None:
        async with RecordingHub(db) as hub:
            op_id = await hub.submit("s1", "networks.discover", {"seeds": ["198.18.0.0/29"]})
            client, session = await authenticated(hub.url, token, agent="a-1")
            await client.expect(Operation)
            await report(client, op_id)
            await settled(hub)
            first = dump(db)
            assert [row[1] for row in first["snapshots"]] == [op_id]
            assert len(first["nodes"]) == 2
            assert ("198.18.0.5", "198.18.0.6", "host", "ssh", "arp") in [row[1:] for row in first["edges"]]

            await client.close()  # the agent resumes and sends its journal again: records and result
            client, again = await authenticated(hub.url, token, agent="a-1", session=session)
            assert again == session
            await report(client, op_id)
            await settled(hub)
            assert dump(db) == first
            await client.close()
        return op_id

    op_id = run(main())
    imported = [r.getMessage() for r in caplog.records if "imported into the inventory" in r.getMessage()]
    assert imported == [f"hub: operation {op_id} imported into the inventory as snapshot 1"]
    with InventoryStore(db) as inventory:  # the manual import stays, for a re-import: the same snapshot
        snapshot = inventory.snapshot(op_id)
        assert snapshot.nodes == 2 and snapshot.network == "198.18.0.0/29"


def test_a_failing_import_is_one_line_and_loses_neither_the_result_nor_the_link(
    db: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = add_slot(db)

    def broken(store: Store, operation_id: str) -> int:
        raise sqlite3.OperationalError("disk I/O error\nsecond line")

    monkeypatch.setattr("ksocket.hub.storethread.import_result", broken)

    async def main() -> str:
        async with RecordingHub(db) as hub:
            op_id = await hub.submit("s1", "networks.discover")
            client, _ = await authenticated(hub.url, token)
            await client.expect(Operation)
            await report(client, op_id)
            await settled(hub)
            assert [r.id for r in hub.results("s1")] == [op_id]
            await client.heartbeat(1)
            assert await client.expect(HeartbeatAck) == HeartbeatAck(n=1)
            await client.close()
            return op_id

    op_id = run(main())
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == [
        f"hub: inventory import of operation {op_id} failed: OperationalError: disk I/O error second line"
    ]
    assert cli.main(["hub", "inventory", "import", op_id, "--db", str(db)]) == 0  # taken again by hand


def test_another_operations_result_or_a_failed_discovery_is_not_imported(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = add_slot(db)

    async def main() -> None:
        async with RecordingHub(db) as hub:
            info = await hub.submit("s1", "system.info")
            discover = await hub.submit("s1", "networks.discover")
            client, _ = await authenticated(hub.url, token)
            await client.expect(Operation)
            await client.expect(Operation)
            await client.send(Result.success(id=info, seq=1, data={}))
            await client.expect(Ack)
            kind, document = DISCOVERED[0]
            await client.send(Record(id=discover, seq=2, record={"kind": kind, **document}))
            await client.expect(Ack)
            await client.send(Result.failure(id=discover, seq=3, code="internal", message="the sweep failed"))
            await client.expect(Ack)
            await settled(hub)
            await client.close()

    run(main())
    with InventoryStore(db) as inventory:
        assert inventory.snapshots() == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_due_schedule_fires_once_across_a_restart_of_the_hub(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = add_slot(db)
    assert cli.main(["hub", "discover", "s1", "--seed", "198.18.0.0/29", "--every", "1h", "--db", str(db)]) == 0
    assert capsys.readouterr().out.startswith("schedule 1: networks.discover on s1 every 1h, first at ")

    async def first_run() -> str:
        async with RecordingHub(db) as hub:
            client, _ = await authenticated(hub.url, token)
            operation = await client.expect(Operation)
            assert operation.name == "networks.discover" and operation.params == {"seeds": ["198.18.0.0/29"]}
            await report(client, operation.id)
            await client.nothing(QUIET)  # done, but not due again for an hour
            await client.close()
            return operation.id

    first = run(first_run())
    with sqlite3.connect(db) as connection:  # the hub is down for ten periods
        connection.execute("UPDATE schedules SET next_due = next_due - 36000")

    async def after_restart() -> str:
        async with RecordingHub(db) as hub:
            client, _ = await authenticated(hub.url, token)
            operation = await client.expect(Operation)
            await client.nothing(QUIET)  # once, not once per missed period
            await client.close()
            return operation.id

    second = run(after_restart())
    assert second != first
    assert cli.main(["hub", "schedules", "--db", str(db)]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].split() == ["ID", "SLOT", "EVERY", "NEXT", "DUE", "LAST", "OPERATION", "PARAMS"]
    assert second in listing and "1h" in listing
    with Store(db) as store:
        assert [op.id for op in store.operations("s1")] == [first, second]
