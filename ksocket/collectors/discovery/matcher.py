"""Reply matching: does a parsed reply answer one of our probes, and what does it show? No I/O, no state.

A reply counts only if it comes from a target, to one of the scan's source addresses, and carries
what only our probe to that address could have told it: the :class:`Cookies` in the ICMP echo
identifier and sequence number and in the TCP sequence number (acknowledged plus one), or, for an
ARP reply or a Neighbor Advertisement, a question we asked on that interface. IPv6 replies are the
same kinds (ICMPv6 echo reply, TCP over IPv6, ICMPv6 unreachable) plus the Neighbor Advertisement,
and the replies of on-link hosts to our one echo to all nodes (``ff02::1``): those carry the all-nodes
cookie and count, like a Neighbor Advertisement, only from a host we ask for on that interface.
One function per kind of reply returns either the :class:`Evidence` it gives or the reason to
:class:`Ignored` it:

=================== ==================================================================================
``not-a-target``     from an address the scan does not cover, or to one that is not ours
``arp-unasked``      an ARP reply, Neighbor Advertisement or all-nodes echo reply for an address we never
                     ask on that interface (a routed one)
``arp-mac``          an ARP reply or advertisement giving a broadcast, multicast or zero MAC: nobody's
``echo-cookie``      an echo reply without our identifier and sequence number for that address
``tcp-port``         a TCP reply to another port than our probes', or from a port we did not probe
``tcp-cookie``       a TCP reply not acknowledging our sequence number for that address and port
``unreachable-other`` an unreachable from someone else (a router) or about a port we did not probe
=================== ==================================================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container
from dataclasses import dataclass

from ksocket.collectors.discovery import frames, routes
from ksocket.collectors.discovery.targets import V6

ARP = "arp"  # answers the link-layer question: ARP (IPv4) or Neighbor Solicitation (IPv6)
ICMP = "icmp"
TCP = "tcp"
NDP = "ndp"  # the evidence of a Neighbor Advertisement
IP_PROTO_ICMP = 1
IP_PROTO_TCP = 6
IP_PROTO_ICMPV6 = 58


@dataclass(frozen=True, slots=True)
class Cookies:
    """What our probes carry that a reply must give back: from a per-scan secret, per address and port."""

    key: int
    echo_id: int  # the ICMP echo identifier of every probe
    sport: int  # the TCP source port of every probe

    @classmethod
    def random(cls) -> Cookies:
        return cls(
            key=int.from_bytes(os.urandom(4), "big"),
            echo_id=int.from_bytes(os.urandom(2), "big"),
            sport=40000 + int.from_bytes(os.urandom(2), "big") % 20000,
        )

    def tcp_seq(self, address: int, port: int) -> int:
        """The sequence number of our SYN to ``address``:``port`` (a reply acknowledges it plus one)."""
        folded = address ^ address >> 32 ^ address >> 64 ^ address >> 96 ^ address >> 128  # IPv4: itself
        value = (folded * 0x9E3779B1 ^ (port << 16) ^ self.key) & 0xFFFFFFFF
        value ^= value >> 15
        value = (value * 0x85EBCA6B) & 0xFFFFFFFF
        return value ^ (value >> 13)

    def echo_seq(self, address: int) -> int:
        """The sequence number of our echo request to ``address``."""
        return self.tcp_seq(address, 0) & 0xFFFF


@dataclass(frozen=True, slots=True)
class Asked:
    """The scheduler's view of what the scan asked, as far as matching needs it."""

    targets: Container[int]
    sources: Container[int]  # the scan's own addresses
    cookies: Cookies
    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Evidence:
    """A reply that answers one of our probes: the target is up."""

    target: int
    name: str  # as the host's record shows it: arp, ndp, icmp, tcp/PORT, icmp-unreachable
    answers: str | None  # which of our packets it answers (ARP, ICMP, TCP), None for no one packet
    port: int | None = None  # TCP: the port probed
    port_open: bool | None = None  # TCP: True for a clean SYN-ACK, False for any reset
    mac: bytes | None = None  # ARP (and NDP): the host's MAC
    route: routes.Decision | None = None  # ARP (and NDP): how the scan reaches the host, for the follow-ups


@dataclass(frozen=True, slots=True)
class Ignored:
    """A reply that answers none of our probes, and why."""

    reason: str


