"""Probe frames built and reply frames parsed with dpkt: no I/O, bytes in, bytes out.

IPv4 and IPv6: an address's family (:func:`~.targets.family`) picks ICMP or ICMPv6, and IPv6's
on-link questions are a Neighbor Solicitation to the target's solicited-node group and one echo
request to all nodes (``ff02::1``) instead of ARP.

Link types: Ethernet (``DLT_EN10MB``), raw IP (``DLT_RAW``: 12 on Linux, 14 on OpenBSD,
``LINKTYPE_RAW`` 101 in files) and Linux cooked capture (``DLT_LINUX_SLL`` 113, ``SLL2`` 276).

:func:`parse` never raises: a truncated, malformed or hostile frame is ``None``. What it returns is
only what the frame claims, as one type per kind of reply; whether the claim answers one of our
probes (the cookie in the ICMP sequence number, the TCP acknowledgement number, the ARP target
address) is the :mod:`.matcher`'s check.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dpkt

from ksocket.collectors.discovery.targets import V6, family, from_packed, packed

DLT_EN10MB = 1
DLT_RAW_LINUX = 12
DLT_RAW_BSD = 14
LINKTYPE_RAW = 101
DLT_LINUX_SLL = 113
DLT_LINUX_SLL2 = 276
RAW_LINK_TYPES = frozenset({DLT_RAW_LINUX, DLT_RAW_BSD, LINKTYPE_RAW})
KNOWN_LINK_TYPES = frozenset({DLT_EN10MB, DLT_LINUX_SLL, DLT_LINUX_SLL2, *RAW_LINK_TYPES})

BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ETH_IP = 0x0800
ETH_ARP = 0x0806
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100

TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_UNREACHABLE = 3
ICMP_ECHO = 8

ICMP_PAYLOAD = b"ksocket-probe\x00\x00\x00"

IP_PROTO_TCP = 6
IP_PROTO_ICMPV6 = 58
ICMPV6_UNREACHABLE = 1
ICMPV6_ECHO = 128
ICMPV6_ECHO_REPLY = 129
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_SOLICITED = 0x40  # the flag of an advertisement that answers a solicitation
ND_SOURCE_LLADDR = 1
ND_TARGET_LLADDR = 2
ALL_NODES = V6 | 0xFF02 << 112 | 1  # ff02::1
_SOLICITED_NODE = V6 | 0xFF02 << 112 | 0x1FF << 24  # ff02::1:ff00:0/104


def _ip_bytes(address: int) -> bytes:
    return address.to_bytes(4, "big")


def solicited_node(address: int) -> int:
    """The solicited-node multicast group of an IPv6 address (ff02::1:ffXX:XXXX)."""
    return _SOLICITED_NODE | (address & 0xFFFFFF)


def multicast_mac(group: int) -> bytes:
    """The Ethernet address of an IPv6 multicast group (33:33 and its last 32 bits)."""
    return b"\x33\x33" + (group & 0xFFFFFFFF).to_bytes(4, "big")


def _ip6(src_ip: int, dst_ip: int, protocol: int, payload: dpkt.Packet, hop_limit: int = 64) -> bytes:
    """An IPv6 packet; dpkt fills in the upper layer's checksum (its ``sum`` left 0)."""
    packet = dpkt.ip6.IP6(
        v=6, src=packed(src_ip), dst=packed(dst_ip), nxt=protocol, hlim=hop_limit, plen=len(bytes(payload))
    )
    packet.data = payload
    return bytes(packet)


def _icmp6(type_: int, body: bytes) -> dpkt.icmp6.ICMP6:
    return dpkt.icmp6.ICMP6(type=type_, code=0, data=body)


def ethernet(dst_mac: bytes, src_mac: bytes, ethertype: int, payload: bytes) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(dst=dst_mac, src=src_mac, type=ethertype, data=payload))


