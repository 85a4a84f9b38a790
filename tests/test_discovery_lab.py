"""The discovery loop's lab (tests/discoverylab.py): it comes up and goes away, its routers and hosts
reveal what the ground truth says through the real tools and through the agent's own collectors, its
fences count every packet, and its ARP-only hosts answer ARP and nothing else."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import stat
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ksocket.collectors.discover.learn import learn
from tests.discoverylab import (
    ARP_ONLY,
    EDGE,
    FENCE_DENY,
    NODES,
    R1_LAN,
    R2_TRANSIT,
    SEGMENTS,
    SNMP_USER,
    DiscoveryLab,
    ExpectedNetwork,
    Provenance,
    fence_reason,
)
from tests.lab import ETC_NETNS, STATE_DIR, in_netns, lab_namespaces, processes_in
from tests.labtools import discovery_lab, lab_prefix, require_lab  # noqa: F401  (fixture)
from tests.sshdtools import USER
from tests.timing import scaled

NO_ANSWER = 1.0  # seconds a probe of a silent host waits for the answer that must not come


def networks_by_segment(lab: DiscoveryLab) -> dict[str, ExpectedNetwork]:
    return {item.segment: item for item in lab.expected_networks()}


# --- the ground truth (no lab needed) ----------------------------------------------------------


def test_the_ground_truth_names_who_reveals_each_network_and_what_is_fenced() -> None:
    lab = DiscoveryLab()
    r1, h = Provenance("198.18.0.254", "snmp", "routes"), Provenance("198.18.3.10", "ssh", "routes")
    networks = networks_by_segment(lab)
    assert {name: networks[name].revealed_by for name in "df"} == {name: (r1,) for name in "df"}
    assert networks["c"].revealed_by[0] == r1  # then H, whose own network it is
    assert h in networks["e"].revealed_by and all(p.host == h.host for p in networks["e"].revealed_by)
    assert networks["b"].kind == "interface" and networks["c"].kind == "route"
    assert {name: item.fenced for name, item in networks.items() if item.fenced} == {"d": "deny", "f": "outside-allow"}
    addresses = {item.address: item for item in lab.expected_addresses()}
    for address in ARP_ONLY:
        assert addresses[address].answers == "arp-only"
        assert addresses[address].revealed_by == (Provenance("198.18.0.254", "snmp", "arp"),)
    for address in EDGE:
        assert addresses[address].revealed_by == (Provenance("198.18.3.10", "ssh", "neighbors"),)
    assert addresses["198.18.3.10"].revealed_by == ()  # H is found by probing C, which R1's routes reveal
    assert fence_reason("198.18.4.10") == "deny" and fence_reason("198.19.6.10") == "outside-allow"
    assert lab.scanner_address not in addresses


# --- the lab ------------------------------------------------------------------------------------


@pytest.mark.lab
def test_the_topology_comes_up_in_seconds_and_down_leaves_nothing(tmp_path: Path) -> None:
    require_lab()
    home = tmp_path / "home"
    lab = DiscoveryLab(prefix=lab_prefix(), home=home)
    try:
        lab.up()
        names = lab_namespaces(lab.prefix)
        assert len(names) == len(NODES) + 1  # every node and the bridges
        assert lab.setup_seconds < scaled(10), lab.setup_seconds
        assert len(processes_in(names)) >= 2  # snmpd in R1, sshd in H
        routes = lab.run_in_scanner(["ip", "-4", "route", "show"], check=True).stdout
        # the agent's table names its own segment and its gateway, none of the networks to learn
        assert sorted(line.split()[0] for line in routes.splitlines()) == ["198.18.0.0/24", "default"]
        assert "via 198.18.0.254" in routes
        for name in "cdef":
            assert SEGMENTS[name] not in routes
        for path in lab.credentials.values():
            assert Path(path).is_relative_to(home / "etc" / "ksocket")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        truth = json.loads((STATE_DIR / f"{lab.prefix}.json").read_text())["discovery"]
        assert truth["credentials"] == lab.credentials and truth["fence"]["deny"] == list(FENCE_DENY)
        assert {item["address"] for item in truth["addresses"]} >= {*ARP_ONLY, *EDGE, "198.18.4.10", "198.19.6.10"}
        workdir = lab.workdir
    finally:
        lab.down()
    assert lab_namespaces(lab.prefix) == []
    assert processes_in(names) == []
    assert not (STATE_DIR / f"{lab.prefix}.json").exists()
    assert workdir is not None and not workdir.exists() and not (ETC_NETNS / lab.scanner_ns).exists()


@pytest.mark.lab
def test_r1_answers_snmp_v3_with_b_in_its_arp_table_and_c_d_f_in_its_routes(discovery_lab: DiscoveryLab) -> None:  # noqa: F811
    lab = discovery_lab
    name, _, auth_key, _, priv_key = SNMP_USER
    v3 = ["-v3", "-l", "authPriv", "-u", name, "-a", "SHA", "-A", auth_key, "-x", "AES", "-X", priv_key]

    def walk(*arguments: str, wait: str = f"{scaled(2):g}") -> str:
        done = lab.run_in_scanner(["snmpwalk", "-On", "-t", wait, "-r", "1", *arguments], env=SNMP_ENV, timeout=60)
        return done.stdout

    arp = walk(*v3, lab.r1, "1.3.6.1.2.1.4.35.1.4")  # ipNetToPhysicalPhysAddress: ifIndex.1.4.address
    for address in ARP_ONLY:
        mac = lab.host(address).mac.replace(":", " ").upper()
        assert re.search(rf"\.1\.4\.{re.escape(address)} = Hex-STRING: {mac}", arp), arp
    routes = walk(*v3, lab.r1, "1.3.6.1.2.1.4.24.7.1.7")  # inetCidrRouteIfIndex: dest.len.policy.nexthop
    for segment in "cdf":
        network, length = SEGMENTS[segment].split("/")
        assert re.search(rf"\.1\.4\.{re.escape(network)}\.{length}\.[.\d]+\.1\.4\.198\.18\.2\.2 = ", routes), routes
    assert SEGMENTS["e"].split("/")[0] not in routes  # E is behind H: R1 reaches it by its default route
    assert walk("-v2c", "-c", "public", lab.r1, "1.3.6.1.2.1.1.5", wait="0.5") == ""  # the agent's is v3


SNMP_ENV = {**os.environ, "MIBS": "", "MIBDIRS": "/nonexistent"}  # numeric OIDs; no MIB parse noise


@pytest.mark.lab
def test_h_answers_ssh_and_its_ip_route_and_ip_neigh_show_e(discovery_lab: DiscoveryLab) -> None:  # noqa: F811
    lab = discovery_lab
    ssh = ["ssh", "-i", lab.credentials["sshKey"], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
    ssh += ["-o", "UserKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={scaled(5):g}", f"{USER}@{lab.linux}"]
    command = "PATH=$PATH:/usr/sbin:/sbin; ip -4 route show; echo ---; ip -4 neigh show"
    done = lab.run_in_scanner([*ssh, command], timeout=60)
    assert done.returncode == 0, done.stderr
    routes, neighbours = done.stdout.split("---")
    assert re.search(rf"^{re.escape(SEGMENTS['e'])} dev eth1 .*src 198\.18\.5\.1", routes, re.M), routes
    for address in EDGE:
        assert re.search(rf"^{re.escape(address)} dev eth1 lladdr {lab.host(address).mac} ", neighbours, re.M)


def inspect_in(lab: DiscoveryLab, address: str, protocol: str) -> dict[str, Any]:
    """``ksocket inspect ADDRESS --protocols PROTOCOL --json`` in the agent's namespace with the lab's home."""
    command = [sys.executable, "-m", "ksocket.cli", "inspect", address, "--protocols", protocol, "--json"]
    done = lab.run_in_scanner(command, env={**os.environ, "KSOCKET_HOME": str(lab.home)}, timeout=scaled(120))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    result: dict[str, Any] = json.loads(done.stdout)
    assert "error" not in result[protocol], result[protocol]
    return result


@pytest.mark.lab
def test_the_agents_collectors_read_r1_and_h_and_learning_finds_every_revealed_entry(
    discovery_lab: DiscoveryLab,  # noqa: F811
) -> None:
    lab = discovery_lab
    learned = [learn(lab.r1, inspect_in(lab, lab.r1, "snmp")), learn(lab.linux, inspect_in(lab, lab.linux, "ssh"))]
    candidates: dict[str, tuple[str | None, set[Provenance]]] = {}
    networks: dict[str, set[Provenance]] = {}
    for result in learned:
        for candidate in result.candidates:
            _, sources = candidates.setdefault(candidate.address, (candidate.mac, set()))
            sources.update(Provenance(s.host, s.protocol, s.table) for s in candidate.sources)
        for network in result.networks:
            networks.setdefault(network.network, set()).update(
                Provenance(s.host, s.protocol, s.table) for s in network.sources
            )
    for expected in lab.expected_addresses():
        if expected.revealed_by:
            mac, sources = candidates[expected.address]
            assert mac == expected.mac and set(expected.revealed_by) <= sources, (expected, mac, sources)
    for item in lab.expected_networks():
        assert set(item.revealed_by) <= networks.get(item.network, set()), (item, networks.get(item.network))
    # B's hosts, C..F and E's hosts are there: what the agent's own table never named
    assert set(ARP_ONLY) | set(EDGE) <= set(candidates)
    assert {SEGMENTS[name] for name in "cdef"} <= set(networks)
    for name in ("denied", "outside"):  # inspecting R1 and H sent nothing into the fenced networks
        assert lab.fence_counters(name) == {"frames": 0, "arp_frames": 0, "input": 0, "forward": 0}, name


@pytest.mark.lab
def test_the_fences_read_zero_and_count_a_packet_sent_on_purpose(discovery_lab: DiscoveryLab) -> None:  # noqa: F811
    lab = discovery_lab
    targets = {"denied": "198.18.4.10", "outside": "198.19.6.10"}
    for name in targets:
        assert lab.fence_counters(name) == {"frames": 0, "arp_frames": 0, "input": 0, "forward": 0}, name
    for name, address in targets.items():
        with in_netns(lab.scanner_ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"on purpose", (address, 9))  # routed by R1 and R2: R2 asks for it by ARP first
        counted = wait_for(lambda name=name: lab.fence_counters(name), lambda c: c["input"] >= 1)
        assert counted["arp_frames"] >= 1 and counted["frames"] >= counted["arp_frames"] + 1, (name, counted)
        assert counted["forward"] == 0, (name, counted)


def wait_for(read: Any, done: Any, limit: float = 10.0) -> Any:
    """``read()`` until ``done`` says yes (or the scaled limit passes: then the last reading)."""
    end = time.monotonic() + scaled(limit)
    while True:
        value = read()
        if done(value) or time.monotonic() > end:
            return value
        time.sleep(0.05)


@pytest.mark.lab
def test_the_neighbour_entries_the_tables_reveal_outlast_the_kernels_garbage_collector(
    discovery_lab: DiscoveryLab,  # noqa: F811
) -> None:
    """What the garbage collector would do to them (a minute after their last use, once the machine's
    table holds 128 entries), flushing does at once: every entry the lab talked for stays, and the
    agent's table holds its gateway (its on-link route worked before ``up`` returned)."""
    lab = discovery_lab
    talkers = [item for item in NODES if item.talks_to]
    assert {item.name for item in talkers} == {"s", "r1", "linux"}
    macs = {item.address: item.mac for item in lab.expected_addresses()}
    for item in talkers:
        netns = lab.ns(item.name)
        lab.exec_in(netns, ["ip", "neigh", "flush", "all"], check=True)
        rows = {row["dst"]: row for row in lab.neighbour_rows(netns)}
        for address in item.talks_to:
            assert rows[address]["state"] == ["PERMANENT"], (item.name, rows.get(address))
            assert rows[address]["lladdr"] == macs[address], (item.name, rows[address])
    assert R1_LAN in {row["dst"] for row in lab.neighbour_rows(lab.scanner_ns)}


