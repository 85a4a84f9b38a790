"""A host's record and its updates: what is learnt about a host after its sweep goes out under its key, at
most once per round, and survives the state's trips through JSON and Redis (two learns of one round
interleaved in the pipeline's optimistic transaction)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ksocket.collectors.discover.loop import Discovery, Origin, Record
from ksocket.collectors.discover.params import parse_params
from tasks.broker import EmbeddedRedis
from tasks.discover import LoopStore

GATEWAY, OTHER = "198.18.0.6", "198.18.0.5"
OTHER_MAC = "02:00:00:00:00:05"
MACHINE_ID = "0123456789abcdef0123456789abcdef"


def gateway_tables() -> dict[str, Any]:
    """The gateway logs in: its machine-id, its own address, and OTHER in its neighbour table."""
    return {
        "address": GATEWAY,
        "ssh": {
            "machine_id": MACHINE_ID,
            "neighbors": [{"address": OTHER, "mac": OTHER_MAC, "state": "STALE"}],
            "interfaces": [{"mac": "02:00:00:00:00:06", "addresses": [{"address": GATEWAY, "prefixlen": 29}]}],
        },
    }


def other_tables() -> dict[str, Any]:
    """OTHER's routes name the gateway as its next hop."""
    return {"address": OTHER, "ssh": {"routes": [{"destination": "default", "gateway": GATEWAY}]}}


SOURCE_OF_OTHER = {"host": GATEWAY, "protocol": "ssh", "table": "neighbors"}
SOURCE_OF_GATEWAY = {"host": OTHER, "protocol": "ssh", "table": "routes"}
NETWORK = {"network": "198.18.0.0/29"}  # the gateway's interface network, expanded: it names both
GATEWAY_SOURCES = [{"source": "gateway"}, NETWORK, SOURCE_OF_GATEWAY]
OTHER_SOURCES = [{"source": "seed"}, SOURCE_OF_OTHER, NETWORK]


def same(sources: list[dict[str, str]], expected: list[dict[str, str]]) -> bool:
    return sorted(map(json.dumps, sources)) == sorted(map(json.dumps, expected))


def swept_round() -> Discovery:
    """Round 0 swept: both hosts answered (no MAC: routed probes), both wait to be learnt from."""
    state = Discovery.start(parse_params({"details": False}), ["198.18.0.1"], [Origin(GATEWAY, "gateway")], [])
    state.pending[OTHER] = {"mac": None, "learnedFrom": [{"source": "seed"}]}
    sweep = state.next_sweep()
    assert sweep is not None
    found = [{"address": address, "mac": None, "evidence": ["icmp"]} for address in (GATEWAY, OTHER)]
    records = state.swept(sweep, found)
    assert sorted((r.key, r.version) for r in records) == [(f"host:{OTHER}", 1), (f"host:{GATEWAY}", 1)]
    assert sorted(state.waiting()) == [OTHER, GATEWAY]
    return state


def hosts(records: list[Record]) -> dict[str, Record]:
    return {record.document["address"]: record for record in records if record.kind == "host"}


def test_what_the_round_learnt_about_its_hosts_goes_out_once_when_the_round_closes() -> None:
    state = swept_round()
    assert hosts(state.learned(0, GATEWAY, gateway_tables())) == {}  # the round is still open
    updates = hosts(state.learned(0, OTHER, other_tables()))
    assert sorted(updates) == [OTHER, GATEWAY]  # one each, though the gateway changed twice
    gateway, other = updates[GATEWAY], updates[OTHER]
    assert (gateway.key, gateway.version, gateway.journal_key) == (f"host:{GATEWAY}", 2, f"host:{GATEWAY}#2")
    assert gateway.document["version"] == 2 and gateway.document["evidence"] == ["icmp"]
    # the identity keys of its login (details are off: no details record, the keys are on the host)
    # and its own interfaces table's MAC (a host's own table gives no source, but its MAC is its own)
    gateway_mac = {"kind": "mac", "value": "02:00:00:00:00:06"}
    assert gateway.document["identity"] == [{"kind": "machine-id", "value": MACHINE_ID}, gateway_mac]
    # every source, those read after its sweep too; its own interfaces table is not one
    assert same(gateway.document["learnedFrom"], GATEWAY_SOURCES)
    assert same(other.document["learnedFrom"], OTHER_SOURCES)
    assert other.document["mac"] == OTHER_MAC
    assert other.document["identity"] == [{"kind": "mac", "value": OTHER_MAC}]
    assert state.round == 1 and state.changed == set()  # the /29's other addresses are round 1's


def test_a_host_nothing_new_was_learnt_about_gets_no_update() -> None:
    state = swept_round()
    state.learned(0, GATEWAY, {"address": GATEWAY, "ssh": {"error": {"code": "auth-failed", "message": "no"}}})
    assert hosts(state.learned(0, OTHER, {"address": OTHER})) == {}


