"""system.info's interfaces and routes, read inside a lab namespace (and the classifier on its own)."""

from __future__ import annotations

import json
import sys

import pytest

from ksocket.collectors import sysinfo
from tests.lab import SCANNER_MAC, TUNNEL_LOCAL, TUNNEL_PEER, Lab
from tests.labtools import make_lab  # noqa: F401  (fixture)


@pytest.mark.lab
def test_interfaces_and_routes_of_the_scanner_namespace(make_lab) -> None:  # noqa: F811
    lab: Lab = make_lab().flat(3).routed(2).tunnel(1).up()
    code = "import json; from ksocket.collectors import system; from ksocket.collectors.base import NullContext; "
    code += "print(json.dumps(system.collect({}, NullContext())))"
    done = lab.run_in_scanner([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    interfaces = {item["name"]: item for item in document["interfaces"]}
    assert set(interfaces) == {"lo", "eth0", "tun0"}
    assert interfaces["lo"]["kind"] == "loopback"
    eth0 = interfaces["eth0"]
    assert eth0["kind"] == "ethernet" and eth0["mac"] == SCANNER_MAC and eth0["state"] == "up" and eth0["mtu"] == 1500
    assert {"address": "198.18.0.1", "prefixlen": 24} in [
        {"address": a["address"], "prefixlen": a["prefixlen"]} for a in eth0["addresses"]
    ]
    tun0 = interfaces["tun0"]
    assert tun0["kind"] == "point-to-point" and tun0["mac"] is None and tun0["driver"] == "tun"
    assert "POINTOPOINT" in tun0["flags"] and "NOARP" in tun0["flags"]
    assert tun0["addresses"][0]["address"] == TUNNEL_LOCAL and tun0["addresses"][0]["peer"] == TUNNEL_PEER
    routes = {(r["destination"], r["interface"]): r for r in document["routes"] if r["family"] == "ipv4"}
    connected = routes[("198.18.0.0/24", "eth0")]
    assert connected["gateway"] is None and connected["source"] == "198.18.0.1" and connected["scope"] == "link"
    assert routes[("198.18.16.0/24", "eth0")]["gateway"] == "198.18.0.254"
    assert routes[("198.18.33.0/24", "tun0")]["gateway"] is None
    assert routes[(f"{TUNNEL_PEER}/32", "tun0")]["source"] == TUNNEL_LOCAL


def test_interface_kinds() -> None:
    kind = sysinfo.interface_kind
    assert kind("loopback", None, ["LOOPBACK", "UP"]) == "loopback"
    assert kind("ether", "veth", ["BROADCAST", "UP"]) == "ethernet"
    assert kind("ether", "tun", ["BROADCAST"]) == "ethernet"  # a tap device
    assert kind("none", "tun", ["POINTOPOINT", "NOARP"]) == "point-to-point"
    assert kind("ppp", None, ["POINTOPOINT", "NOARP"]) == "point-to-point"
    assert kind("ipip", "ipip", ["POINTOPOINT", "NOARP"]) == "tunnel"
    assert kind("gre", "gre", ["POINTOPOINT", "NOARP"]) == "tunnel"
    assert kind("none", "wireguard", ["POINTOPOINT", "NOARP"]) == "tunnel"
    assert kind("can", None, ["NOARP"]) == "other"


def test_routes_from_iproute2_json() -> None:
    table = {
        "ipv4": [
            {"dst": "default", "gateway": "198.18.0.254", "dev": "eth0", "metric": 100, "protocol": "dhcp"},
            {"dst": "198.18.0.0/24", "dev": "eth0", "prefsrc": "198.18.0.1", "scope": "link", "protocol": "kernel"},
            {"dst": "198.18.99.0/24", "type": "blackhole"},
        ],
        "ipv6": [{"dst": "fe80::/64", "dev": "eth0", "metric": 256}],
    }
    routes = sysinfo.routes(table)
    assert routes[0] == {
        "destination": "0.0.0.0/0",
        "gateway": "198.18.0.254",
        "interface": "eth0",
        "metric": 100,
        "source": None,
        "type": "unicast",
        "protocol": "dhcp",
        "scope": None,
        "family": "ipv4",
    }
    assert routes[1]["source"] == "198.18.0.1" and routes[2]["type"] == "blackhole"
    assert routes[3]["destination"] == "fe80::/64" and routes[3]["family"] == "ipv6"
