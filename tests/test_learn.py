"""What the discovery loop learns from a host: real ip/snmpd output in the lab, the WS-Man server's
recorded shapes, and hostile tables (huge, garbled, a route revealing a million addresses)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from typing import Any

import pytest

from ksocket.collectors.discover.learn import (
    DEFAULT_EXPAND_LIMIT,
    MAX_CANDIDATES,
    MAX_SKIPPED,
    Learned,
    Source,
    expand,
    identity_keys,
    learn,
)
from ksocket.collectors.inspect import parsers, ssh, wmi
from tests.wsmanserver import RECORDED


def candidates(learned: Learned) -> dict[str, Any]:
    return {c.address: c for c in learned.candidates}


def networks(learned: Learned) -> dict[tuple[str, str], Any]:
    return {(n.network, n.kind): n for n in learned.networks}


def skipped(learned: Learned) -> dict[str, str]:
    return {s.value: s.reason for s in learned.skipped}


# --- an SSH report ---------------------------------------------------------------------------

SSH_REPORT: dict[str, Any] = {
    "hostname": "web01",
    "interfaces": [
        {"name": "lo", "mac": "", "addresses": [{"family": "inet", "address": "127.0.0.1", "prefixlen": 8}]},
        {
            "name": "eth0",
            "mac": "52:54:00:12:34:56",
            "addresses": [
                {"family": "inet", "address": "198.18.5.10", "prefixlen": 24},
                {"family": "inet6", "address": "2001:db8:5::10", "prefixlen": 64},
                {"family": "inet6", "address": "fe80::5054:ff:fe12:3456", "prefixlen": 64},
            ],
        },
        {"name": "eth1", "mac": "52:54:00:12:34:57", "addresses": [{"address": "198.18.6.1", "prefixlen": 20}]},
    ],
    "neighbors": [
        {"address": "198.18.5.1", "mac": "02:00:00:00:00:01", "interface": "eth0", "state": "REACHABLE"},
        {"address": "198.18.5.2", "mac": "02:00:00:00:00:02", "interface": "eth0", "state": "STALE"},
        {"address": "198.18.5.3", "mac": "", "interface": "eth0", "state": "INCOMPLETE"},
        {"address": "198.18.5.4", "mac": "", "interface": "eth0", "state": "FAILED"},
        {"address": "198.18.5.5", "mac": "00:00:00:00:00:00", "interface": "eth0", "state": ""},  # /proc/net/arp
        {"address": "::ffff:198.18.5.6", "mac": "02:00:00:00:00:06", "interface": "eth0", "state": "DELAY"},
        {"address": "fe80::1", "mac": "02:00:00:00:00:01", "interface": "eth0", "state": "ROUTER,REACHABLE"},
        {"address": "224.0.0.251", "mac": "01:00:5e:00:00:fb", "interface": "eth0", "state": "NOARP"},
    ],
    "routes": [
        {"destination": "default", "gateway": "198.18.5.1", "type": "unicast"},
        {"destination": "198.18.5.0/24", "gateway": "", "type": "unicast"},
        {"destination": "198.19.0.0/16", "gateway": "198.18.5.2", "type": "unicast"},
        {"destination": "198.18.64.0/20", "gateway": "198.18.5.2", "type": "unicast"},
        {"destination": "198.18.99.0/24", "gateway": "", "type": "unreachable"},
        {"destination": "224.0.0.0/4", "gateway": "", "type": "multicast"},
    ],
    "machine_id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
    "dmi": {"product_uuid": "4C4C4544-0042-3510-8052-B4C04F4B4E32"},
}


def test_ssh_neighbours_addresses_and_routes() -> None:
    learned = learn("198.18.5.10", {"address": "198.18.5.10", "ssh": SSH_REPORT})
    found = candidates(learned)
    assert list(found) == [
        "198.18.5.1",
        "198.18.5.2",
        "198.18.5.6",
        "198.18.5.10",
        "2001:db8:5::10",
        "198.18.6.1",
    ]
    assert found["198.18.5.1"].mac == "02:00:00:00:00:01"
    assert found["198.18.5.1"].sources == (
        Source("198.18.5.10", "ssh", "neighbors"),
        Source("198.18.5.10", "ssh", "routes"),
    )
    assert found["198.18.5.10"].mac == "52:54:00:12:34:56"
    assert found["198.18.6.1"].sources == (Source("198.18.5.10", "ssh", "interfaces"),)
    nets = networks(learned)
    assert {key: (n.size, n.expandable) for key, n in nets.items()} == {
        ("198.18.5.0/24", "interface"): (256, True),
        ("2001:db8:5::/64", "interface"): (2**64, False),
        ("198.18.0.0/20", "interface"): (4096, True),
        ("198.18.5.0/24", "route"): (256, True),
        ("198.19.0.0/16", "route"): (65536, False),
        ("198.18.64.0/20", "route"): (4096, True),
    }
    assert skipped(learned) == {
        "fe80::1": "link-local",
        "127.0.0.1": "loopback",
        "127.0.0.0/8": "loopback",
        "fe80::5054:ff:fe12:3456": "link-local",
        "fe80::/64": "link-local",
        "0.0.0.0/0": "default route",
        "198.18.99.0/24": "unreachable route",
        "224.0.0.0/4": "multicast",
    }
    assert learned.notes == ()
    document = learned.as_document()
    json.dumps(document)
    assert document["candidates"][0]["sources"][0] == {"host": "198.18.5.10", "protocol": "ssh", "table": "neighbors"}


def test_the_expand_limit_is_a_parameter_and_expand_lists_hosts() -> None:
    learned = learn("198.18.5.10", {"ssh": SSH_REPORT}, expand_limit=256)
    nets = networks(learned)
    assert nets[("198.18.5.0/24", "interface")].expandable
    assert not nets[("198.18.64.0/20", "route")].expandable
    addresses = list(expand(nets[("198.18.5.0/24", "interface")]))
    assert (len(addresses), addresses[0], addresses[-1]) == (254, "198.18.5.1", "198.18.5.254")
    assert list(expand(nets[("198.19.0.0/16", "route")])) == []
    assert len(list(expand(nets[("198.18.64.0/20", "route")], DEFAULT_EXPAND_LIMIT))) == 4094


# --- SNMP and WinRM documents -----------------------------------------------------------------

SNMP_DOCUMENT: dict[str, Any] = {
    "interfaces": [{"index": 3, "mac": "00:aa:bb:cc:dd:01", "addresses": ["198.18.0.2/24"]}],
    "ipAddresses": [
        {"address": "198.18.0.2", "prefixLength": 24, "ifIndex": 3},
        {"address": "198.18.200.1", "prefixLength": 30, "ifIndex": 4},
    ],
    "arp": [
        {"ifIndex": 3, "ipAddress": "198.18.0.1", "mac": "00:aa:bb:cc:dd:02", "type": "dynamic"},
        {"ifIndex": 3, "ipAddress": "198.18.0.9", "mac": None, "type": "dynamic"},
        {"ifIndex": 3, "ipAddress": "198.18.0.255", "mac": "ff:ff:ff:ff:ff:ff", "type": "static"},
    ],
    "routes": [
        {"destination": "0.0.0.0/0", "nextHop": "198.18.0.1", "ifIndex": 3, "type": "remote", "protocol": "local"},
        {"destination": "198.18.16.0/24", "nextHop": "198.18.0.7", "ifIndex": 3, "type": "remote"},
        {"destination": "198.18.17.0/24", "nextHop": None, "ifIndex": 3, "type": "reject"},
    ],
    "lldpNeighbors": [{"managementAddresses": ["198.18.0.10", "2001:db8::10"]}],
    "snmpEngineId": "800000090300AABBCCDD0001",
    "chassisSerial": "FOC1234X0AB",
}


def test_snmp_tables() -> None:
    learned = learn("198.18.0.2", {"address": "198.18.0.2", "snmp": SNMP_DOCUMENT, "ssh": {"error": {}}})
    found = candidates(learned)
    assert list(found) == ["198.18.0.1", "198.18.0.2", "198.18.200.1", "198.18.0.7", "198.18.0.10", "2001:db8::10"]
    assert [s.table for s in found["198.18.0.1"].sources] == ["arp", "routes"]
    assert found["198.18.0.2"].mac == "00:aa:bb:cc:dd:01"  # ifPhysAddress of its interface
    assert found["198.18.0.10"].sources == (Source("198.18.0.2", "snmp", "lldpNeighbors"),)
    assert set(networks(learned)) == {
        ("198.18.0.0/24", "interface"),
        ("198.18.200.0/30", "interface"),
        ("198.18.16.0/24", "route"),
    }
    assert skipped(learned)["198.18.17.0/24"] == "reject route"


def winrm_document() -> dict[str, Any]:
    """What the WinRM inspector makes of the WS-Man test server's recorded answers."""
    return {section: wmi.normalise(section, RECORDED.get(section, [])) for section in wmi.SECTIONS}


