"""The discovery loop's one fence: whether a candidate address may be sent anything at all.

:meth:`Fence.refusal` says why an address is dropped, or None when it may be probed, logged in to
or asked over SNMP. It is the only gate: the loop applies it when a candidate arrives and again
to every address of a sweep just before it leaves, so nothing (probe, login, SNMP request) ever
goes to a dropped address. Pure: no I/O, no clock.

An address is dropped, first reason first:

- ``invalid``: not an IP address;
- ``unsuitable``: unspecified, loopback, multicast, link-local, reserved (240/4), ``0.0.0.0/8``,
  the IPv4 limited broadcast;
- ``own``: one of the agent's own addresses;
- ``outside-allow`` / ``in-deny``: the operation's ``allow`` (default everything) and ``deny``;
- ``network-or-broadcast``: the network or broadcast address of a subnet the loop knows (the
  agent's, a seed's, a learned one; IPv4 prefixes /30 and wider, which have both);
- ``handled``: swept already, or dropped already.

IPv4-mapped IPv6 addresses are the IPv4 address they map (:mod:`ksocket.addresses`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import netaddr

from ksocket.addresses import fold_mapped

ZERO_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
EVERYTHING = ("0.0.0.0/0", "::/0")


def canonical(address: str) -> str | None:
    """``address`` in one spelling (IPv4-mapped folded, IPv6 compressed), or None when it is none."""
    if not isinstance(address, str) or len(address) > 64 or "%" in address:
        return None
    try:
        return str(ipaddress.ip_address(fold_mapped(address.strip())))
    except ValueError:
        return None


def unsuitable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address that cannot name another host from anywhere."""
    return (
        ip.is_unspecified
        or ip.is_loopback
        or ip.is_multicast
        or ip.is_link_local
        or ip.is_reserved
        or ip == LIMITED_BROADCAST
        or (ip.version == 4 and ip in ZERO_NETWORK)
    )


def boundaries(networks: Iterable[str]) -> set[str]:
    """The network and broadcast addresses of the IPv4 networks among ``networks`` (CIDRs) with both."""
    found: set[str] = set()
    for cidr in networks:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if network.version == 4 and network.prefixlen <= 30:
            found.add(str(network.network_address))
            found.add(str(network.broadcast_address))
    return found


@dataclass(frozen=True)
class Fence:
    """``allow`` and ``deny`` as address sets, the agent's own addresses, the known subnets' edges."""

    allow: netaddr.IPSet
    deny: netaddr.IPSet
    own: frozenset[str] = frozenset()
    edges: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        allow: Iterable[str] = EVERYTHING,
        deny: Iterable[str] = (),
        own: Iterable[str] = (),
        subnets: Iterable[str] = (),
    ) -> Fence:
        """A fence from specs (addresses, CIDRs, ``FIRST-LAST`` ranges) already checked."""
        from ksocket.fence import address_set

        return cls(
            address_set(allow),
            address_set(deny),
            frozenset(filter(None, map(canonical, own))),
            frozenset(boundaries(subnets)),
        )

    def with_subnets(self, subnets: Iterable[str]) -> Fence:
        """This fence, also dropping the network and broadcast addresses of ``subnets``."""
        edges = boundaries(subnets) - self.edges
        return dataclasses.replace(self, edges=self.edges | edges) if edges else self

    def refusal(self, address: str, handled: Collection[str] = ()) -> str | None:
        """Why ``address`` must not be sent anything (see the module's list), or None."""
        text = canonical(address)
        if text is None:
            return "invalid"
        ip = ipaddress.ip_address(text)
        if unsuitable(ip):
            return "unsuitable"
        if text in self.own:
            return "own"
        if text not in self.allow:
            return "outside-allow"
        if text in self.deny:
            return "in-deny"
        if text in self.edges:
            return "network-or-broadcast"
        if text in handled:
            return "handled"
        return None


__all__ = ["Fence", "boundaries", "canonical", "unsuitable"]
