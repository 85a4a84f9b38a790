"""``networks.discover`` end to end on the routed discovery lab (tests/discoverylab.py), against its ground truth.

The agent knows its own segment A and a default route; R1 (SNMP) and H (SSH) reveal the rest. The
tests seed A, allow 198.18.0.0/16 and deny segment D, then check every host against
:meth:`~tests.discoverylab.DiscoveryLab.expected_addresses`: all reachable and learnable addresses
found (100% recall), nothing else, provenance as the tables give it (every table that names a host,
those read after its sweep through its update), each MAC, B's ARP-only hosts known by the neighbour
table alone, R1's and H's details and identity keys, and not one frame at D's or F's fence. The first
runs ``ksocket discover --json`` (then again with ``--no-details``: the same hosts, networks and
identity keys from logins in scope ``learn``, no details); the last runs ``ksocket connect`` with one running operation
against a hub listening on the agent's loopback, and reads the records the hub stored (the newest
version of each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ksocket.protocol import Record
from tests.conftest import write_home_config
from tests.discoverylab import FENCE_ALLOW, FENCE_DENY, H_C, R1_LAN, SEGMENTS, DiscoveryLab, ExpectedAddress
from tests.hubtools import RecordingHub
from tests.lab import in_netns
from tests.labtools import discovery_lab  # noqa: F401  (fixture)
from tests.pipelinetools import kill_embedded
from tests.timing import scaled

pytestmark = pytest.mark.lab

SEED = SEGMENTS["lan"]
PARAMS = {"seeds": [SEED], "allow": list(FENCE_ALLOW), "deny": list(FENCE_DENY)}
ROUNDS = {"lan": 0, "b": 1, "transit": 1, "c": 1, "e": 2}
"""The round that sweeps each segment: A is seeded, R1 (on A) reveals B, the transit network and C,
H (on C) reveals E."""
SILENT = {"frames": 0, "arp_frames": 0, "input": 0, "forward": 0}
SLOT = "lab"


def expected_hosts(lab: DiscoveryLab) -> dict[str, ExpectedAddress]:
    """The addresses the loop must report: every one the fence lets it reach (all answer, or sit in a
    neighbour table)."""
    return {item.address: item for item in lab.expected_addresses() if item.fenced is None}


def segment_of(network: str) -> str:
    return next(name for name, cidr in SEGMENTS.items() if cidr == network)


def expected_provenance(lab: DiscoveryLab, address: str) -> list[dict[str, str]]:
    """Every table that names ``address``: those read before its sweep are in its first record, those
    read later (H's default route and neighbour table name 198.18.3.1, found in H's own round) in its
    update."""
    return [
        {"host": item.host, "protocol": item.protocol, "table": item.table}
        for item in expected_hosts(lab)[address].revealed_by
    ]


AGENTS_OWN = (
    {"source": "seed"},
    {"source": "gateway"},
    {"source": "neighbour"},
    {"source": "connected", "network": SEED},
)
"""What names R1, the one address of A besides the agent's: the seed, the agent's own default route,
neighbour table (the lab's ``up`` had the agent talk to its gateway) and connected network."""


def assert_hosts_match_the_ground_truth(lab: DiscoveryLab, hosts: Mapping[str, Mapping[str, Any]]) -> None:
    """``hosts``: address -> host record as it ended (``address``, ``mac``, ``evidence``, ``learnedFrom``):
    every table that names it, and each MAC (from the sweep on A, else a neighbour table or the host's own
    interfaces)."""
    truth = expected_hosts(lab)
    assert sorted(hosts) == sorted(truth)  # 100% recall, and no false host
    for address, host in hosts.items():
        expected = truth[address]
        tables = [origin for origin in host["learnedFrom"] if "host" in origin]
        assert sorted(map(json.dumps, tables)) == sorted(map(json.dumps, expected_provenance(lab, address))), host
        others = [origin for origin in host["learnedFrom"] if "host" not in origin]
        if expected.network == SEED:
            assert sorted(map(json.dumps, others)) == sorted(map(json.dumps, AGENTS_OWN)), host
        else:
            assert others == [{"network": expected.network}], host
        assert host["mac"] == expected.mac, host
        if expected.answers == "arp-only":
            assert host["evidence"] == ["neighbour-table"] and host["mac"] == expected.mac, host
        else:
            assert "icmp" in host["evidence"] and "neighbour-table" not in host["evidence"], host
    assert {"source": "gateway"} in hosts[R1_LAN]["learnedFrom"]  # the agent's own default route names R1
    for address in (R1_LAN, *(a for a, item in truth.items() if item.answers == "arp-only")):
        assert hosts[address]["mac"] == truth[address].mac  # on A, or from R1's complete ARP entries


def assert_networks_match_the_ground_truth(lab: DiscoveryLab, networks: Mapping[str, Mapping[str, Any]]) -> None:
    """``networks``: network -> network record. Every segment is learnt (D and F too: a fenced network is
    reported, its addresses are not swept); its first learner's tables name it."""
    expected = {item.network: item for item in lab.expected_networks()}
    assert sorted(networks) == sorted(expected)
    for network, record in networks.items():
        truth = [{"host": p.host, "protocol": p.protocol, "table": p.table} for p in expected[network].revealed_by]
        if network == SEED:  # the agent's own, before R1 named it
            assert record["type"] == "connected" and record["learnedFrom"] == [{"source": "connected"}], record
            continue
        assert record["type"] == expected[network].kind, record
        assert record["learnedFrom"] and all(origin in truth for origin in record["learnedFrom"]), record


def assert_fences_silent(lab: DiscoveryLab) -> None:
    for name in ("denied", "outside"):
        assert lab.fence_counters(name) == SILENT, name


def assert_details(identity: Mapping[str, Sequence[Mapping[str, str]]], details: Mapping[str, Any]) -> None:
    """R1 logged in over SNMP and H over SSH, each with its identity keys."""
    assert set(details) == {R1_LAN, H_C}
    assert "error" not in details[R1_LAN]["snmp"], details[R1_LAN]["snmp"]
    assert "error" not in details[H_C]["ssh"], details[H_C]["ssh"]
    assert any(key["kind"] == "snmp-engine-id" for key in identity[R1_LAN]), identity[R1_LAN]
    assert any(key["kind"] == "machine-id" for key in identity[H_C]), identity[H_C]


def test_ksocket_discover_finds_every_reachable_and_learnable_host_and_nothing_across_the_fences(
    discovery_lab: DiscoveryLab,  # noqa: F811
) -> None:
    lab = discovery_lab
    command = [sys.executable, "-m", "ksocket.cli", "discover", "--json", "--seed", SEED]
    command += [*(f"--allow={cidr}" for cidr in FENCE_ALLOW), *(f"--deny={cidr}" for cidr in FENCE_DENY)]
    done = lab.run_in_scanner(command, env={**os.environ, "KSOCKET_HOME": str(lab.home)}, timeout=scaled(600))
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    hosts = {host["address"]: host for host in document["hosts"]}
    assert len(hosts) == len(document["hosts"]) == document["summary"]["hosts"]
    assert_hosts_match_the_ground_truth(lab, hosts)
    assert_networks_match_the_ground_truth(lab, {item["network"]: item for item in document["networks"]})
    detailed = {address: host["details"] for address, host in hosts.items() if host["details"] is not None}
    assert_details({address: host["identity"] for address, host in hosts.items()}, detailed)
    assert document["summary"]["rounds"] == max(ROUNDS.values()) + 1 and document["summary"]["detailed"] == 2
    assert document["summary"]["dropped"]["in-deny"] > 0 and document["summary"]["dropped"]["outside-allow"] > 0
    assert_fences_silent(lab)


def test_without_details_the_learn_scope_logins_find_the_same_hosts_networks_and_identity_keys(
    discovery_lab: DiscoveryLab,  # noqa: F811
) -> None:
    """``--no-details``: R1 and H are inspected in scope ``learn`` (no packages, hardware or details
    tables), which is all the loop reads: the same hosts, networks and provenance, their identity keys."""
    lab = discovery_lab
    command = [sys.executable, "-m", "ksocket.cli", "discover", "--json", "--no-details", "--seed", SEED]
    command += [*(f"--allow={cidr}" for cidr in FENCE_ALLOW), *(f"--deny={cidr}" for cidr in FENCE_DENY)]
    done = lab.run_in_scanner(command, env={**os.environ, "KSOCKET_HOME": str(lab.home)}, timeout=scaled(600))
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    hosts = {host["address"]: host for host in document["hosts"]}
    assert_hosts_match_the_ground_truth(lab, hosts)
    assert_networks_match_the_ground_truth(lab, {item["network"]: item for item in document["networks"]})
    assert all(host["details"] is None for host in hosts.values()) and document["summary"]["detailed"] == 0
    assert any(key["kind"] == "snmp-engine-id" for key in hosts[R1_LAN]["identity"]), hosts[R1_LAN]
    assert any(key["kind"] == "machine-id" for key in hosts[H_C]["identity"]), hosts[H_C]
    assert_fences_silent(lab)


# --- through the agent's pipeline and a hub ------------------------------------------------------------


def agent_home(lab: DiscoveryLab, folder: Path, port: int, token: str) -> Path:
    """A KSOCKET_HOME with the lab's credentials (modes kept) and a ``connect`` section for the hub."""
    assert lab.home is not None
    home = folder / "agent-home"
    shutil.copytree(lab.home / "etc" / "ksocket", home / "etc" / "ksocket")
    write_home_config(
        home,
        f'logfile = "-"\nloglevel = "WARNING"\n[connect]\nhost = "127.0.0.1"\nport = {port}\nprotocol = "ws"\n'
        f'token = "{token}"\nmaxRunningOperations = 1\n',
    )
    return home


@contextlib.contextmanager
def agent_in(lab: DiscoveryLab, home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``ksocket connect`` in the agent's namespace, stopped (SIGTERM) when the block ends."""
    log = (home / "agent.out").open("ab")
    process = subprocess.Popen(
        ["ip", "netns", "exec", lab.scanner_ns, sys.executable, "-m", "ksocket", "connect"],
        env={**os.environ, "KSOCKET_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def by_kind(records: Sequence[Record]) -> dict[str, dict[str, dict[str, Any]]]:
    """kind -> the record's key (its address or network) -> the record; each key at most once."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        document = record.record
        key = str(document.get("address") or document.get("network"))
        assert key not in found.setdefault(record.kind, {}), f"{record.kind} {key} twice"
        found[record.kind][key] = document
    return found


def test_the_agents_pipeline_with_one_running_operation_stores_every_host_once_at_the_hub(
    discovery_lab: DiscoveryLab,  # noqa: F811
    tmp_path: Path,
) -> None:
    lab = discovery_lab

    async def scenario() -> list[Record]:
        hub = RecordingHub(tmp_path / "hub.db")
        with in_netns(lab.scanner_ns):  # its listening socket on the agent's loopback
            await hub.start()
        try:
            token = hub.store.add_slot(SLOT)
            home = agent_home(lab, tmp_path, hub.port, token)
            try:
                with agent_in(lab, home):
                    await hub.wait_connected(SLOT, timeout=scaled(60))
                    op_id = await hub.submit(SLOT, "networks.discover", PARAMS)
                    result = await hub.wait_result(op_id, timeout=scaled(600))
                    assert result.ok and result.data is not None, (result, (home / "agent.out").read_text()[-3000:])
                    assert result.data["hosts"] == len(expected_hosts(lab)), result.data
            finally:
                kill_embedded(home / "var" / "lib" / "ksocket" / "broker.db")
            records = hub.records(op_id)
            seqs = [record.seq for record in records]
            assert seqs == sorted(set(seqs)) and seqs[-1] < result.seq  # in seq order, all before the result
            return records
        finally:
            await hub.stop()

    records = asyncio.run(scenario())
    kinds = by_kind(records)
    assert set(kinds) == {"host", "network", "details"}
    hosts = kinds["host"]
    assert_hosts_match_the_ground_truth(lab, hosts)
    for address, host in hosts.items():
        assert host["round"] == ROUNDS[segment_of(expected_hosts(lab)[address].network)], host
    assert_networks_match_the_ground_truth(lab, kinds["network"])
    details = kinds["details"]
    assert_details(
        {address: record["identity"] for address, record in details.items()},
        {address: record["inspection"] for address, record in details.items()},
    )
    for address, record in details.items():  # the host record, updated after its learn, has the same keys
        assert hosts[address]["identity"] == record["identity"] and hosts[address]["version"] >= 2, hosts[address]
    assert_fences_silent(lab)
