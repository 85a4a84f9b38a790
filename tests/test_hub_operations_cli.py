"""``ksocket hub discover | schedules | unschedule | topology | export --format netbox``, in-process on a
database (no server)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ksocket.hub.netbox import CUSTOM_FIELD, FILES
from ksocket.hub.store import Store
from tests.test_inventory_cli import db, hub  # noqa: F401  (db: a fixture)

# The fields of NetBox's bulk import forms, release 4.6.8 (netbox-community/netbox 43fe81f9):
# netbox/dcim/forms/bulk_import.py DeviceImportForm, InterfaceImportForm, MACAddressImportForm and
# netbox/ipam/forms/bulk_import.py IPAddressImportForm (Meta.fields); "id" and "cf_NAME" are taken by every form.
NETBOX_FIELDS = {
    "devices.csv": {
        *("name", "role", "tenant", "manufacturer", "device_type", "platform", "serial", "asset_tag", "status"),
        *("site", "location", "rack", "position", "face", "latitude", "longitude", "parent", "device_bay"),
        *("airflow", "virtual_chassis", "vc_position", "vc_priority", "cluster", "description", "config_template"),
        *("owner", "comments", "tags"),
    },
    "interfaces.csv": {
        *("device", "name", "label", "parent", "bridge", "lag", "type", "speed", "duplex", "enabled"),
        *("mark_connected", "wwn", "vdcs", "mtu", "mgmt_only", "description", "poe_mode", "poe_type", "mode"),
        *("vlan_group", "untagged_vlan", "tagged_vlans", "qinq_svlan", "vrf", "rf_role", "rf_channel"),
        *("rf_channel_frequency", "rf_channel_width", "tx_power", "owner", "tags"),
    },
    "mac-addresses.csv": {
        *("mac_address", "device", "virtual_machine", "interface", "is_primary", "description", "owner"),
        *("comments", "tags"),
    },
    "ip-addresses.csv": {
        *("address", "vrf", "tenant", "status", "role", "device", "virtual_machine", "interface", "fhrp_group"),
        *("is_primary", "is_oob", "dns_name", "description", "owner", "comments", "tags"),
    },
}
NETBOX_REQUIRED = {
    "devices.csv": {"role", "manufacturer", "device_type", "status", "site"},
    "interfaces.csv": {"device", "name", "type"},
    "mac-addresses.csv": {"mac_address"},
    "ip-addresses.csv": {"address", "status"},
}


def read(folder: Path, name: str) -> tuple[list[str], list[dict[str, str]]]:
    with (folder / name).open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def test_netbox_export_writes_the_columns_netbox_imports_and_every_reference_holds(
    capsys: pytest.CaptureFixture[str],
    db: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "netbox"
    status, printed = hub(capsys, db, "export", "--format", "netbox", "--out", str(out), "--site", "Office")
    assert status == 0
    assert printed.split() == [str(out / name) for name in FILES]
    files = {name: read(out, name) for name in FILES}
    for name, (header, _) in files.items():
        assert set(header) - {CUSTOM_FIELD} <= NETBOX_FIELDS[name], name
        assert NETBOX_REQUIRED[name] <= set(header), name

    devices = files["devices.csv"][1]
    assert [(d["name"], d["role"], d["site"], d[CUSTOM_FIELD]) for d in devices] == [
        ("alpha", "host", "Office", "1"),
        ("198.18.0.6", "unknown", "Office", "2"),  # gone from the last snapshot, still in the inventory
        ("198.18.0.7", "unknown", "Office", "3"),
    ]
    names = {d["name"] for d in devices}
    interfaces = {(i["device"], i["name"]) for i in files["interfaces.csv"][1]}
    assert {device for device, _ in interfaces} == names
    addresses = files["ip-addresses.csv"][1]
    assert [(a["address"], a["device"], a["is_primary"]) for a in addresses] == [
        ("198.18.0.9/32", "alpha", "true"),
        ("198.18.0.6/32", "198.18.0.6", "true"),
        ("198.18.0.7/32", "198.18.0.7", "true"),
    ]
    macs = files["mac-addresses.csv"][1]
    for row in [*addresses, *macs]:
        assert (row["device"], row["interface"]) in interfaces
    assert [m["mac_address"] for m in macs] == ["02:00:00:00:00:05", "02:00:00:00:00:06", "02:00:00:00:00:07"]

    assert hub(capsys, db, "export", "--format", "netbox") == (
        1,
        "ksocket: error: --format netbox writes files: give --out DIR\n",
    )


def test_netbox_device_names_are_unique_without_case() -> None:
    from ksocket.hub.inventory import Fields
    from ksocket.hub.inventorystore import NodeRow
    from ksocket.hub.netbox import Options, device_names, tables

    nodes = [
        NodeRow(1, 0.0, 0.0, Fields(names=("Core",), addresses=("198.18.0.1", "2001:db8::1"))),
        NodeRow(2, 0.0, 0.0, Fields(names=("core",))),
        NodeRow(3, 0.0, 0.0, Fields()),
    ]
    assert device_names(nodes) == {1: "Core-1", 2: "core-2", 3: "node-3"}
    files = tables(nodes, {1: [("chassis-serial", "FOC123")]}, Options(role="discovered-{kind}"))
    assert files["devices.csv"][0][:2] == ("Core-1", "discovered-unknown")
    assert files["devices.csv"][0][6] == "FOC123"  # the serial column
    assert [row[0] for row in files["ip-addresses.csv"]] == ["198.18.0.1/32", "2001:db8::1/128"]
    assert [row[4] for row in files["ip-addresses.csv"]] == ["true", "true"]  # the primary of each family


def test_topology_of_a_snapshot_as_a_table_and_as_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from ksocket.hub.inventorystore import InventoryStore
    from tests.test_inventory import Feed, host

    path = tmp_path / "hub.db"
    feed = Feed()
    lldp = {"snmp": {"lldpNeighbors": [{"systemName": "sw-2", "localPortId": "ge-0/0/1"}]}}
    with InventoryStore(path) as store:
        discovery = feed.discovery()
        documents = [
            host("198.18.0.1", "02:00:00:00:00:01"),
            ("details", {"address": "198.18.0.1", "identity": [], "inspection": {"address": "198.18.0.1", **lldp}}),
            host("198.18.1.7", learned=[{"host": "198.18.0.1", "protocol": "snmp", "table": "ipNetToMedia"}]),
        ]
        store.apply(discovery, feed.records(discovery, documents))
    status, out = hub(capsys, path, "topology")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "snapshot 1 (lab connected, 1970-01-01T00:16:40Z)"
    assert lines[1].split() == ["SOURCE", "REVEALED", "KIND", "PROTOCOL", "TABLE"]
    assert lines[2].split() == [
        "198.18.0.1",
        "(node",
        "1)",
        "198.18.1.7",
        "(node",
        "2)",
        "host",
        "snmp",
        "ipNetToMedia",
    ]
    assert lines[3].split() == ["198.18.0.1", "(node", "1)", "sw-2", "lldp", "snmp", "ge-0/0/1"]

    status, out = hub(capsys, path, "topology", "op1", "--json")
    document = json.loads(out)
    assert document["snapshot"] == 1 and document["operation"] == "op1" and document["taken"] == "1970-01-01T00:16:40Z"
    assert [node["id"] for node in document["nodes"]] == [1, 2]
    assert document["edges"][1] == {
        "source": "198.18.0.1",
        "sourceNode": 1,
        "target": "sw-2",
        "targetNode": None,
        "kind": "lldp",
        "protocol": "snmp",
        "table": "ge-0/0/1",
    }
    assert hub(capsys, path, "topology", "9") == (1, "ksocket: error: no snapshot 9\n")


def test_discover_queues_a_checked_discovery_now(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with Store(path) as store:
        store.add_slot("lab")
    status, out = hub(
        capsys, path, "discover", "lab", "--seed", "198.18.0.0/29", "--deny", "198.18.0.1", "--expand-limit", "256",
        "--no-details",
    )  # fmt: skip
    assert status == 0
    with Store(path) as store:
        (operation,) = store.operations("lab")
    assert operation.id == out.strip() and operation.name == "networks.discover" and operation.state == "pending"
    assert operation.params == {
        "seeds": ["198.18.0.0/29"],
        "deny": ["198.18.0.1"],
        "expandLimit": 256,
        "details": False,
    }

    status, out = hub(capsys, path, "discover", "lab", "--seed", "not-an-address")
    assert status == 1 and out.startswith("ksocket: error: invalid discovery: seeds: ")
    status, out = hub(capsys, path, "discover", "lab", "--expand-limit", "99999999")
    assert status == 1 and "expandLimit" in out
    status, out = hub(capsys, path, "discover", "nowhere")
    assert status == 1 and "no slot named 'nowhere'" in out


def test_schedules_are_added_listed_and_removed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    assert hub(capsys, path, "schedules")[0] == 0  # none yet, and no table needed to say so
    with Store(path) as store:
        store.add_slot("lab")
    with pytest.raises(SystemExit) as exited:
        hub(capsys, path, "discover", "lab", "--every", "30s")
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.endswith(
        "argument --every: expected a duration like 30m, 6h or 1d (minutes, hours, days; at least 1m), got '30s'"
    )
    assert (
        hub(capsys, path, "discover", "nowhere", "--every", "6h")[1]
        == "ksocket: error: no slot named 'nowhere' (ksocket hub token list shows them)\n"
    )
    status, out = hub(capsys, path, "discover", "lab", "--every", "6h")
    assert status == 0 and out.startswith("schedule 1: networks.discover on lab every 6h")
    status, out = hub(capsys, path, "schedules")
    header, row = out.splitlines()
    assert header.split() == ["ID", "SLOT", "EVERY", "NEXT", "DUE", "LAST", "OPERATION", "PARAMS"]
    assert row.split()[:3] == ["1", "lab", "6h"] and row.split()[4:] == ["-", "{}"]
    assert hub(capsys, path, "unschedule", "1") == (0, "")
    assert hub(capsys, path, "unschedule", "1") == (1, "ksocket: error: no schedule 1\n")
    with Store(path) as store:
        assert store.operations("lab") == []  # a schedule queues nothing by itself: the hub's poller does