def test_winrm_tables_from_the_recorded_answers() -> None:
    learned = learn("198.18.10.20", {"address": "198.18.10.20", "winrm": winrm_document()})
    found = candidates(learned)
    assert list(found) == ["198.18.10.1", "198.18.10.2", "198.18.10.20", "198.18.10.254"]
    assert "198.18.10.99" not in found  # unreachable: asked, never answered
    assert found["198.18.10.20"].mac == "00:50:56:9a:12:34"
    assert {s.table for s in found["198.18.10.20"].sources} == {"ipAddresses", "networkAdapters"}
    nets = networks(learned)
    assert ("198.18.10.0/24", "interface") in nets and ("198.18.10.0/24", "route") in nets
    assert not nets[("198.19.0.0/16", "route")].expandable
    assert "224.0.0.22" not in found and "198.18.10.255" not in found  # a multicast, a broadcast MAC
    assert skipped(learned)["224.0.0.0/4"] == "multicast"


# --- identity keys -----------------------------------------------------------------------------


def test_identity_keys_strongest_first() -> None:
    inspection = {
        "address": "198.18.5.10",
        "ssh": SSH_REPORT,
        "winrm": winrm_document(),
        "snmp": SNMP_DOCUMENT,
    }
    assert identity_keys(inspection) == [
        {"kind": "machine-id", "value": "3d1219c7c4c5404aaa1f6d2a48adfda4"},
        {"kind": "smbios-uuid", "value": "4c4c4544-0042-3510-8052-b4c04f4b4e32"},
        {"kind": "smbios-uuid", "value": "421a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8"},
        {"kind": "machine-guid", "value": "5a1c9e3b-7f2d-4c8a-9b6e-0d4f3a2e1c7b"},
        {"kind": "snmp-engine-id", "value": "800000090300aabbccdd0001"},
        {"kind": "chassis-serial", "value": "FOC1234X0AB"},
        {"kind": "mac", "value": "52:54:00:12:34:56"},  # eth0 holds 198.18.5.10
    ]
    assert identity_keys({"snmp": SNMP_DOCUMENT}, "00-11-22-33-44-55")[-1] == {
        "kind": "mac",
        "value": "00:11:22:33:44:55",
    }


