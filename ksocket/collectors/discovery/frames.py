"""Probe frames built and reply frames parsed with dpkt: no I/O, bytes in, bytes out.

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
ETH_VLAN = 0x8100

TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_UNREACHABLE = 3
ICMP_ECHO = 8

ICMP_PAYLOAD = b"ksocket-probe\x00\x00\x00"


def _ip_bytes(address: int) -> bytes:
    return address.to_bytes(4, "big")


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
    """An IPv4 packet holding an ICMP echo request (no link layer)."""
    echo = dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=ICMP_PAYLOAD)
    icmp = dpkt.icmp.ICMP(type=ICMP_ECHO, code=0, data=echo)
    packet = dpkt.ip.IP(
        src=_ip_bytes(src_ip), dst=_ip_bytes(dst_ip), p=dpkt.ip.IP_PROTO_ICMP, ttl=64, id=seq, data=icmp
    )
    return bytes(packet)


def tcp_syn(src_ip: int, dst_ip: int, sport: int, dport: int, seq: int) -> bytes:
    """An IPv4 packet holding a TCP SYN with an MSS option (no link layer)."""
    tcp = dpkt.tcp.TCP(
        sport=sport,
        dport=dport,
        seq=seq,
        flags=TCP_SYN,
        win=1024,
        opts=b"\x02\x04\x05\xb4",  # MSS 1460
    )
    tcp.off = 6
    packet = dpkt.ip.IP(
        src=_ip_bytes(src_ip), dst=_ip_bytes(dst_ip), p=dpkt.ip.IP_PROTO_TCP, ttl=64, id=seq & 0xFFFF, data=tcp
    )
    return bytes(packet)


def frame(link_type: int, packet: bytes, *, src_mac: bytes | None = None, dst_mac: bytes | None = None) -> bytes:
    """An IPv4 ``packet`` as the link sends it: in an Ethernet header, or bare on raw links."""
    if link_type == DLT_EN10MB:
        if src_mac is None or dst_mac is None:
            raise ValueError("an Ethernet frame needs both MACs")
        return ethernet(dst_mac, src_mac, ETH_IP, packet)
    return packet


@dataclass(frozen=True, slots=True)
class ArpReply:
    """An ARP reply: ``src`` claims to be at ``mac``, answering ``dst``."""

    src: int  # the sender protocol address
    dst: int  # the target protocol address
    mac: bytes  # the sender hardware address


@dataclass(frozen=True, slots=True)
class EchoReply:
    """An ICMP echo reply from ``src`` to ``dst``."""

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
    """An ICMP destination unreachable from ``src`` about a packet to ``inner_dst``."""

    src: int
    dst: int
    inner_dst: int  # the destination of the packet it is about
    inner_protocol: int  # that packet's IP protocol
    port: int = 0  # that packet's TCP destination port (0 for other protocols)
    code: int = 0  # the ICMP code
    mac: bytes | None = None


Reply = ArpReply | EchoReply | TcpReply | Unreachable
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
        flags = payload.flags
        if not (flags & TCP_RST or (flags & TCP_SYN and flags & TCP_ACK)):
            return None
        return TcpReply(src, dst, payload.sport, payload.dport, payload.ack, flags, mac=mac)
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
    body = data[offset:]
    if ethertype == ETH_ARP:
        return _parse_arp(body, src_mac)
    if ethertype == ETH_IP:
        return _parse_ip(body, src_mac)
    return None


def _parse_sll(data: bytes) -> Reply | None:
    sll = dpkt.sll.SLL(data)
    mac = bytes(sll.hdr[:6]) if sll.hlen == 6 and len(sll.hdr) >= 6 else None
    body = data[16:]
    if sll.ethtype == ETH_ARP:
        return _parse_arp(body, mac)
    if sll.ethtype == ETH_IP:
        return _parse_ip(body, mac)
    return None


def _parse_sll2(data: bytes) -> Reply | None:
    if len(data) < 20:
        return None
    protocol = _int(data[0:2])
    halen = data[11]
    mac = bytes(data[12:18]) if halen == 6 else None
    body = data[20:]
    if protocol == ETH_ARP:
        return _parse_arp(body, mac)
    if protocol == ETH_IP:
        return _parse_ip(body, mac)
    return None


def parse(link_type: int, data: bytes) -> Reply | None:
    """The reply a captured frame of ``link_type`` holds, or ``None`` (never an exception)."""
    try:
        if link_type == DLT_EN10MB:
            return _parse_ethernet(data)
        if link_type in RAW_LINK_TYPES:
            return _parse_ip(data, None)
        if link_type == DLT_LINUX_SLL:
            return _parse_sll(data) if len(data) >= 16 else None
        if link_type == DLT_LINUX_SLL2:
            return _parse_sll2(data)
        return None
    except (dpkt.Error, struct.error, ValueError, IndexError, TypeError, AttributeError, KeyError, OverflowError):
        # dpkt raises NeedData/UnpackError, and struct/index errors on some truncations
        return None
