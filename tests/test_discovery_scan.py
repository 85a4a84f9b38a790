"""networks.scan (intranet) against the lab: recall, no false positives, evidence, the paths, safety, timing."""

from __future__ import annotations

import json
import sys
from typing import Any

import dpkt
import netaddr
import pytest

from ksocket.collectors.discovery.targets import parse_targets, to_int
from tests.lab import SCANNER_MAC, TUNNEL_PEER, Lab
from tests.labtools import make_lab, scan_in, scan_lab  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


def found(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {host["address"]: host for host in result["hosts"]}


def test_flat_lan_full_recall_no_false_positives(scan_lab: Lab) -> None:  # noqa: F811
    result = scan_in(scan_lab, {"targets": [scan_lab.cidr("lan")]})
    hosts = found(result)
    assert set(hosts) == scan_lab.expected("lan")  # every host and the router; nothing else
    truth = scan_lab.truth("lan")
    for address, mac in truth.items():
        host = hosts[address]
        assert host["mac"] == mac and host["interface"] == "eth0" and host["via"] is None
        assert host["evidence"][0] == "arp" and "icmp" in host["evidence"]
        assert host["rtt"] is not None and 0 <= host["rtt"] < 1000
    vendors = {hosts[a]["vendor"] for a, mac in truth.items() if mac.startswith("00:50:56")}
    assert vendors == {"VMware, Inc."}
    assert all(hosts[a]["vendor"] is None for a, mac in truth.items() if mac.startswith("52:54:00"))
    for address in truth:
        host = scan_lab.host(address)
        assert hosts[address]["openPorts"] == sorted(host.ports)
        if address in scan_lab.names:
            assert hosts[address]["name"] == scan_lab.names[address]
    assert result["skipped"] == {"broadcast": 2, "local": 1}
    assert result["stats"]["tries"] == 2  # a clean LAN: one retransmission to silent addresses


def test_routed_subnet_through_the_gateway(scan_lab: Lab) -> None:  # noqa: F811
    result = scan_in(scan_lab, {"targets": [scan_lab.cidr("routed")], "rate": 4000})
    hosts = found(result)
    assert set(hosts) == scan_lab.expected("routed"), result["stats"]
    router = next(address for address, segment in scan_lab.routers("lan").items())
    for address in scan_lab.truth("routed"):
        assert (
            hosts[address]["via"] == router and hosts[address]["mac"] is None and hosts[address]["interface"] == "eth0"
        )
    paths = {(path["stage"], path["gateway"]) for path in result["stats"]["paths"]}
    assert ("ip", router) in paths


def test_hosts_dropping_icmp_are_found_by_tcp_with_their_ports(scan_lab: Lab) -> None:  # noqa: F811
    blocked = [host for host in scan_lab.hosts if not host.icmp]
    assert len(blocked) == 4
    result = scan_in(
        scan_lab, {"targets": [host.address for host in blocked] + [scan_lab.hosts[-1].address], "rate": 4000}
    )
    hosts = found(result)
    assert set(hosts) == {host.address for host in blocked} | {scan_lab.hosts[-1].address}
    for host in blocked:
        seen = hosts[host.address]
        assert "icmp" not in seen["evidence"]
        assert seen["openPorts"] == [22, 443]
        assert {"tcp/22", "tcp/443", "tcp/80"} <= set(seen["evidence"])  # 80 answered with a reset
        assert 80 in seen["closedPorts"]


def test_tunnel_without_link_layer_raw_ip(scan_lab: Lab) -> None:  # noqa: F811
    result = scan_in(scan_lab, {"targets": [scan_lab.cidr("tunnel"), TUNNEL_PEER], "rate": 4000})
    hosts = found(result)
    assert set(hosts) == scan_lab.expected("tunnel") | {TUNNEL_PEER}, result["stats"]
    assert {host["interface"] for host in hosts.values()} == {"tun0"}
    assert all(host["mac"] is None and host["via"] is None for host in hosts.values())
    link_types = {path["linkType"] for path in result["stats"]["paths"] if path["interface"] == "tun0"}
    assert link_types == {12}  # DLT_RAW


def test_cooked_capture_with_raw_socket_sending(scan_lab: Lab) -> None:  # noqa: F811
    """Capturing on "any" gives Linux cooked frames and no pcap injection: the raw socket sends."""
    result = scan_in(scan_lab, {"targets": [scan_lab.cidr("tunnel")], "rate": 4000}, capture_device="any")
    assert set(found(result)) == scan_lab.expected("tunnel")
    assert {path["linkType"] for path in result["stats"]["paths"]} == {113}  # DLT_LINUX_SLL


def test_default_targets_are_the_onlink_networks(scan_lab: Lab) -> None:  # noqa: F811
    result = scan_in(scan_lab, {"methods": ["arp", "icmp"], "rate": 4000})
    assert set(result["targets"]) == {scan_lab.cidr("lan"), f"{TUNNEL_PEER}/32"}
    assert set(found(result)) == scan_lab.expected("lan") | {TUNNEL_PEER}


def test_no_probe_leaves_for_an_address_outside_the_targets(scan_lab: Lab) -> None:  # noqa: F811
    lan = sorted(scan_lab.truth("lan"), key=to_int)
    excluded_live = lan[3:9]
    targets = [scan_lab.cidr("lan"), scan_lab.cidr("routed")]
    exclude = [f"{excluded_live[0]}-{excluded_live[-1]}", "198.18.0.128/26", "198.18.16.0/25"]
    allowed = parse_targets(targets, exclude)
    with scan_lab.capture("scan0") as path:
        result = scan_in(scan_lab, {"targets": targets, "exclude": exclude, "rate": 4000})
    gateway = to_int(next(iter(scan_lab.routers("lan"))))
    scanner_mac = bytes.fromhex(SCANNER_MAC.replace(":", ""))
    probes = 0
    outside: list[str] = []
    routed = netaddr.IPNetwork(scan_lab.cidr("routed"))
    kernel_sent: set[int] = set()
    with path.open("rb") as stream:
        for _, data in dpkt.pcap.Reader(stream):
            frame = dpkt.ethernet.Ethernet(data)
            if frame.src != scanner_mac:
                continue
            if isinstance(frame.data, dpkt.arp.ARP):
                if frame.data.op != dpkt.arp.ARP_OP_REQUEST:  # the kernel answering a host's own question
                    continue
                destination = int.from_bytes(frame.data.tpa, "big")
                if destination == gateway:  # resolving the next hop, not a probe
                    continue
            elif isinstance(frame.data, dpkt.ip.IP):
                destination = int.from_bytes(frame.data.dst, "big")
            else:
                outside.append(f"ethertype {frame.type:#x}")
                continue
            probes += 1
            if isinstance(frame.data, dpkt.ip.IP) and destination >= routed.first:
                kernel_sent.add(destination)
            if destination not in allowed:
                outside.append(str(dpkt.utils.inet_to_str(destination.to_bytes(4, "big"))))
    assert probes >= len(allowed)  # every target got at least one probe, and the capture saw them
    assert outside == []
    # the routed targets' probes, sent through the kernel's raw sockets, were all seen too
    assert kernel_sent == {address for address in allowed if address >= routed.first}
    assert result["stats"]["refused"] == 0
    reported = set(found(result))
    assert not reported & set(excluded_live)
    assert reported == {a for a in scan_lab.expected() if to_int(a) in allowed}


def test_lossy_lan_still_finds_everyone(scan_lab: Lab) -> None:  # noqa: F811
    scan_lab.loss(25)
    try:
        result = scan_in(scan_lab, {"targets": [scan_lab.cidr("lan")], "methods": ["arp"], "dns": False})
    finally:
        scan_lab.loss(0)
    hosts = set(found(result))
    expected = scan_lab.expected("lan")
    assert hosts <= expected  # never a false positive
    assert len(hosts) >= len(expected) - 1, result["stats"]
    assert result["stats"]["lossEstimate"] > 0.15  # 25% each way: ~44% of tries go unanswered
    assert result["stats"]["tries"] >= 4


def test_rate_stays_within_five_percent(make_lab) -> None:  # noqa: F811
    lab: Lab = make_lab().flat(8, prefixlen=20).up()
    rate = 2000
    with lab.capture("scan0", "arp") as path:
        result = scan_in(lab, {"targets": [lab.cidr("lan")], "methods": ["arp"], "rate": rate, "dns": False})
    assert set(found(result)) == lab.expected("lan")
    scanner_mac = bytes.fromhex(SCANNER_MAC.replace(":", ""))
    stamps = []
    with path.open("rb") as stream:
        for stamp, data in dpkt.pcap.Reader(stream):
            frame = dpkt.ethernet.Ethernet(data)
            if frame.src == scanner_mac and isinstance(frame.data, dpkt.arp.ARP) and frame.data.op == 1:
                stamps.append(stamp)
    assert len(stamps) >= 4093  # the whole /20 but the network, broadcast and own address
    start = stamps[0]
    window = 1.8  # the sweep of 4,093 addresses at 2,000/s lasts ~2 s
    measured = sum(1 for stamp in stamps if stamp < start + window) / window
    print(f"measured {measured:.0f} packets/s over {window} s (asked {rate})")
    assert abs(measured - rate) / rate <= 0.05
    for offset in (0.0, 0.5, 1.0):  # and no half second goes over the cap by more than 5%
        count = sum(1 for stamp in stamps if start + offset <= stamp < start + offset + 0.5)
        assert count <= rate * 0.5 * 1.05


CANCEL_SNIPPET = """
import json, sys, time
from ksocket.collectors.base import Cancelled
from ksocket.collectors import discovery

class Context:
    def __init__(self):
        self.cancel_at = time.monotonic() + 1.0
        self.calls = []
    def progress(self, done, total):
        self.calls.append((done, total))
        self.check_cancelled()
    def check_cancelled(self):
        if time.monotonic() >= self.cancel_at:
            raise Cancelled()

context = Context()
try:
    discovery.collect(json.loads(sys.argv[1]), context)
    outcome = "finished"
except Cancelled as error:
    outcome = error.code
print(json.dumps({"outcome": outcome, "late": time.monotonic() - context.cancel_at, "calls": context.calls}))
"""


def test_cancel_stops_within_a_second_and_progress_is_reported(scan_lab: Lab) -> None:  # noqa: F811
    params = {"targets": [scan_lab.cidr("routed")], "rate": 200, "dns": False}  # ~12 s of probes
    done = scan_lab.run_in_scanner([sys.executable, "-c", CANCEL_SNIPPET, json.dumps(params)], timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "cancelled"
    assert report["late"] < 1.0
    calls = report["calls"]
    assert len(calls) >= 5 and all(total == 256 for _, total in calls)
    dones = [count for count, _ in calls]
    assert dones == sorted(dones) and 0 < dones[-1] < 256


def test_progress_reaches_the_total(scan_lab: Lab) -> None:  # noqa: F811
    code = CANCEL_SNIPPET.replace("time.monotonic() + 1.0", "time.monotonic() + 600")
    params = {"targets": [scan_lab.cidr("lan")], "methods": ["arp"], "dns": False}
    done = scan_lab.run_in_scanner([sys.executable, "-c", code, json.dumps(params)], timeout=60)
    report = json.loads(done.stdout)
    assert report["outcome"] == "finished"
    assert report["calls"][-1] == [256, 256]


def test_ksocket_scan_command(scan_lab: Lab) -> None:  # noqa: F811
    command = [sys.executable, "-m", "ksocket.cli", "scan", scan_lab.cidr("lan"), "--ports", "22,80", "--rate", "4000"]
    table = scan_lab.run_in_scanner(command)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ADDRESS", "MAC", "VENDOR"]
    listener = next(host for host in scan_lab.hosts if host.segment == "lan" and host.ports)
    row = next(line for line in lines if line.startswith(listener.address + " "))
    assert listener.mac in row and "22,80" in row
    assert f"{len(scan_lab.expected('lan'))} hosts up among 256 addresses" in table.stdout
    as_json = scan_lab.run_in_scanner([*command, "--json", "--exclude", listener.address])
    document = json.loads(as_json.stdout)
    assert document["mode"] == "intranet" and listener.address not in found(document)
    bad = scan_lab.run_in_scanner([sys.executable, "-m", "ksocket.cli", "scan", "198.18.0.0/14"])
    assert bad.returncode == 2 and "ksocket: error:" in bad.stderr and bad.stdout == ""


def test_memory_stays_bounded_on_a_65536_address_scan(make_lab) -> None:  # noqa: F811
    """An on-link /16: 65,536 addresses drawn lazily and every one ARPed, nearly all silent (in flight,
    retried, parked); the scan allocates about what a /24's does."""
    lab: Lab = make_lab().flat(8, prefixlen=16).up()
    code = (
        "import json, re, sys\n"
        "import netaddr.eui.ieee\n"
        "from ksocket.collectors import discovery\n"
        "from ksocket.collectors.base import NullContext\n"
        "def kib(field):\n"
        "    return int(re.search(field + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # the high-water mark starts again from here\n"
        "before = kib('VmRSS')\n"
        "result = discovery.collect(json.loads(sys.argv[1]), NullContext())\n"
        "print(json.dumps({'growth': kib('VmHWM') - before, 'up': result['hostsUp'],"
        " 'probed': result['addresses'] - sum(result['skipped'].values())}))\n"
    )

    def run(target: str) -> dict[str, Any]:
        params = {"targets": [target], "methods": ["arp"], "rate": 20000, "dns": False, "timeout": 0.2}
        done = lab.run_in_scanner([sys.executable, "-c", code, json.dumps(params)], timeout=120)
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    small = run("198.18.0.0/24")
    large = run("198.18.0.0/16")
    assert large["up"] == len(lab.expected("lan"))
    assert large["probed"] == 65536 - 3  # all but the network and broadcast addresses and the scanner's own
    print(f"peak RSS growth during the scan: /24 {small['growth']} KiB, /16 {large['growth']} KiB")
    assert large["growth"] - small["growth"] < 8 * 1024  # 65,536 probes held at once would be some 15 MiB