def test_placeholders_are_no_identity() -> None:
    inspection = {
        "address": "198.18.0.9",
        "ssh": {"machine_id": "0" * 32, "dmi": {"product_uuid": "03000200-0400-0500-0006-000700080009"}},
        "winrm": {"computerSystemProduct": {"uuid": "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"}, "cryptography": None},
        "snmp": {"snmpEngineId": "0000000000", "chassisSerial": "To be filled by O.E.M."},
    }
    assert identity_keys(inspection) == []
    assert identity_keys(inspection, "ff:ff:ff:ff:ff:ff") == []  # broadcast
    assert identity_keys(None) == [] and identity_keys({"ssh": {"error": {"code": "timeout"}}}) == []


# --- hostile tables ----------------------------------------------------------------------------


def test_a_huge_neighbour_table_is_capped_with_a_note() -> None:
    rows = [
        {"address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "mac": "02:00:00:00:00:01", "state": "STALE"}
        for n in range(1, 100_001)
    ]
    fenced = [{"address": "127.0.0.1", "mac": "02:00:00:00:00:01", "state": "STALE"}] * (MAX_SKIPPED + 10)
    learned = learn("10.0.0.1", {"ssh": {"neighbors": rows + fenced}})
    assert len(learned.candidates) == MAX_CANDIDATES
    assert len(learned.skipped) == MAX_SKIPPED
    assert learned.notes == (
        f"{100_000 - MAX_CANDIDATES} more candidates left out: at most {MAX_CANDIDATES} per host",
        f"10 more skipped left out: at most {MAX_SKIPPED} per host",
    )


def test_a_route_revealing_a_million_addresses_is_reported_not_expanded() -> None:
    learned = learn("198.18.0.2", {"snmp": {"routes": [{"destination": "198.16.0.0/12", "nextHop": "198.18.0.1"}]}})
    (network,) = learned.networks
    assert (network.size, network.expandable) == (1 << 20, False)
    assert list(expand(network)) == []
    assert [c.address for c in learned.candidates] == ["198.18.0.1"]


def test_the_same_address_from_every_table_is_one_candidate_with_bounded_sources() -> None:
    rows = [{"destination": f"198.18.{n}.0/24", "gateway": "198.18.0.1"} for n in range(200)]
    learned = learn("198.18.0.2", {"ssh": {"routes": rows}, "snmp": {"routes": [{"nextHop": "198.18.0.1"}]}})
    (candidate,) = learned.candidates
    assert candidate.sources == (Source("198.18.0.2", "ssh", "routes"), Source("198.18.0.2", "snmp", "routes"))
    assert len(learned.networks) == 200


JUNK: list[Any] = [None, True, 7, -1, 1e308, "", "x" * 100_000, [], {}, [[[]]], {"a": {"b": []}}, "198.18.0.1/99"]


@pytest.mark.parametrize("seed", range(3))
def test_any_json_in_any_place_is_skipped_never_raised(seed: int) -> None:
    rng = random.Random(seed)
    base = {"address": "198.18.5.10", "ssh": SSH_REPORT, "snmp": SNMP_DOCUMENT, "winrm": winrm_document()}
    for _ in range(300):
        document = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 6)):
            _spoil(rng, document)
        learned = learn(rng.choice(["198.18.5.10", "junk", ""]), document)
        json.dumps(learned.as_document())
        json.dumps(identity_keys(document, rng.choice([None, "junk", "02:00:00:00:00:09"])))


