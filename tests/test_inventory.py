"""``ksocket.hub.inventory``: nodes matched by identity keys, merges, fields and their changes,
classification, snapshots, diffs and topology, all without a database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from ksocket.hub.inventory import (
    Applied,
    Change,
    Discovery,
    Edge,
    Fields,
    Inventory,
    Merge,
    ScanRecord,
    classify,
    diff,
    sightings,
)

MID_A = "0123456789abcdef0123456789abcdef"
MID_B = "fedcba9876543210fedcba9876543210"
UUID_A = "4c4c4544-0042-3510-8052-b4c04f4d4e31"


class Feed:
    """Discoveries of one slot, one after another, each with its records numbered like an agent would."""

    def __init__(self, inventory: Inventory | None = None) -> None:
        self.inventory = inventory or Inventory()
        self.count = 0
        self.seq = 0

    def discovery(self, *, slot: str = "lab", seeds: Sequence[str] = ()) -> Discovery:
        self.count += 1
        params = {"seeds": list(seeds)} if seeds else {}
        return Discovery(f"op{self.count}", slot, "agent-1", params, {"hosts": 0}, taken=1000.0 * self.count)

    def records(self, discovery: Discovery, documents: Sequence[tuple[str, dict[str, Any]]]) -> list[ScanRecord]:
        records = []
        for kind, document in documents:
            self.seq += 1
            records.append(
                ScanRecord(
                    discovery.operation_id, discovery.slot, discovery.agent, self.seq, discovery.taken, kind, document
                )
            )
        return records

    def run(self, *documents: tuple[str, dict[str, Any]], slot: str = "lab") -> Applied:
        discovery = self.discovery(slot=slot)
        return self.inventory.apply(discovery, self.records(discovery, documents))


def host(address: str, mac: str | None = None, ports: Sequence[int] = (), learned: Sequence[dict[str, str]] = ()):
    keys = [{"kind": "mac", "value": mac}] if mac else []
    document = {
        "address": address,
        "mac": mac,
        "evidence": ["arp", *(f"tcp/{port}" for port in ports)],
        "learnedFrom": list(learned),
        "identity": keys,
        "round": 1,
    }
    return ("host", document)


def details(address: str, keys: Sequence[tuple[str, str]], inspection: dict[str, Any] | None = None):
    identity = [{"kind": kind, "value": value} for kind, value in keys]
    return (
        "details",
        {"address": address, "identity": identity, "inspection": {"address": address, **(inspection or {})}},
    )


def linux(hostname: str, pretty: str = "Debian GNU/Linux 12 (bookworm)") -> dict[str, Any]:
    return {"ssh": {"hostname": hostname, "os": {"family": "debian", "pretty_name": pretty}, "machine_id": MID_A}}


def only_node(inventory: Inventory) -> int:
    (node_id,) = inventory.nodes
    return node_id


# --------------------------------------------------------------------------- matching


def test_a_host_seen_again_at_the_same_mac_is_the_same_node() -> None:
    feed = Feed()
    first = feed.run(host("198.18.0.5", "02:00:00:00:00:05"))
    second = feed.run(host("198.18.0.5", "02:00:00:00:00:05"))
    assert [node.id for node in first.nodes] == [node.id for node in second.nodes] == [1]
    assert feed.inventory.nodes[1].first_seen == 1000.0
    assert feed.inventory.nodes[1].last_seen == 2000.0


def test_an_address_change_keeps_the_node_and_is_a_change() -> None:
    feed = Feed()
    feed.run(host("198.18.0.5", "02:00:00:00:00:05"), details("198.18.0.5", [("machine-id", MID_A)], linux("a")))
    applied = feed.run(host("198.18.0.9", "02:00:00:00:00:05"))
    assert only_node(feed.inventory) == 1
    assert applied.changes == [Change(1, "addresses", ["198.18.0.5"], ["198.18.0.9"])]
    assert feed.inventory.nodes[1].fields.names == ("a",)  # no details this time: the names stay


def test_the_strongest_key_finds_the_node_when_the_mac_changed() -> None:
    feed = Feed()
    feed.run(host("198.18.0.5", "02:00:00:00:00:05"), details("198.18.0.5", [("machine-id", MID_A)], linux("a")))
    applied = feed.run(
        host("198.18.0.5", "02:00:00:00:00:99"),
        details("198.18.0.5", [("machine-id", MID_A), ("mac", "02:00:00:00:00:99")], linux("a")),
    )
    assert only_node(feed.inventory) == 1
    assert applied.changes == [Change(1, "macs", ["02:00:00:00:00:05"], ["02:00:00:00:00:99"])]
    assert ("mac", "02:00:00:00:00:99") in feed.inventory.nodes[1].keys


def test_a_mac_moving_to_another_machine_goes_with_the_stronger_key() -> None:
    feed = Feed()
    mac = "02:00:00:00:00:05"
    feed.run(host("198.18.0.5", mac), details("198.18.0.5", [("machine-id", MID_A), ("mac", mac)]))
    # the NIC (or a virtual MAC) is now in another machine, whose machine id says it is not the first
    applied = feed.run(host("198.18.0.6", mac), details("198.18.0.6", [("machine-id", MID_B), ("mac", mac)]))
    assert sorted(feed.inventory.nodes) == [1, 2]
    assert applied.merges == []
    assert feed.inventory.nodes[2].keys == [("machine-id", MID_B), ("mac", mac)]
    assert feed.inventory.nodes[1].keys == [("machine-id", MID_A)]
    assert feed.inventory.key_index[("mac", mac)] == 2


def test_two_nodes_proven_one_merge_into_the_older_and_the_merge_is_recorded() -> None:
    feed = Feed()
    feed.run(host("198.18.0.5", "02:00:00:00:00:05"))  # node 1: an ARP entry, a MAC alone
    feed.run(details("198.18.1.7", [("machine-id", MID_A)], linux("a")))  # node 2: routed, machine id alone
    applied = feed.run(
        host("198.18.0.5", "02:00:00:00:00:05"),
        details("198.18.0.5", [("machine-id", MID_A), ("mac", "02:00:00:00:00:05")], linux("a")),
    )
    assert applied.merges == [Merge(kept=1, merged=2, key=("mac", "02:00:00:00:00:05"))]
    assert applied.removed == [2]
    assert sorted(feed.inventory.nodes) == [1]
    node = feed.inventory.nodes[1]
    assert node.keys == [("machine-id", MID_A), ("mac", "02:00:00:00:00:05")]
    assert node.first_seen == 1000.0 and node.fields.names == ("a",)
    assert feed.inventory.key_index[("machine-id", MID_A)] == 1
    assert list(applied.snapshot.members) == [1]


def test_a_merge_late_in_a_discovery_gathers_the_sightings_made_before_it() -> None:
    feed = Feed()
    feed.run(host("198.18.0.5", "02:00:00:00:00:05"))  # node 1
    feed.run(details("198.18.1.7", [("machine-id", MID_A)]))  # node 2
    applied = feed.run(
        details("198.18.0.1", [("machine-id", MID_A)]),  # node 2 at first
        details("198.18.0.2", [("machine-id", MID_A), ("mac", "02:00:00:00:00:05")]),  # then node 2 is node 1
    )
    assert applied.merges == [Merge(kept=1, merged=2, key=("mac", "02:00:00:00:00:05"))]
    assert [node.id for node in applied.nodes] == [1]
    assert applied.snapshot.members[1].addresses == ("198.18.0.1", "198.18.0.2")


def test_a_mac_shared_with_a_stronger_key_of_another_kind_is_the_same_machine() -> None:
    feed = Feed()
    mac = "02:00:00:00:00:05"
    feed.run(details("198.18.0.5", [("snmp-engine-id", "80000002"), ("mac", mac)]))
    applied = feed.run(details("198.18.0.5", [("machine-id", MID_A), ("mac", mac)]))
    assert only_node(feed.inventory) == 1 and applied.merges == []
    assert feed.inventory.nodes[1].keys == [("machine-id", MID_A), ("snmp-engine-id", "80000002"), ("mac", mac)]


def test_two_addresses_of_one_machine_in_one_discovery_are_one_node() -> None:
    feed = Feed()
    applied = feed.run(
        details("198.18.0.5", [("smbios-uuid", UUID_A), ("mac", "02:00:00:00:00:05")]),
        details("198.18.1.5", [("smbios-uuid", UUID_A), ("mac", "02:00:00:00:01:05")]),
    )
    assert only_node(feed.inventory) == 1
    assert applied.snapshot.members[1].addresses == ("198.18.0.5", "198.18.1.5")


def test_a_host_without_keys_is_known_by_its_address_on_its_slot() -> None:
    feed = Feed()
    feed.run(host("198.18.2.1"))
    feed.run(host("198.18.2.1"))
    assert only_node(feed.inventory) == 1
    feed.run(host("198.18.2.1"), slot="other")  # another slot's network: another machine
    assert sorted(feed.inventory.nodes) == [1, 2]


def test_keys_are_compared_without_case() -> None:
    feed = Feed()
    feed.run(host("198.18.0.5", "02:AA:00:00:00:05"))
    feed.run(host("198.18.0.5", "02:aa:00:00:00:05"))
    assert only_node(feed.inventory) == 1


# --------------------------------------------------------------------------- idempotence


def test_applying_the_same_records_again_changes_nothing() -> None:
    feed = Feed()
    discovery = feed.discovery()
    records = feed.records(
        discovery,
        [host("198.18.0.5", "02:00:00:00:00:05"), details("198.18.0.5", [("machine-id", MID_A)], linux("a"))],
    )
    first = feed.inventory.apply(discovery, records)
    again = feed.inventory.apply(discovery, records + records[:1])  # a resumed agent re-sent a record
    assert again.changes == [] and again.merges == []
    assert again.snapshot == first.snapshot
    assert only_node(feed.inventory) == 1


def test_records_of_another_operation_are_not_taken() -> None:
    feed = Feed()
    discovery = feed.discovery()
    stray = ScanRecord("other-op", "lab", "agent-1", 9, 0.0, "host", host("198.18.0.9", "02:00:00:00:00:09")[1])
    applied = feed.inventory.apply(discovery, [stray])
    assert applied.snapshot.members == {} and feed.inventory.nodes == {}


# --------------------------------------------------------------------------- fields and classification


def test_fields_come_from_the_latest_details_of_each_protocol() -> None:
    feed = Feed()
    snmp = {"snmp": {"system": {"name": "sw1", "objectId": "1.3.6.1.4.1.9.1.1", "services": 2}}}
    applied = feed.run(
        host("198.18.0.5", "02:00:00:00:00:05", ports=[22, 80]), details("198.18.0.5", [], {**linux("a"), **snmp})
    )
    fields = applied.snapshot.members[1]
    assert fields == Fields(
        addresses=("198.18.0.5",),
        macs=("02:00:00:00:00:05",),
        names=("a", "sw1"),
        ports=(22, 80),
        os="Debian GNU/Linux 12 (bookworm)",
        os_family="debian",
        kind="host",
        vendor="Cisco",
    )
    assert set(feed.inventory.nodes[1].details) == {"ssh", "snmp"}


def test_a_protocol_that_failed_leaves_its_latest_details() -> None:
    feed = Feed()
    feed.run(details("198.18.0.5", [("machine-id", MID_A)], linux("a")))
    applied = feed.run(details("198.18.0.5", [("machine-id", MID_A)], {"ssh": {"error": {"code": "timeout"}}}))
    assert applied.changes == []
    assert feed.inventory.nodes[1].details["ssh"]["hostname"] == "a"


def test_an_os_upgrade_is_a_change_old_to_new() -> None:
    feed = Feed()
    feed.run(details("198.18.0.5", [("machine-id", MID_A)], linux("a", "Debian 11")))
    applied = feed.run(details("198.18.0.5", [("machine-id", MID_A)], linux("a", "Debian 12")))
    assert applied.changes == [Change(1, "os", "Debian 11", "Debian 12")]


@pytest.mark.parametrize(
    ("details_", "ports", "kind", "vendor"),
    [
        ({"ssh": {"os": {"family": "rhel"}}}, (), "host", ""),
        ({"winrm": {"os": {"name": "Windows Server 2022"}}}, (), "host", ""),
        ({"snmp": {"system": {"objectId": "1.3.6.1.4.1.9.1.2", "services": 6}}}, (), "router", "Cisco"),
        ({"snmp": {"system": {"objectId": ".1.3.6.1.4.1.30065.1", "services": 2}}}, (), "switch", "Arista"),
        ({"snmp": {"system": {"objectId": "1.3.6.1.4.1.12356.101", "services": 78}}}, (), "firewall", "Fortinet"),
        ({"snmp": {"system": {"objectId": "1.3.6.1.4.1.2636.1", "services": None}}}, (), "router", "Juniper"),
        ({"snmp": {"system": {"objectId": "1.3.6.1.4.1.8072.3", "services": 72}}}, (), "host", "Net-SNMP"),
        ({"snmp": {"system": {"objectId": "1.3.6.1.4.1.99999", "services": 0}}}, (9100,), "printer", ""),
        ({}, (22,), "host", ""),
        ({}, (3389,), "host", ""),
        ({}, (), "unknown", ""),
    ],
)
def test_classify(details_: dict[str, Any], ports: tuple[int, ...], kind: str, vendor: str) -> None:
    classified = classify(details_, ports)
    assert (classified.kind, classified.vendor) == (kind, vendor)


def test_the_os_family_of_a_windows_host_is_windows() -> None:
    assert classify({"winrm": {"os": {"name": "Windows 11"}}}).os_family == "windows"


def test_sightings_join_a_host_and_its_details_and_order_keys_strongest_first() -> None:
    feed = Feed()
    discovery = feed.discovery()
    records = feed.records(
        discovery,
        [
            host("198.18.0.5", "02:00:00:00:00:05", ports=[443]),
            details("198.18.0.5", [("snmp-engine-id", "8000000201"), ("machine-id", MID_A.upper())]),
            ("network", {"network": "198.18.4.0/24", "learnedFrom": []}),
        ],
    )
    (sighting,) = sightings(records)
    assert sighting.keys == [("machine-id", MID_A), ("snmp-engine-id", "8000000201"), ("mac", "02:00:00:00:00:05")]
    assert sighting.ports == {443}


# --------------------------------------------------------------------------- topology


def test_edges_from_learned_from_and_lldp() -> None:
    feed = Feed()
    source = {"host": "198.18.0.1", "protocol": "snmp", "table": "arp"}
    lldp = {"snmp": {"lldpNeighbors": [{"localPortId": "Gi0/1", "systemName": "core-sw", "chassisId": "x"}]}}
    applied = feed.run(
        host("198.18.0.5", "02:00:00:00:00:05", learned=[source, {"source": "connected"}]),
        ("network", {"network": "198.18.4.0/24", "learnedFrom": [{**source, "table": "routes"}]}),
        details("198.18.0.1", [], lldp),
    )
    assert applied.snapshot.edges == [
        Edge("198.18.0.1", "198.18.0.5", "host", "snmp", "arp"),
        Edge("198.18.0.1", "198.18.4.0/24", "network", "snmp", "routes"),
        Edge("198.18.0.1", "core-sw", "lldp", "snmp", "Gi0/1"),
    ]


# --------------------------------------------------------------------------- diff


def test_diff_new_gone_back_and_changed() -> None:
    a = {1: Fields(addresses=("198.18.0.1",)), 2: Fields(addresses=("198.18.0.2",), os="Debian 11")}
    b = {2: Fields(addresses=("198.18.0.2",), os="Debian 12"), 3: Fields(), 4: Fields()}
    result = diff(a, b, seen_before={1, 2, 4})
    assert result.new == [3]
    assert result.gone == [1]
    assert result.back == [4]
    assert result.changed == [Change(2, "os", "Debian 11", "Debian 12")]
    assert result.fields == {1: a[1], 3: b[3], 4: b[4]}


def test_a_snapshot_diffed_with_itself_is_empty() -> None:
    a = {1: Fields(addresses=("198.18.0.1",))}
    result = diff(a, a, seen_before={1})
    assert (result.new, result.gone, result.back, result.changed) == ([], [], [], [])


def test_fields_round_trip_through_their_document() -> None:
    fields = Fields(addresses=("198.18.0.1",), ports=(22,), os="x", kind="router", vendor="Cisco")
    assert Fields.from_document(fields.as_document()) == fields


def test_the_network_of_a_discovery_is_its_seeds_or_connected() -> None:
    assert Discovery("o", "s", "a", {"seeds": ["198.18.1.0/24", "198.18.0.0/24"]}, {}, 0).network == (
        "198.18.0.0/24,198.18.1.0/24"
    )
    assert Discovery("o", "s", "a", {}, {}, 0).network == "connected"