@pytest.mark.lab
def test_the_arp_only_hosts_answer_arp_and_nothing_else(discovery_lab: DiscoveryLab) -> None:  # noqa: F811
    lab = discovery_lab
    r1 = lab.ns("r1")
    names = {address: lab.host(address).netns.rsplit("-", 1)[1] for address in ARP_ONLY}
    before = {address: lab.fence_counters(name)["dropped"] for address, name in names.items()}
    for address in ARP_ONLY:
        lab.exec_in(r1, ["ip", "neigh", "flush", "to", address, "nud", "all"], check=True)  # pinned ones too
    lab.talk(r1, ARP_ONLY)  # resolved again: each host answered ARP
    for address in ARP_ONLY:
        entry = lab.exec_in(r1, ["ip", "neigh", "show", "to", address], check=True).stdout
        assert f"lladdr {lab.host(address).mac} " in entry, entry

    def from_r1(address: str) -> dict[str, bool]:
        with in_netns(r1):  # this thread only
            return probe(address)

    targets = (*ARP_ONLY, R2_TRANSIT)  # R2 answers all three: the probes can tell
    with ThreadPoolExecutor(len(targets)) as pool:
        answers = dict(zip(targets, pool.map(from_r1, targets), strict=True))
    assert answers.pop(R2_TRANSIT) == {"icmp": True, "tcp": True, "udp": True}
    assert answers == {address: {"icmp": False, "tcp": False, "udp": False} for address in ARP_ONLY}
    for address, name in names.items():  # the datagram of talk() and the three probes reached the host
        dropped = lab.fence_counters(name)["dropped"]
        assert dropped >= before[address] + 4, (address, before[address], dropped)