def _spoil(rng: random.Random, value: Any) -> None:
    """Replaces one value somewhere inside ``value`` (a dict or list) with junk."""
    while True:
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        if not keys:
            return
        key = rng.choice(keys)
        child = value[key]
        if isinstance(child, dict | list) and child and rng.random() < 0.7:
            value = child
            continue
        value[key] = rng.choice(JUNK)
        return


# --- real output in the lab: ip and snmpd in a host's namespace -----------------------------

IN_SCANNER = """
import asyncio, json, sys
from pathlib import Path
from ksocket.collectors.base import NullContext
from ksocket.collectors.inspect.snmp import SNMPInspector
from ksocket.credentials.models import AuthData, SNMPCredential

cred = SNMPCredential(path=Path("/lab.toml"), port=161, timeout=2.0, auth_data=AuthData(community="public"))
print(json.dumps(asyncio.run(SNMPInspector().inspect(sys.argv[1], cred, NullContext()))))
"""


TOUCH = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=float(sys.argv[2])).close()
except OSError:
    pass  # refused: the address answered (its MAC is known now); timed out: nobody did
"""


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="the lab needs root and iproute2")
def test_in_the_lab_ssh_and_snmp_tables_teach_the_same_neighbours_and_networks() -> None:
    from tests.lab import Lab

    nonce = "feedface"
    with Lab(prefix=f"kslab-{os.getpid()}-learn").flat(2) as lab:
        host, other = lab.hosts
        for command in (
            [sys.executable, "-c", TOUCH, other.address, "5"],  # refused once ARP is resolved
            [sys.executable, "-c", TOUCH, "198.18.0.200", "1"],  # nobody: an incomplete (later failed) entry
            ["ip", "route", "add", "198.18.128.0/17", "via", other.address],
            ["ip", "route", "add", "198.19.4.0/24", "via", other.address],
        ):
            lab.exec_in(host.netns, command, check=True)
        lab.run_in_scanner([sys.executable, "-c", TOUCH, host.address, "5"], check=True)
        agent = lab.start_snmpd(host)
        try:
            run = lab.run_in_scanner([sys.executable, "-c", IN_SCANNER, host.address], timeout=60)
        finally:
            agent.stop()
        script = subprocess.run(
            ["ip", "netns", "exec", host.netns, "env", "LC_ALL=C", "LANG=C", "sh", "-s"],
            input=ssh.script(nonce, sudo=False).encode(),
            capture_output=True,
            timeout=60,
        ).stdout.decode("utf-8", "replace")
    assert run.returncode == 0, run.stderr
    reports = {
        "ssh": parsers.parse_report(parsers.split_sections(script, nonce)),
        "snmp": json.loads(run.stdout),
    }
    asked = [n for n in reports["ssh"]["neighbors"] if n["address"] == "198.18.0.200"]
    assert asked and asked[0]["state"] in ("INCOMPLETE", "FAILED"), reports["ssh"]["neighbors"]
    # snmpd leaves incomplete entries out of its ARP tables itself; the kernel's table has it (above)
    for protocol, section in reports.items():
        learned = learn(host.address, {"address": host.address, protocol: section})
        found = candidates(learned)
        assert found[lab.scanner_address].mac == lab.scanner_mac, protocol
        assert found[other.address].mac == other.mac, protocol
        assert found[host.address].mac == host.mac, protocol
        assert "198.18.0.200" not in found, protocol
        nets = networks(learned)
        assert nets[("198.18.0.0/24", "interface")].expandable, protocol
        assert not nets[("198.18.128.0/17", "route")].expandable, protocol
        assert nets[("198.19.4.0/24", "route")].expandable, protocol
        assert skipped(learned)["127.0.0.1"] == "loopback", protocol
        kinds = [key["kind"] for key in identity_keys({"address": host.address, protocol: section})]
        assert kinds[-1] == "mac" and kinds[0] == ("machine-id" if protocol == "ssh" else "snmp-engine-id"), protocol