def _link_layer(target: int, name: str, mac: bytes | None, route: routes.Decision | None) -> Evidence | Ignored:
    if route is None:
        return Ignored("arp-unasked")
    if mac is None or mac[0] & 0x01 or not any(mac):
        return Ignored("arp-mac")
    return Evidence(target, name, ARP, mac=mac, route=route)


def match_arp(reply: frames.ArpReply, route: routes.Decision | None) -> Evidence | Ignored:
    """``route``: how the scan reaches the sender if it asks for it by ARP on the interface the reply
    came in on, else None (an ARP reply for any other address answers nothing we asked)."""
    return _link_layer(reply.src, ARP, reply.mac, route)


def match_neighbor(reply: frames.NeighborAdvert, route: routes.Decision | None) -> Evidence | Ignored:
    """A solicited Neighbor Advertisement: as :func:`match_arp`, for IPv6."""
    return _link_layer(reply.src, NDP, reply.mac, route)


def match_echo(reply: frames.EchoReply, cookies: Cookies) -> Evidence | Ignored:
    if reply.echo_id != cookies.echo_id or reply.echo_seq != cookies.echo_seq(reply.src):
        return Ignored("echo-cookie")
    return Evidence(reply.src, "icmp", ICMP)


def match_all_nodes_echo(
    reply: frames.EchoReply, cookies: Cookies, route: routes.Decision | None
) -> Evidence | Ignored:
    """An on-link host's reply to our IPv6 echo to all nodes: as :func:`match_arp`, it answers the
    link-layer question when we ask for the sender on that link (``route``)."""
    if reply.echo_id != cookies.echo_id or reply.echo_seq != cookies.echo_seq(frames.ALL_NODES):
        return Ignored("echo-cookie")
    return _link_layer(reply.src, ICMP, reply.mac, route)


def match_tcp(reply: frames.TcpReply, cookies: Cookies, ports: tuple[int, ...]) -> Evidence | Ignored:
    port = reply.port
    if reply.our_port != cookies.sport or port not in ports:
        return Ignored("tcp-port")
    if reply.ack != (cookies.tcp_seq(reply.src, port) + 1) & 0xFFFFFFFF:
        return Ignored("tcp-cookie")
    # a reset wins over a SYN in the same segment: only a clean SYN-ACK means the port is open
    port_open = not reply.flags & frames.TCP_RST
    return Evidence(reply.src, f"tcp/{port}", TCP, port=port, port_open=port_open)


def match_unreachable(reply: frames.Unreachable, ports: tuple[int, ...]) -> Evidence | Ignored:
    """An ICMP or ICMPv6 destination unreachable."""
    # only the target itself saying "port/protocol unreachable" shows it is up
    about_tcp = reply.inner_protocol == IP_PROTO_TCP
    if reply.inner_dst != reply.src or (about_tcp and reply.port not in ports):
        return Ignored("unreachable-other")
    if about_tcp:
        return Evidence(reply.src, "icmp-unreachable", TCP, port=reply.port)
    answers = ICMP if reply.inner_protocol in (IP_PROTO_ICMP, IP_PROTO_ICMPV6) else None
    return Evidence(reply.src, "icmp-unreachable", answers)


def match(reply: frames.Reply, asked: Asked, arp_route: Callable[[int], routes.Decision | None]) -> Evidence | Ignored:
    """The evidence ``reply`` gives, or why it is ignored; ``arp_route`` is :func:`match_arp`'s ``route``
    for an address (asked only of link-layer answers)."""
    if reply.src not in asked.targets or reply.dst not in asked.sources:
        return Ignored("not-a-target")
    if isinstance(reply, frames.ArpReply):
        return match_arp(reply, arp_route(reply.src))
    if isinstance(reply, frames.NeighborAdvert):
        return match_neighbor(reply, arp_route(reply.src))
    if isinstance(reply, frames.EchoReply):
        outcome = match_echo(reply, asked.cookies)
        if isinstance(outcome, Ignored) and reply.src >= V6 and reply.dst in asked.sources:
            return match_all_nodes_echo(reply, asked.cookies, arp_route(reply.src))
        return outcome
    if isinstance(reply, frames.TcpReply):
        return match_tcp(reply, asked.cookies, asked.ports)
    return match_unreachable(reply, asked.ports)
