"""Where each target goes: the kernel's IPv4 main routing table, its interfaces and neighbours.

:meth:`RoutingTable.from_kernel` reads them once (``ip -j``); :meth:`RoutingTable.decide` is a
longest-prefix match (lowest metric first among equals) that says, for one target, which interface
and source address to use, whether the target is on-link behind a link layer (ARP) or reached
through a gateway or over a link without a link layer (IP probes), or why it is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ksocket.collectors import sysinfo
from ksocket.collectors.discovery.targets import to_int, to_str

ETHERNET_LINK_TYPES = frozenset({"ether"})

# why a target is not probed
LOCAL = "local"  # one of this host's own addresses
UNREACHABLE = "unreachable"  # no route, or a blackhole/unreachable/prohibit route
BROADCAST = "broadcast"  # the network or broadcast address of an on-link subnet
NO_ADDRESS = "no-source"  # the outgoing interface has no IPv4 address
DOWN = "interface-down"
RESERVED = "reserved"  # 0/8, loopback, multicast, 240/4 and the limited broadcast: never a host's address

# (network, prefix length) of the ranges no probe is sent to, whatever the routing table says
RESERVED_NETWORKS = ((0x00000000, 8), (0x7F000000, 8), (0xE0000000, 4), (0xF0000000, 4))
# link-local autoconfiguration (and the clouds' metadata service): never a default target
LINK_LOCAL = (0xA9FE0000, 16)


def _within(address: int, network: tuple[int, int]) -> bool:
    base, prefixlen = network
    return address >> (32 - prefixlen) == base >> (32 - prefixlen)


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    link_type: str
    mac: bytes | None
    up: bool
    addresses: tuple[tuple[int, int, int | None], ...]  # (address, prefixlen, peer)
    carrier: bool = True  # False: up but unplugged (an empty docker0, a cable out)

    @property
    def ethernet(self) -> bool:
        return self.link_type in ETHERNET_LINK_TYPES and self.mac is not None

    def source_for(self, target: int) -> int | None:
        """The interface address in the same subnet as ``target``, else its first address."""
        for address, prefixlen, peer in self.addresses:
            mask = (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF
            if (peer is not None and peer == target) or (address & mask) == (target & mask):
                return address
        return self.addresses[0][0] if self.addresses else None


@dataclass(frozen=True)
class Route:
    network: int
    prefixlen: int
    dev: str
    gateway: int | None = None
    source: int | None = None
    metric: int = 0
    type: str = "unicast"

    def contains(self, address: int) -> bool:
        mask = (0xFFFFFFFF << (32 - self.prefixlen)) & 0xFFFFFFFF if self.prefixlen else 0
        return (address & mask) == self.network

    @property
    def first(self) -> int:
        return self.network

    @property
    def last(self) -> int:
        return self.network | ((1 << (32 - self.prefixlen)) - 1)


@dataclass(frozen=True)
class Decision:
    """How one target is probed: ``arp`` on-link, or ``ip`` (via ``gateway`` when set)."""

    method: str  # "arp" or "ip"
    interface: Interface
    source: int
    gateway: int | None
    route: Route


@dataclass
class RoutingTable:
    interfaces: dict[str, Interface]
    routes: list[Route]
    local: frozenset[int] = frozenset()
    neighbours: dict[tuple[str, int], bytes] = field(default_factory=dict)

    @classmethod
    def from_kernel(cls) -> RoutingTable:
        links = sysinfo.run_ip("link", "show")
        addrs = sysinfo.run_ip("-4", "addr", "show")
        table = sysinfo.run_ip("-4", "route", "show", "table", "main")
        neigh = sysinfo.run_ip("-4", "neigh", "show")
        return cls.from_json(links, addrs, table, neigh)

    @classmethod
    def from_json(
        cls,
        links: list[dict[str, Any]],
        addrs: list[dict[str, Any]],
        table: list[dict[str, Any]],
        neigh: list[dict[str, Any]],
    ) -> RoutingTable:
        by_index: dict[int, list[tuple[int, int, int | None]]] = {}
        for entry in addrs:
            for info in entry.get("addr_info", []):
                if info.get("family") != "inet" or "local" not in info:
                    continue
                peer = info.get("address")
                by_index.setdefault(int(entry["ifindex"]), []).append(
                    (
                        to_int(info["local"]),
                        int(info.get("prefixlen", 32)),
                        to_int(peer) if peer and peer != info["local"] else None,
                    )
                )
        interfaces: dict[str, Interface] = {}
        for link in links:
            name = str(link.get("ifname"))
            mac_text = str(link.get("address", ""))
            mac = bytes.fromhex(mac_text.replace(":", "")) if len(mac_text) == 17 else None
            interfaces[name] = Interface(
                name=name,
                index=int(link.get("ifindex", 0)),
                link_type=str(link.get("link_type", "")),
                mac=mac,
                up="UP" in link.get("flags", []),
                addresses=tuple(by_index.get(int(link.get("ifindex", 0)), [])),
                carrier="NO-CARRIER" not in link.get("flags", []),
            )
        routes: list[Route] = []
        for entry in table:
            dst = str(entry.get("dst", ""))
            if dst == "default":
                network, prefixlen = 0, 0
            elif "/" in dst:
                text, length = dst.split("/")
                network, prefixlen = to_int(text), int(length)
            else:
                network, prefixlen = to_int(dst), 32
            dev = entry.get("dev")
            gateway = entry.get("gateway")
            nexthops = entry.get("nexthops")
            if dev is None and isinstance(nexthops, list) and nexthops:  # multipath: take the first
                dev, gateway = nexthops[0].get("dev"), nexthops[0].get("gateway")
            routes.append(
                Route(
                    network=network,
                    prefixlen=prefixlen,
                    dev=str(dev or ""),
                    gateway=to_int(gateway) if gateway else None,
                    source=to_int(entry["prefsrc"]) if entry.get("prefsrc") else None,
                    metric=int(entry.get("metric", 0)),
                    type=str(entry.get("type", "unicast")),
                )
            )
        routes.sort(key=lambda route: (-route.prefixlen, route.metric))
        local = frozenset(address for iface in interfaces.values() for address, _, _ in iface.addresses)
        neighbours: dict[tuple[str, int], bytes] = {}
        for entry in neigh:
            lladdr = entry.get("lladdr")
            state = entry.get("state", [])
            if lladdr and "FAILED" not in state and "INCOMPLETE" not in state and entry.get("dst"):
                neighbours[(str(entry.get("dev")), to_int(str(entry["dst"])))] = bytes.fromhex(
                    str(lladdr).replace(":", "")
                )
        return cls(interfaces, routes, local, neighbours)

    def lookup(self, address: int) -> Route | None:
        for route in self.routes:
            if route.contains(address):
                return route
        return None

    def decide(self, target: int) -> Decision | str:
        """A :class:`Decision`, or the reason (a string) the target is not probed."""
        if target in self.local:
            return LOCAL
        if any(_within(target, network) for network in RESERVED_NETWORKS):
            return RESERVED
        route = self.lookup(target)
        if route is None or route.type != "unicast":
            return UNREACHABLE
        iface = self.interfaces.get(route.dev)
        if iface is None:
            return UNREACHABLE
        if not iface.up:
            return DOWN
        source = route.source if route.source is not None else iface.source_for(route.gateway or target)
        if source is None:
            return NO_ADDRESS
        if iface.ethernet and route.gateway is None:
            if route.prefixlen <= 30 and target in (route.first, route.last):
                return BROADCAST
            return Decision("arp", iface, source, None, route)
        return Decision("ip", iface, source, route.gateway if iface.ethernet else None, route)

    def onlink_networks(self) -> list[str]:
        """The networks of the IPv4 addresses of the interfaces that are up and plugged in, loopback and
        link-local (169.254/16) left out: the default targets."""
        networks: list[str] = []
        for iface in self.interfaces.values():
            if iface.link_type == "loopback" or not iface.up or not iface.carrier:
                continue
            for address, prefixlen, peer in iface.addresses:
                if _within(address, LINK_LOCAL):
                    continue
                if peer is not None:
                    networks.append(f"{to_str(peer)}/{prefixlen}")
                else:
                    mask = (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF
                    networks.append(f"{to_str(address & mask)}/{prefixlen}")
        return networks

    def gateways(self, overlapping: Iterable[Route]) -> set[tuple[str, int]]:
        """(interface, gateway) of the routes given that need a gateway's MAC."""
        found: set[tuple[str, int]] = set()
        for route in overlapping:
            iface = self.interfaces.get(route.dev)
            if route.gateway is not None and iface is not None and iface.ethernet:
                found.add((route.dev, route.gateway))
        return found