def test_an_update_waits_in_the_state_between_two_learns() -> None:
    state = swept_round()
    state.learned(0, GATEWAY, gateway_tables())
    again = Discovery.from_json(state.to_json())
    assert again == state and again.changed == {GATEWAY, OTHER}
    assert sorted(hosts(again.learned(0, OTHER, other_tables()))) == [OTHER, GATEWAY]


def test_a_state_stored_before_updates_existed_is_read() -> None:
    text = swept_round().to_json().replace(',"changed":[]', "")
    assert '"changed"' not in text and Discovery.from_json(text).changed == set()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LoopStore]:
    server = EmbeddedRedis(tmp_path / "broker.db", appendfsync="no")
    client = server.start()
    try:
        yield LoopStore(client, "test")
    finally:
        server.stop()


@pytest.mark.redis
def test_two_learns_of_one_round_interleaved_in_redis_both_count(store: LoopStore) -> None:
    """The gateway's learn reads the state, then OTHER's learn writes it before the gateway's commits: the
    gateway's transaction fails (WATCH), is tried again on the state OTHER left, and loses nothing."""
    store.create("op", swept_round(), "queue")
    calls: list[str] = []

    def learn_other(discovery: Discovery) -> tuple[list[Record], None]:
        calls.append(OTHER)
        return discovery.learned(0, OTHER, other_tables()), None

    def learn_gateway_overtaken(discovery: Discovery) -> tuple[list[Record], None]:
        calls.append(GATEWAY)
        if calls.count(GATEWAY) == 1:
            store.apply("op", learn_other)  # commits between this one's read and its write
        return discovery.learned(0, GATEWAY, gateway_tables()), None

    records, _, state = store.apply("op", learn_gateway_overtaken)
    assert calls == [GATEWAY, OTHER, GATEWAY]  # tried again once
    updates = hosts(records)  # the gateway's learn closed the round
    assert same(updates[GATEWAY].document["learnedFrom"], GATEWAY_SOURCES)
    assert same(updates[OTHER].document["learnedFrom"], OTHER_SOURCES)
    stored = store.load("op")
    assert stored is not None and stored.to_json() == state.to_json() and stored.round == 1
    assert stored.hosts[GATEWAY]["version"] == stored.hosts[OTHER]["version"] == 2


# --- at the hub: the newest version of each key ----------------------------------------------------


def host_versions() -> list[dict[str, Any]]:
    """A host's first record (MAC key only) and its update (the login's machine-id, one more source)."""
    first = {"kind": "host", "key": f"host:{GATEWAY}", "version": 1, "address": GATEWAY, "mac": "02:00:00:00:00:06"}
    first |= {"evidence": ["arp"], "learnedFrom": [{"source": "gateway"}]}
    first["identity"] = [{"kind": "mac", "value": "02:00:00:00:00:06"}]
    update = {**first, "version": 2, "learnedFrom": [{"source": "gateway"}, SOURCE_OF_GATEWAY]}
    update["identity"] = [{"kind": "machine-id", "value": MACHINE_ID}, *first["identity"]]
    return [first, update]


def test_the_hub_lists_the_newest_version_of_each_key_and_every_record_without_one(tmp_path: Path) -> None:
    from ksocket.hub.store import Store
    from ksocket.protocol import Record as Frame

    first, update = host_versions()
    network = {"kind": "network", "key": "network:198.18.0.0/29", "network": "198.18.0.0/29"}
    unkeyed = [{"kind": "note", "text": "a"}, {"kind": "note", "text": "a"}]  # no key: never one another's update
    other_host = {**first, "key": f"host:{OTHER}", "address": OTHER}
    with Store(tmp_path / "hub.db") as hub:
        hub.add_slot("lab")
        op_id = hub.add_operation("lab", "networks.discover")
        hub.claim_pending(["lab"])
        documents = [first, network, unkeyed[0], other_host, update, unkeyed[1]]
        frames = [Frame(id=op_id, seq=seq, record=document) for seq, document in enumerate(documents, 1)]
        assert hub.add_records("lab", "agent-1", frames) == (6, set())
        listed = hub.records(op_id)
    assert [(record.seq, record.document) for record in listed] == [
        (2, network),
        (3, unkeyed[0]),
        (4, other_host),
        (5, update),
        (6, unkeyed[1]),
    ]


def test_the_inventory_takes_a_hosts_keys_from_its_newest_host_record() -> None:
    from ksocket.hub.inventory import ScanRecord, sightings, unique

    scan = [
        ScanRecord("op", "lab", "agent-1", seq, 0.0, "host", document)
        for seq, document in enumerate(host_versions(), 1)
    ]
    taken = unique([*scan, scan[0]])  # the first record re-sent after a resume counts once
    assert [record.seq for record in taken] == [2]
    (sighting,) = sightings(taken)  # no details record (details: false): the keys come from the host record
    assert sighting.keys == [("machine-id", MACHINE_ID), ("mac", "02:00:00:00:00:06")]
    other_operation = ScanRecord("op2", "lab", "agent-1", 3, 0.0, "host", host_versions()[0])
    assert len(unique([*scan, other_operation])) == 2  # one key per operation
