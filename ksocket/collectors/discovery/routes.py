"""Where each target goes: the kernel's routes, its interfaces (IPv4 and IPv6 addresses) and neighbours.

:meth:`RoutingTable.from_kernel` reads the interfaces, the neighbours and the IPv4 main table once
(``ip -j``: the main table gives the default targets) and asks the kernel for each target's route
as ``ip route get`` does (:mod:`.kernelroute`: every policy rule and table considered); a table
built :meth:`~RoutingTable.from_json` alone (the tests) looks up its own routes instead, longest
prefix first, lowest metric among equals. :meth:`RoutingTable.decide` says, for one target, which
interface and source address to use, whether the target is on-link behind a link layer (``arp``:
ARP for IPv4, Neighbor Solicitation for IPv6) or reached through a gateway or over a link without a
link layer (``ip``: ICMP echo and TCP SYN, sent through the kernel), or why it is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ksocket.collectors import sysinfo
from ksocket.collectors.discovery.kernelroute import KernelRoute
from ksocket.collectors.discovery.targets import V6, family, to_int, to_str, width

ETHERNET_LINK_TYPES = frozenset({"ether"})

# why a target is not probed
LOCAL = "local"  # one of this host's own addresses
UNREACHABLE = "unreachable"  # no route, or a blackhole/unreachable/prohibit route
BROADCAST = "broadcast"  # the network or broadcast address of an on-link subnet
NO_ADDRESS = "no-source"  # the outgoing interface has no address of the target's family
DOWN = "interface-down"
RESERVED = "reserved"  # 0/8, loopback, multicast, 240/4, the limited broadcast; IPv6 ::/96, fe80::/10, ff00::/8

# (network, prefix length) of the ranges no probe is sent to, whatever the routing table says; the IPv6
# ones: unspecified, loopback and IPv4-compatible (::/96), link-local (it needs a zone), multicast
RESERVED_NETWORKS = (
    (0x00000000, 8),
    (0x7F000000, 8),
    (0xE0000000, 4),
    (0xF0000000, 4),
    (V6, 96),
    (V6 | 0xFE80 << 112, 10),
    (V6 | 0xFF00 << 112, 8),
)
# link-local autoconfiguration (and the clouds' metadata service): never a default target
LINK_LOCAL = (0xA9FE0000, 16)
MAIN_TABLE = 254

KernelLookup = Callable[[int], KernelRoute]


def _within(address: int, network: tuple[int, int]) -> bool:
    base, prefixlen = network
    if family(address) != family(base):
        return False
    bits = width(address)
    return address >> (bits - prefixlen) == base >> (bits - prefixlen)


def _mask(address: int, prefixlen: int) -> int:
    """``address``'s network of ``prefixlen`` bits (the family's tag kept)."""
    bits = width(address)
    host_bits = (1 << (bits - prefixlen)) - 1
    return address & ~host_bits


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    link_type: str
    mac: bytes | None
    up: bool
    addresses: tuple[tuple[int, int, int | None], ...]  # (address, prefixlen, peer), IPv4 and IPv6
    carrier: bool = True  # False: up but unplugged (an empty docker0, a cable out)

    @property
    def ethernet(self) -> bool:
        return self.link_type in ETHERNET_LINK_TYPES and self.mac is not None

    def addresses_of(self, family_of: int) -> list[tuple[int, int, int | None]]:
        """The addresses of the family of the address ``family_of``."""
        return [entry for entry in self.addresses if family(entry[0]) == family(family_of)]

    def source_for(self, target: int) -> int | None:
        """The interface address in the same subnet as ``target``, else its first of that family."""
        candidates = self.addresses_of(target)
        for address, prefixlen, peer in candidates:
            if (peer is not None and peer == target) or _mask(address, prefixlen) == _mask(target, prefixlen):
                return address
        return candidates[0][0] if candidates else None

    def subnet_edge(self, target: int) -> bool:
        """``target`` is the network or broadcast address of one of the interface's IPv4 subnets."""
        for address, prefixlen, peer in self.addresses_of(target):
            if peer is None and family(address) == 4 and prefixlen <= 30:
                network = _mask(address, prefixlen)
                if target in (network, network | ((1 << (32 - prefixlen)) - 1)):
                    return True
        return False


@dataclass(frozen=True)
class Route:
    network: int
    prefixlen: int
    dev: str
    gateway: int | None = None
    source: int | None = None
    metric: int = 0
    type: str = "unicast"
    table: int = MAIN_TABLE  # the table the route is in (the kernel's answer names it)

    def contains(self, address: int) -> bool:
        return family(address) == family(self.network) and _mask(address, self.prefixlen) == self.network


@dataclass(frozen=True)
class Decision:
    """How one target is probed: ``arp`` on-link (ARP, or for IPv6 a Neighbor Solicitation), or ``ip``
    (ICMP echo and TCP SYN through the kernel, via ``gateway`` when set)."""

    method: str  # "arp" or "ip"
    interface: Interface
    source: int
    gateway: int | None
    route: Route


@dataclass
class RoutingTable:
    interfaces: dict[str, Interface]
    routes: list[Route]  # the IPv4 main table
    local: frozenset[int] = frozenset()
    neighbours: dict[tuple[str, int], bytes] = field(default_factory=dict)
    kernel: KernelLookup | None = None  # ``ip route get``; None: look up :attr:`routes`

    @classmethod
    def from_kernel(cls, kernel: KernelLookup | None = None) -> RoutingTable:
        """The interfaces, neighbours and IPv4 main table of the kernel, each target's route asked of ``kernel``
        (without one, as a table read from JSON: the main table's own answer, enough for its on-link networks)."""
        links = sysinfo.run_ip("link", "show")
        addrs = sysinfo.run_ip("addr", "show")
        table = sysinfo.run_ip("-4", "route", "show", "table", "main")
        neigh = sysinfo.run_ip("neigh", "show")
        read = cls.from_json(links, addrs, table, neigh)
        read.kernel = kernel
        return read

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
                if info.get("family") not in ("inet", "inet6") or "local" not in info:
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
        """The route to ``address``: the kernel's answer, or without one the longest prefix of :attr:`routes`."""
        if self.kernel is not None:
            return self._kernel_route(address, self.kernel(address))
        for route in self.routes:
            if route.contains(address):
                return route
        return None

    def _kernel_route(self, address: int, answer: KernelRoute) -> Route:
        dev = next((iface.name for iface in self.interfaces.values() if iface.index == answer.oif), "")
        return Route(address, width(address), dev, answer.gateway, answer.source, type=answer.type, table=answer.table)

    def decide(self, target: int) -> Decision | str:
        """A :class:`Decision`, or the reason (a string) the target is not probed."""
        if target in self.local:
            return LOCAL
        if any(_within(target, network) for network in RESERVED_NETWORKS):
            return RESERVED
        route = self.lookup(target)
        if route is not None and route.type in (LOCAL, BROADCAST):
            return route.type
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
            if iface.subnet_edge(target):
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
            for address, prefixlen, peer in iface.addresses_of(0):
                if _within(address, LINK_LOCAL):
                    continue
                network = peer if peer is not None else _mask(address, prefixlen)
                networks.append(f"{to_str(network)}/{prefixlen}")
        return networks
