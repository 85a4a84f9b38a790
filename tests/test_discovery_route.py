"""Routed probes take the kernel's path: a policy rule and a second table send a target out another interface."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dpkt
import pytest

from tests.lab import SCANNER_LEG, SCANNER_LEG_MAC, SCANNER_MAC, Lab
from tests.labtools import make_lab, scan_in  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


def probed(capture: Path, mac: str) -> dict[str, int]:
    """ICMP and TCP packets the scanner sent from ``mac`` in a bridge-port capture, by destination."""
    counts: dict[str, int] = {}
    with capture.open("rb") as stream:
        for _, data in dpkt.pcap.Reader(stream):
            frame = dpkt.ethernet.Ethernet(data)
            if frame.src != bytes.fromhex(mac.replace(":", "")) or not isinstance(frame.data, dpkt.ip.IP):
                continue
            if frame.data.p in (dpkt.ip.IP_PROTO_ICMP, dpkt.ip.IP_PROTO_TCP):
                destination = dpkt.utils.inet_to_str(frame.data.dst)
                counts[destination] = counts.get(destination, 0) + 1
    return counts


def test_policy_routed_targets_are_probed_where_the_kernel_sends_them(make_lab) -> None:  # noqa: F811
    """A rule sends the lower half of the routed subnet to table 100 (out eth1 via 198.18.16.1); the main
    table sends the whole subnet out eth0 via the LAN's router. Each probe leaves where the kernel says."""
    policy = ipaddress.ip_network("198.18.16.0/25")
    lab: Lab = make_lab().flat(4).routed(12).icmp_blocked(2, ports=(22,), segment="routed")
    lab.policy_route(str(policy)).up()
    route = lab.run_in_scanner(["ip", "route", "get", "198.18.16.5"]).stdout
    assert "dev eth1" in route and f"src {SCANNER_LEG}" in route

    with lab.capture("scan0") as main_leg, lab.capture("scan1") as policy_leg:
        result = scan_in(lab, {"targets": [lab.cidr("routed")], "ports": [22, 80], "rate": 2000, "dns": False})

    hosts = {host["address"]: host for host in result["hosts"]}
    assert set(hosts) == lab.expected("routed")
    lan_router = next(iter(lab.routers("lan")))
    in_policy = {address for address in hosts if ipaddress.ip_address(address) in policy}
    assert in_policy and in_policy != set(hosts)  # both ways are taken
    for address, host in hosts.items():
        leg = ("eth1", "198.18.16.1") if address in in_policy else ("eth0", lan_router)
        assert (host["interface"], host["via"]) == leg
    for blocked in (host for host in lab.hosts if not host.icmp):
        assert hosts[blocked.address]["openPorts"] == [22] and "icmp" not in hosts[blocked.address]["evidence"]
    on_main, on_policy = probed(main_leg, SCANNER_MAC), probed(policy_leg, SCANNER_LEG_MAC)
    assert all(ipaddress.ip_address(address) in policy for address in on_policy)
    assert not any(ipaddress.ip_address(address) in policy for address in on_main)
    for address in hosts:
        assert (on_policy if address in in_policy else on_main).get(address, 0) >= 3  # the echo and both SYNs
    assert result["skipped"] == {"local": 1} and result["stats"]["refused"] == 0


def test_the_hosts_firewall_applies_to_routed_probes(make_lab) -> None:  # noqa: F811
    """An nftables output rule of the scanner's own refuses the probes to one routed host: the kernel
    never sends them (pcap injection went past the firewall), the scan counts them and goes on."""
    lab: Lab = make_lab().flat(2).routed(4).up()
    fenced, other = sorted(lab.addresses("routed"))[:2]
    rules = (
        "table inet ksfence {\n  chain output {\n    type filter hook output priority 0; policy accept;\n"
        f"    ip daddr {fenced} drop\n  }}\n}}\n"
    )
    done = lab.run_in_scanner(["nft", "-f", "-"], input=rules)
    assert done.returncode == 0, done.stderr
    with lab.capture("scan0") as path:
        result = scan_in(lab, {"targets": [fenced, other], "ports": [22], "rate": 1000, "dns": False})
    assert {host["address"] for host in result["hosts"]} == {other}
    assert result["stats"]["refused"] >= 4  # two tries of the echo and the SYN, at least
    assert fenced not in probed(path, SCANNER_MAC) and probed(path, SCANNER_MAC)[other] >= 2
