"""IPv6 discovery in the lab: on-link hosts by Neighbor Solicitation and the echo to all nodes, routed ones by
ICMPv6 echo and TCP SYN through the kernel; every record names its family."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import dpkt
import pytest

from ksocket.collectors.discovery.targets import parse_targets, to_int
from tests.lab import SCANNER_MAC, Lab
from tests.labtools import make_lab, scan_in  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


@pytest.fixture
def lab6(make_lab) -> Lab:  # noqa: F811
    lab: Lab = make_lab().flat(6).routed(5).listen(2, segment="lan")
    lab.icmp_blocked(1, ports=(22,), segment="routed").icmp_blocked(1, ports=(22,), segment="lan")
    return lab.ipv6().up()


def address_of(lab: Lab, address6: str) -> str:
    """The IPv4 address of the host with ``address6``."""
    return next(host.address for host in lab.hosts if lab.address6(host.address) == address6)


def found(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {host["address"]: host for host in result["hosts"]}


def test_onlink_ipv6_hosts_are_found_by_neighbor_discovery_with_their_macs(lab6: Lab) -> None:
    # from ::1: the subnet-router anycast address (fd00:18::, the router's) answers solicitations too
    result = scan_in(lab6, {"targets": ["fd00:18::1-fd00:18::ff"], "ports": [22, 80], "rate": 2000, "dns": False})
    hosts = found(result)
    expected = {lab6.address6(address): mac for address, mac in lab6.truth("lan").items()}
    router = lab6.address6(next(iter(lab6.routers("lan"))))
    assert set(hosts) == set(expected) | {router}
    for address, mac in expected.items():
        host = hosts[address]
        assert host["family"] == "ipv6" and host["mac"] == mac and host["interface"] == "eth0"
        assert host["via"] is None and {"ndp", "icmp"} & set(host["evidence"])
        if lab6.host(address_of(lab6, address)).icmp:
            assert "icmp" in host["evidence"]
        else:  # it drops echo requests: the solicitation alone finds it
            assert host["evidence"][0] == "ndp" and "icmp" not in host["evidence"]
    for listener in (host for host in lab6.hosts if host.segment == "lan" and host.ports):
        assert "tcp/22" in hosts[lab6.address6(listener.address)]["evidence"]  # follow-up SYNs (a reset: v4 only)
    assert result["skipped"] == {"local": 1}
    assert result["targets"] == [
        "fd00:18::1/128",
        "fd00:18::2/127",
        "fd00:18::4/126",
        "fd00:18::8/125",
        "fd00:18::10/124",
        "fd00:18::20/123",
        "fd00:18::40/122",
        "fd00:18::80/121",
    ]


def test_routed_ipv6_hosts_are_found_through_the_kernel(lab6: Lab) -> None:
    result = scan_in(lab6, {"targets": ["fd00:18:16::1-fd00:18:16::ff"], "ports": [22], "rate": 2000, "dns": False})
    hosts = found(result)
    expected = {lab6.address6(address) for address in lab6.expected("routed")}
    assert set(hosts) == expected
    lan_router = lab6.address6(next(iter(lab6.routers("lan"))))
    for host in hosts.values():
        assert host["family"] == "ipv6" and host["mac"] is None
        assert host["interface"] == "eth0" and host["via"] == lan_router
    blocked = next(host for host in lab6.hosts if host.segment == "routed" and not host.icmp)
    assert hosts[lab6.address6(blocked.address)]["evidence"] == ["tcp/22"]  # it drops echo requests


def test_both_families_in_one_scan(lab6: Lab) -> None:
    lan = sorted(lab6.truth("lan"))[:2]
    targets = [*lan, *(lab6.address6(address) for address in lan)]
    result = scan_in(lab6, {"targets": targets, "methods": ["arp", "icmp"], "rate": 2000, "dns": False})
    hosts = found(result)
    assert set(hosts) == set(targets)
    assert {hosts[address]["family"] for address in lan} == {"ipv4"}
    assert hosts[lan[0]]["mac"] == hosts[lab6.address6(lan[0])]["mac"]
    assert result["addresses"] == 4


def test_no_ipv6_probe_leaves_for_an_address_outside_the_targets(lab6: Lab) -> None:
    lan = sorted((lab6.address6(address) for address in lab6.truth("lan")), key=ipaddress.ip_address)
    routed = [lab6.address6(address) for address in lab6.truth("routed")]
    targets = ["fd00:18::1-fd00:18::ff", "fd00:18:16::/120"]
    exclude = [lan[0], lan[-1], routed[0]]
    allowed = parse_targets(targets, exclude)
    with lab6.capture("scan0") as path:
        result = scan_in(lab6, {"targets": targets, "exclude": exclude, "ports": [22], "rate": 2000, "dns": False})
    asked: set[ipaddress.IPv6Address] = set()
    outside: list[str] = []
    with path.open("rb") as stream:
        for _, data in dpkt.pcap.Reader(stream):
            frame = dpkt.ethernet.Ethernet(data)
            if frame.src != bytes.fromhex(SCANNER_MAC.replace(":", "")) or not isinstance(frame.data, dpkt.ip6.IP6):
                continue
            destination = probe_destination(frame.data)
            if destination is None:  # the kernel's own (the router, a target, is asked for by it too)
                continue
            asked.add(destination)
            if destination != ALL_NODES and to_int(str(destination)) not in allowed:
                outside.append(str(destination))
    assert outside == []
    assert ALL_NODES in asked  # one echo to all nodes
    scanner = to_int(lab6.address6(lab6.scanner_address))
    assert {to_int(str(address)) for address in asked - {ALL_NODES}} == set(allowed) - {scanner}  # each one asked
    reported = set(found(result))
    assert not reported & set(exclude)
    assert reported == {address for address in map(lab6.address6, lab6.expected()) if to_int(address) in allowed}


ALL_NODES = ipaddress.ip_address("ff02::1")


def probe_destination(packet: dpkt.ip6.IP6) -> ipaddress.IPv6Address | None:
    """Whom an IPv6 packet of the scanner's asks: an echo's or a SYN's destination, a solicitation's target."""
    body = bytes(packet.data)
    if packet.nxt == dpkt.ip.IP_PROTO_TCP:
        return ipaddress.IPv6Address(packet.dst)
    if packet.nxt != dpkt.ip.IP_PROTO_ICMP6 or not body:
        return None
    if body[0] == 128:  # echo request
        return ipaddress.IPv6Address(packet.dst)
    if body[0] == 135:  # neighbor solicitation
        return ipaddress.IPv6Address(body[8:24])
    return None  # router solicitations, MLD reports: the kernel's own


def test_system_info_names_the_family_of_each_address(lab6: Lab) -> None:
    code = (
        "import json\nfrom ksocket.collectors import sysinfo\n"
        "print(json.dumps([i for i in sysinfo.interfaces() if i['name'] == 'eth0']))"
    )
    done = lab6.python_in_scanner(code)
    assert done.returncode == 0, done.stderr
    (eth0,) = json.loads(done.stdout)
    families = {item["address"]: item["family"] for item in eth0["addresses"]}
    assert families[lab6.scanner_address] == "ipv4"
    assert families[lab6.address6(lab6.scanner_address)] == "ipv6"