def arp_request(src_mac: bytes, src_ip: int, dst_ip: int) -> bytes:
    """A broadcast ARP who-has ``dst_ip`` from ``src_ip`` (an Ethernet frame, padded to 60 bytes)."""
    arp = dpkt.arp.ARP(
        op=dpkt.arp.ARP_OP_REQUEST, sha=src_mac, spa=_ip_bytes(src_ip), tha=ZERO_MAC, tpa=_ip_bytes(dst_ip)
    )
    frame = ethernet(BROADCAST, src_mac, ETH_ARP, bytes(arp))
    return frame + b"\x00" * (60 - len(frame))


def icmp_echo(src_ip: int, dst_ip: int, ident: int, seq: int) -> bytes:
    """An IP packet holding an ICMP (IPv4) or ICMPv6 (IPv6) echo request (no link layer)."""
    if family(dst_ip) == 6:
        body = struct.pack("!HH", ident, seq) + ICMP_PAYLOAD
        return _ip6(src_ip, dst_ip, IP_PROTO_ICMPV6, _icmp6(ICMPV6_ECHO, body))
    echo = dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=ICMP_PAYLOAD)
    icmp = dpkt.icmp.ICMP(type=ICMP_ECHO, code=0, data=echo)
    packet = dpkt.ip.IP(
        src=_ip_bytes(src_ip), dst=_ip_bytes(dst_ip), p=dpkt.ip.IP_PROTO_ICMP, ttl=64, id=seq, data=icmp
    )
    return bytes(packet)


def tcp_syn(src_ip: int, dst_ip: int, sport: int, dport: int, seq: int) -> bytes:
    """An IP packet holding a TCP SYN with an MSS option (no link layer)."""
    tcp = dpkt.tcp.TCP(
        sport=sport,
        dport=dport,
        seq=seq,
        flags=TCP_SYN,
        win=1024,
        opts=b"\x02\x04\x05\xb4",  # MSS 1460
    )
    tcp.off = 6
    if family(dst_ip) == 6:
        return _ip6(src_ip, dst_ip, IP_PROTO_TCP, tcp)
    packet = dpkt.ip.IP(
        src=_ip_bytes(src_ip), dst=_ip_bytes(dst_ip), p=dpkt.ip.IP_PROTO_TCP, ttl=64, id=seq & 0xFFFF, data=tcp
    )
    return bytes(packet)


def neighbor_solicitation(src_mac: bytes, src_ip: int, target: int) -> bytes:
    """An Ethernet frame asking who has IPv6 ``target``, sent to its solicited-node group (hop limit 255)."""
    group = solicited_node(target)
    body = b"\x00" * 4 + packed(target) + bytes([ND_SOURCE_LLADDR, 1]) + src_mac
    packet = _ip6(src_ip, group, IP_PROTO_ICMPV6, _icmp6(ND_NEIGHBOR_SOLICIT, body), hop_limit=255)
    return ethernet(multicast_mac(group), src_mac, ETH_IPV6, packet)


def all_nodes_echo(src_mac: bytes, src_ip: int, ident: int, seq: int) -> bytes:
    """An Ethernet frame holding one ICMPv6 echo request to every node on the link (ff02::1)."""
    return ethernet(multicast_mac(ALL_NODES), src_mac, ETH_IPV6, icmp_echo(src_ip, ALL_NODES, ident, seq))


def frame(link_type: int, packet: bytes, *, src_mac: bytes | None = None, dst_mac: bytes | None = None) -> bytes:
    """An IP ``packet`` as the link sends it: in an Ethernet header, or bare on raw links."""
    if link_type == DLT_EN10MB:
        if src_mac is None or dst_mac is None:
            raise ValueError("an Ethernet frame needs both MACs")
        return ethernet(dst_mac, src_mac, ETH_IPV6 if packet[0] >> 4 == 6 else ETH_IP, packet)
    return packet


@dataclass(frozen=True, slots=True)
class ArpReply:
    """An ARP reply: ``src`` claims to be at ``mac``, answering ``dst``."""

    src: int  # the sender protocol address
    dst: int  # the target protocol address
    mac: bytes  # the sender hardware address


@dataclass(frozen=True, slots=True)
class NeighborAdvert:
    """A solicited IPv6 Neighbor Advertisement: ``src`` (the target address it advertises) is at ``mac``."""

    src: int  # the advertised address (the packet's own source may be a link-local one)
    dst: int
    mac: bytes  # the target link-layer address option, else the frame's source


@dataclass(frozen=True, slots=True)
class EchoReply:
    """An ICMP or ICMPv6 echo reply from ``src`` to ``dst``."""

    src: int
    dst: int
    echo_id: int  # the identifier, copied from the request
    echo_seq: int  # the sequence number, copied from the request
    mac: bytes | None = None  # link-layer source, when the link has one


@dataclass(frozen=True, slots=True)
class TcpReply:
    """A TCP SYN-ACK or RST from ``src``'s ``port`` to ``dst``'s ``our_port``."""

    src: int
    dst: int
    port: int  # the source port: the port probed
    our_port: int  # the destination port: the probe's source port
    ack: int  # the acknowledgement number
    flags: int
    mac: bytes | None = None


@dataclass(frozen=True, slots=True)
class Unreachable:
    """An ICMP (or ICMPv6) destination unreachable from ``src`` about a packet to ``inner_dst``."""

    src: int
    dst: int
    inner_dst: int  # the destination of the packet it is about
    inner_protocol: int  # that packet's IP protocol (ICMPv6 is 58)
    port: int = 0  # that packet's TCP destination port (0 for other protocols)
    code: int = 0  # the ICMP code
    mac: bytes | None = None


Reply = ArpReply | NeighborAdvert | EchoReply | TcpReply | Unreachable
"""What a captured frame claims to be, as far as discovery cares: one type per kind of reply."""


def _int(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _parse_arp(data: bytes, mac: bytes | None) -> Reply | None:
    arp = dpkt.arp.ARP(data)
    if arp.hrd != 1 or arp.pro != ETH_IP or arp.hln != 6 or arp.pln != 4 or arp.op != dpkt.arp.ARP_OP_REPLY:
        return None
    if len(arp.sha) != 6 or len(arp.spa) != 4 or len(arp.tpa) != 4:
        return None
    return ArpReply(_int(arp.spa), _int(arp.tpa), bytes(arp.sha))


def _parse_ip(data: bytes, mac: bytes | None) -> Reply | None:
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ip = dpkt.ip.IP(data)
    if ip.offset or ip.mf:  # a fragment: never one of our replies
        return None
    src, dst = _int(ip.src), _int(ip.dst)
    payload = ip.data
    if ip.p == dpkt.ip.IP_PROTO_ICMP and isinstance(payload, dpkt.icmp.ICMP):
        if payload.type == ICMP_ECHO_REPLY and isinstance(payload.data, dpkt.icmp.ICMP.Echo):
            return EchoReply(src, dst, payload.data.id, payload.data.seq, mac=mac)
        if payload.type == ICMP_UNREACHABLE:
            inner = bytes(payload.data)[4:] if payload.data is not None else b""  # skip unused/MTU word
            if len(inner) < 28 or inner[0] >> 4 != 4:
                return None
            ihl = (inner[0] & 0x0F) * 4
            if ihl < 20 or len(inner) < ihl + 4:
                return None
            protocol = inner[9]
            inner_dst = _int(inner[16:20])
            dport = struct.unpack("!H", inner[ihl + 2 : ihl + 4])[0] if protocol == dpkt.ip.IP_PROTO_TCP else 0
            return Unreachable(src, dst, inner_dst, protocol, port=dport, code=payload.code, mac=mac)
        return None
    if ip.p == dpkt.ip.IP_PROTO_TCP and isinstance(payload, dpkt.tcp.TCP):
        return _tcp_reply(src, dst, payload, mac)
    return None


def _tcp_reply(src: int, dst: int, tcp: dpkt.tcp.TCP, mac: bytes | None) -> Reply | None:
    flags = tcp.flags
    if not (flags & TCP_RST or (flags & TCP_SYN and flags & TCP_ACK)):
        return None
    return TcpReply(src, dst, tcp.sport, tcp.dport, tcp.ack, flags, mac=mac)


def _neighbor_advert(dst: int, body: bytes, mac: bytes | None) -> Reply | None:
    if len(body) < 24 or not body[4] & ND_SOLICITED:
        return None
    offset = 24
    while offset + 8 <= len(body) and body[offset + 1]:  # options: type, length in 8 bytes
        if body[offset] == ND_TARGET_LLADDR:
            mac = body[offset + 2 : offset + 8]
        offset += body[offset + 1] * 8
    return NeighborAdvert(from_packed(body[8:24]), dst, mac) if mac is not None else None


def _unreachable6(src: int, dst: int, body: bytes, code: int, mac: bytes | None) -> Reply | None:
    inner = body[8:]  # after type, code, checksum and the unused word
    if len(inner) < 44 or inner[0] >> 4 != 6:
        return None
    protocol = inner[6]
    dport = struct.unpack("!H", inner[42:44])[0] if protocol == IP_PROTO_TCP else 0
    return Unreachable(src, dst, from_packed(inner[24:40]), protocol, port=dport, code=code, mac=mac)


def _parse_ip6(data: bytes, mac: bytes | None) -> Reply | None:
    """An IPv6 packet's reply; extension headers are never on our replies."""
    if len(data) < 40 or data[0] >> 4 != 6:
        return None
    protocol = data[6]
    src, dst = from_packed(data[8:24]), from_packed(data[24:40])
    body = data[40 : 40 + struct.unpack("!H", data[4:6])[0]]
    if protocol == IP_PROTO_TCP:
        return _tcp_reply(src, dst, dpkt.tcp.TCP(body), mac)
    if protocol != IP_PROTO_ICMPV6 or len(body) < 8:
        return None
    kind = body[0]
    if kind == ICMPV6_ECHO_REPLY:
        ident, seq = struct.unpack("!HH", body[4:8])
        return EchoReply(src, dst, ident, seq, mac=mac)
    if kind == ND_NEIGHBOR_ADVERT:
        return _neighbor_advert(dst, body, mac)
    if kind == ICMPV6_UNREACHABLE:
        return _unreachable6(src, dst, body, body[1], mac)
    return None


def _parse_l3(ethertype: int, body: bytes, mac: bytes | None) -> Reply | None:
    if ethertype == ETH_ARP:
        return _parse_arp(body, mac)
    if ethertype == ETH_IP:
        return _parse_ip(body, mac)
    if ethertype == ETH_IPV6:
        return _parse_ip6(body, mac)
    return None


def _parse_ethernet(data: bytes) -> Reply | None:
    if len(data) < 14:
        return None
    src_mac = data[6:12]
    ethertype = _int(data[12:14])
    offset = 14
    while ethertype == ETH_VLAN and len(data) >= offset + 4:  # 802.1Q tags
        ethertype = _int(data[offset + 2 : offset + 4])
        offset += 4
    return _parse_l3(ethertype, data[offset:], src_mac)


def _parse_sll(data: bytes) -> Reply | None:
    sll = dpkt.sll.SLL(data)
    mac = bytes(sll.hdr[:6]) if sll.hlen == 6 and len(sll.hdr) >= 6 else None
    return _parse_l3(sll.ethtype, data[16:], mac)


def _parse_sll2(data: bytes) -> Reply | None:
    if len(data) < 20:
        return None
    protocol = _int(data[0:2])
    halen = data[11]
    mac = bytes(data[12:18]) if halen == 6 else None
    return _parse_l3(protocol, data[20:], mac)


def parse(link_type: int, data: bytes) -> Reply | None:
    """The reply a captured frame of ``link_type`` holds, or ``None`` (never an exception)."""
    try:
        if link_type == DLT_EN10MB:
            return _parse_ethernet(data)
        if link_type in RAW_LINK_TYPES:
            return _parse_ip6(data, None) if data[0] >> 4 == 6 else _parse_ip(data, None)
        if link_type == DLT_LINUX_SLL:
            return _parse_sll(data) if len(data) >= 16 else None
        if link_type == DLT_LINUX_SLL2:
            return _parse_sll2(data)
        return None
    except (dpkt.Error, struct.error, ValueError, IndexError, TypeError, AttributeError, KeyError, OverflowError):
        # dpkt raises NeedData/UnpackError, and struct/index errors on some truncations
        return None
