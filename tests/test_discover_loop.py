"""The discovery coordinator (pure) and the in-process run of the loop, on a fake world."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksocket.collectors.base import InvalidParams, NullContext
from ksocket.collectors.discover import drivers, loop
from ksocket.collectors.discover.loop import Discovery, Origin, Sweep
from ksocket.collectors.discover.params import parse_params
from ksocket.fence import Fence, address_set
from tests.discoverworld import World, router

pytestmark = pytest.mark.unit


def discover(params: dict, world: World | None = None) -> tuple[dict, NullContext, World]:
    world = world or World()
    context = NullContext(environment=object())  # type: ignore[arg-type]
    summary = drivers.run(parse_params(params), context, world)
    return summary, context, world


def hosts(context: NullContext) -> dict[str, dict]:
    """Each host as it ended: its last record (an update replaces the record of the same key)."""
    return {record["address"]: record for record in context.records.documents if record["kind"] == "host"}


def test_the_loop_walks_from_the_gateway_through_routers_until_nothing_is_new() -> None:
    summary, context, world = discover({})
    found = hosts(context)
    assert set(found) == {"198.18.0.2", "198.18.0.6", "198.18.1.1", "198.18.1.2", "198.18.2.1", "198.18.0.5"}
    assert found["198.18.0.6"]["learnedFrom"][0] == {"source": "gateway"}
    assert found["198.18.0.6"]["evidence"] == ["icmp"]
    assert found["198.18.0.6"]["identity"] == [  # its first record had the MAC key; its learn's update has more
        {"kind": "machine-id", "value": "0123456789abcdef0123456789abcdef"},
        {"kind": "mac", "value": "02:00:00:00:00:06"},
    ]
    assert found["198.18.0.2"]["identity"] == []
    # the host that drops every probe, with the router's ARP table as its only evidence
    assert found["198.18.0.5"]["evidence"] == [loop.NEIGHBOUR_EVIDENCE]
    assert {"host": "198.18.0.6", "protocol": "ssh", "table": "neighbors"} in found["198.18.0.5"]["learnedFrom"]
    # the far side's networks: 198.18.2.0/30 expanded, 10/8 only reported
    networks = {record["network"]: record for record in context.records.documents if record["kind"] == "network"}
    assert networks["198.18.2.0/30"]["expanded"] is True
    assert networks["10.0.0.0/8"]["expanded"] is False
    assert summary["hosts"] == 6 and summary["rounds"] == 3
    # every host that answered learnt from once; details of those that let us in
    assert sorted(world.inspected) == sorted(set(found) - {"198.18.0.5"})
    details = [record for record in context.records.documents if record["kind"] == "details"]
    assert [d["address"] for d in details] == ["198.18.0.6", "198.18.1.2"]
    assert details[0]["identity"][0] == {"kind": "machine-id", "value": "0123456789abcdef0123456789abcdef"}


def test_nothing_is_ever_sent_to_a_dropped_address() -> None:
    _, _, world = discover({"deny": ["198.18.1.2", "198.18.0.4-198.18.0.5"]})
    touched = world.touched()
    for dropped in ("198.18.0.1", "198.18.0.0", "198.18.0.7", "198.18.1.2", "198.18.0.4", "198.18.0.5"):
        assert dropped not in touched
    assert "198.18.2.1" not in touched  # only the denied router revealed its network


def test_allow_bounds_the_walk_and_each_address_is_swept_once() -> None:
    _, context, world = discover({"allow": ["198.18.0.0/24"]})
    assert set(hosts(context)) == {"198.18.0.2", "198.18.0.6", "198.18.0.5"}
    swept = [address for sweep in world.sweeps for address in sweep]
    assert len(swept) == len(set(swept))
    assert all(address.startswith("198.18.0.") for address in world.touched())


def test_no_details_means_no_details_records_but_the_same_walk() -> None:
    summary, context, _ = discover({"details": False})
    assert not [record for record in context.records.documents if record["kind"] == "details"]
    assert summary["hosts"] == 6 and summary["detailed"] == 0


def test_seeds_are_candidates_and_their_network_edges_are_fenced() -> None:
    world = World(live={"198.18.3.9"}, tables={})
    _, context, world = discover({"seeds": ["198.18.3.8/30", "198.18.4.4"]}, world)
    assert set(hosts(context)) == {"198.18.3.9"}
    assert world.sweeps[0][-3:] == ("198.18.3.9", "198.18.3.10", "198.18.4.4")
    assert "198.18.3.8" not in world.touched() and "198.18.3.11" not in world.touched()


def start(params: dict | None = None) -> Discovery:
    return Discovery.start(parse_params(params or {}), ["198.18.0.1"], [Origin("198.18.0.6", "gateway")], [])


def test_every_event_applied_twice_changes_nothing() -> None:
    state = start()
    sweep = state.next_sweep()
    assert sweep == Sweep(0, ("198.18.0.6",))
    found = [{"address": "198.18.0.6", "mac": None, "evidence": ["icmp"]}]
    assert [r.key for r in state.swept(sweep, found)] == ["host:198.18.0.6"]
    before = state.to_json()
    assert state.swept(sweep, found) == [] and state.to_json() == before
    assert state.next_sweep() is None and state.waiting() == ["198.18.0.6"]
    assert state.learned(0, "198.18.0.6", router())
    after = state.to_json()
    assert state.learned(0, "198.18.0.6", router()) == [] and state.to_json() == after
    assert state.learned(5, "198.18.0.6", router()) == [] and state.swept(Sweep(0, ()), []) == []
    assert state.round == 1 and state.phase == "sweep"


def test_the_state_survives_json_whole() -> None:
    state = start()
    sweep = state.next_sweep()
    assert sweep is not None
    state.swept(sweep, [{"address": "198.18.0.6", "evidence": ["arp"]}])
    state.learned(0, "198.18.0.6", router())
    again = Discovery.from_json(state.to_json())
    assert again == state
    assert again.next_sweep() == state.next_sweep()


def test_a_table_revealing_a_million_addresses_costs_its_rows() -> None:
    rows = [
        {"address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "mac": "02:00:00:00:00:01"}
        for i in range(1, 300_000)
    ]
    state = start()
    sweep = state.next_sweep()
    assert sweep is not None
    state.swept(sweep, [{"address": "198.18.0.6", "evidence": ["icmp"]}])
    big = {"ssh": {"neighbors": rows, "routes": [{"destination": "10.0.0.0/8", "gateway": "198.18.0.9"}]}}
    state.learned(0, "198.18.0.6", big)
    assert len(state.pending) <= loop.MAX_CANDIDATES
    assert any("candidates" in note for note in state.notes)
    assert state.networks["10.0.0.0/8"]["expanded"] is False
    assert len(state.next_sweep().addresses) <= loop.MAX_SWEEP  # type: ignore[union-attr]


def test_rounds_are_capped() -> None:
    state = start()
    for round in range(loop.MAX_ROUNDS + 3):
        sweep = state.next_sweep()
        if sweep is None:
            break
        address = sweep.addresses[0]
        state.swept(sweep, [{"address": address, "evidence": ["icmp"]}])
        following = f"198.19.{(round + 1) // 256}.{(round + 1) % 256 or 1}"
        state.learned(state.round, address, {"ssh": {"routes": [{"destination": "default", "gateway": following}]}})
    assert state.done and state.round == loop.MAX_ROUNDS - 1
    assert any("rounds" in note for note in state.notes)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"seeds": ["198.18.0.0/15"]}, "seeds"),
        ({"seeds": "nonsense"}, "seeds"),
        ({"allow": ["x"]}, "allow"),
        ({"deny": [1]}, "deny"),
        ({"expandLimit": -1}, "expandLimit"),
        ({"expandLimit": True}, "expandLimit"),
        ({"details": "yes"}, "details"),
        ({"protocols": ["telnet"]}, "protocols"),
        ({"rate": 0}, "rate"),
        ({"ports": [0]}, "port"),
        ({"methods": ["ping"]}, "methods"),
        ({"target": ["198.18.0.1"]}, "target"),
    ],
)
def test_invalid_params_are_refused_naming_the_field(params: dict, field: str) -> None:
    with pytest.raises(InvalidParams, match=field):
        parse_params(params)


def test_65536_seed_addresses_are_accepted() -> None:
    assert len(parse_params({"seeds": ["198.18.0.0/16"]}).seeds) == 65_536


def test_the_operators_fence_joins_the_discoverys_deny_and_bounds_its_rate() -> None:
    fence = Fence(address_set(["198.18.0.0/15"]), address_set(["198.18.0.9"]), 500, "intranet")
    narrowed = fence.admit("networks.discover", {"deny": ["198.18.1.0/24"]})
    assert narrowed["deny"][0] == "198.18.1.0/24" and narrowed["rate"] == 500
    request = parse_params(narrowed)
    loop_fence = Discovery.start(request, [], [], []).fence
    assert loop_fence.refusal("198.18.0.9") == "in-deny"
    assert loop_fence.refusal("8.8.8.8") == "in-deny"
    assert loop_fence.refusal("fd00::1") == "in-deny"
    assert loop_fence.refusal("198.18.0.10") is None
    with pytest.raises(InvalidParams, match=r"operations\.maxRate"):
        fence.admit("networks.discover", {"rate": 501})


def test_a_candidate_that_a_later_subnet_makes_a_broadcast_address_is_never_swept() -> None:
    state = Discovery.start(parse_params({"seeds": ["198.18.7.255", "198.18.0.6"]}), [], [], [])
    first = state.next_sweep()
    assert first is not None and set(first.addresses) == {"198.18.7.255", "198.18.0.6"}
    state.swept(first, [{"address": "198.18.0.6", "evidence": ["icmp"]}])
    state = Discovery.from_json(state.to_json())
    state.pending["198.18.7.255"] = {"mac": None, "learnedFrom": [{"source": "seed"}]}  # as if it came late
    interface = {"ssh": {"interfaces": [{"addresses": [{"address": "198.18.7.1", "prefixlen": 24}]}]}}
    state.learned(0, "198.18.0.6", interface)
    second = state.next_sweep()
    assert second is not None and "198.18.7.255" not in second.addresses and "198.18.7.0" not in second.addresses
    assert "198.18.7.254" in second.addresses
    state.swept(second, [])
    assert "198.18.7.255" not in state.pending and state.dropped["network-or-broadcast"] >= 1


def no_credential(address: str) -> dict:
    error = {"code": "no-credential", "message": "no credential file matches"}
    return {"address": address, "ssh": {"error": error}, "winrm": {"error": error}, "snmp": {"error": error}}


def test_hosts_no_credential_file_serves_are_counted_per_protocol_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(tables={"198.18.0.6": {**no_credential("198.18.0.6"), "ssh": router()["ssh"]}})
    world.tables |= {address: no_credential(address) for address in ("198.18.0.2", "198.18.1.1")}
    with caplog.at_level("INFO"):
        summary, _, _ = discover({"allow": ["198.18.0.0/24", "198.18.1.0/24"]}, world)
    assert summary["noCredential"] == {"ssh": 2, "winrm": 3, "snmp": 3}  # the router logs in by ssh; 1.2 refuses it
    said = [record for record in caplog.records if "no credential file" in record.getMessage()]
    assert [(record.levelname, record.getMessage()) for record in said] == [
        ("WARNING", "discovery: no credential file matched 2 hosts for ssh, 3 hosts for winrm, 3 hosts for snmp")
    ]


def test_the_live_inspection_of_a_discovery_leaves_the_unmatched_warning_to_the_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No credential file at all: every protocol's section says ``no-credential`` (nothing is sent), and the
    search's WARNING per protocol, the manual's line for a single ``hosts.inspect``, stays out of the log."""
    from ksocket.collectors.base import Environment
    from ksocket.collectors.inspect import hosts as inspect_hosts
    from ksocket.collectors.inspect.hostkeys import HostKeyStore
    from ksocket.collectors.inspect.limiter import HostLimiter

    environment = Environment(tmp_path, HostLimiter(), HostKeyStore(tmp_path / "known_hosts"))
    context = NullContext(environment)
    with caplog.at_level("INFO"):
        found = drivers.LiveDrivers().inspect("198.18.0.5", parse_params({}), context)
    assert loop.unmatched(found) == ["ssh", "winrm", "snmp"]
    assert not [record for record in caplog.records if record.levelname == "WARNING"]
    with caplog.at_level("INFO"):
        inspect_hosts.collect({"address": "198.18.0.5"}, context)  # hosts.inspect alone: the manual's lines
    warned = sorted(record.getMessage() for record in caplog.records if record.levelname == "WARNING")
    assert warned == [f"no credential file matches 198.18.0.5 for {kind}" for kind in ("snmp", "ssh", "winrm")]


def test_without_details_each_live_host_is_inspected_once_for_learning_and_nothing_more() -> None:
    with_details, _, detailed_world = discover({})
    summary, context, world = discover({"details": False})
    assert sorted(world.inspected) == sorted(detailed_world.inspected)  # one login per host: learning's
    assert len(world.inspected) == len(set(world.inspected))
    assert not [record for record in context.records.documents if record["kind"] == "details"]
    assert summary["detailed"] == 0 and with_details["detailed"] == 2
    assert hosts(context)["198.18.0.6"]["identity"][0]["kind"] == "machine-id"  # its login's keys, on the host


def test_a_hosts_first_record_keeps_what_it_said_when_its_update_comes() -> None:
    _, context, _ = discover({})
    versions = [record for record in context.records.documents if record.get("key") == "host:198.18.1.1"]
    assert [record["version"] for record in versions] == [1, 2]
    later = {"host": "198.18.1.2", "protocol": "ssh", "table": "routes"}  # read in the round that swept it
    assert later not in versions[0]["learnedFrom"] and later in versions[1]["learnedFrom"]