def probe(address: str) -> dict[str, bool]:
    """Whether ``address`` answers an ICMP echo, a TCP SYN to port 22 (accept or reset) and a UDP datagram
    to port 9 (an ICMP port unreachable), each waiting :data:`NO_ANSWER` seconds."""
    return {"icmp": echo(address), "tcp": tcp_answers(address), "udp": udp_answers(address)}


def echo(address: str) -> bool:
    """An ICMP echo request to ``address``: whether an echo reply from it came within :data:`NO_ANSWER`."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp:
        header = struct.pack("!BBHHH", 8, 0, 0, 0x6B73, 1)
        icmp.sendto(header[:2] + struct.pack("!H", checksum(header)) + header[4:], (address, 0))
        end = time.monotonic() + NO_ANSWER
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([icmp], [], [], left)
            if not ready:
                break
            packet, (source, _) = icmp.recvfrom(1500)
            if source == address and packet[(packet[0] & 0x0F) * 4] == 0:  # type 0: echo reply
                return True
    return False


def tcp_answers(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.settimeout(NO_ANSWER)
        try:
            tcp.connect((address, 22))
        except ConnectionRefusedError:
            return True
        except TimeoutError:
            return False
        return True


def udp_answers(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(NO_ANSWER)
        udp.connect((address, 9))
        udp.send(b"probe")
        try:
            udp.recv(1500)
        except ConnectionRefusedError:
            return True
        except TimeoutError:
            return False
        return True


def checksum(data: bytes) -> int:
    """The internet checksum of ``data`` (an even number of bytes)."""
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF
