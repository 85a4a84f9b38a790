"""IPv6 and the kernel's routes without a network: targets, frames, the matcher, decisions, the netlink codec."""

from __future__ import annotations

import errno
import random
import socket
import struct

import dpkt
import pytest

from ksocket.collectors.base import InvalidParams
from ksocket.collectors.discovery import frames, kernelroute, matcher, routes
from ksocket.collectors.discovery.kernelroute import KernelRoute
from ksocket.collectors.discovery.matcher import Asked, Cookies, Evidence, Ignored
from ksocket.collectors.discovery.targets import V6, family, packed, parse_targets, to_int, to_str

SCANNER = to_int("198.18.0.1")
SCANNER6 = to_int("fd00:18::1")
HOST6 = to_int("fd00:18::7")
ROUTED6 = to_int("fd00:18:16::5")
GATEWAY6 = to_int("fd00:18::fe")
SCANNER_MAC = bytes.fromhex("026b73000001")
HOST_MAC = bytes.fromhex("00163e000007")
ETH0 = routes.Interface(
    "eth0", 2, "ether", SCANNER_MAC, True, ((SCANNER, 24, None), (SCANNER6, 64, None), (to_int("fe80::1"), 64, None))
)
ETH1 = routes.Interface("eth1", 3, "ether", bytes.fromhex("026b73000002"), True, ((to_int("198.18.16.250"), 32, None),))
COOKIES = Cookies(key=0x12345678, echo_id=0x4242, sport=45000)


# --- targets -----------------------------------------------------------------------------------


def test_ipv6_targets_ranges_and_mapped_addresses() -> None:
    targets = parse_targets(["fd00:18::/126", "fd00:18::10-fd00:18::11", "::ffff:198.18.0.9", "198.18.0.1"])
    assert [to_str(address) for address in targets] == [
        "198.18.0.1",
        "198.18.0.9",  # IPv4-mapped: the IPv4 address it maps
        "fd00:18::",
        "fd00:18::1",
        "fd00:18::2",
        "fd00:18::3",
        "fd00:18::10",
        "fd00:18::11",
    ]
    assert [family(address) for address in targets] == [4, 4, 6, 6, 6, 6, 6, 6]
    assert targets.cidrs() == ["198.18.0.1/32", "198.18.0.9/32", "fd00:18::/126", "fd00:18::10/127"]
    assert len(parse_targets("fd00:18::/112")) == 65_536
    assert to_int("198.18.0.1") < V6 <= to_int("::")  # the families never meet, IPv4 first
    excluded = parse_targets("fd00:18::/120", ["fd00:18::80/121", "fd00:18::5"])
    assert len(excluded) == 127 and to_int("fd00:18::5") not in excluded and to_int("fd00:18::4") in excluded


@pytest.mark.parametrize(
    "bad", ["fd00:18::/111", "fd00::/64", "fd00:18::g", "fd00:18::1-198.18.0.9", "fd00:18::9-fd00:18::1", "fd00::1/129"]
)
def test_bad_ipv6_targets_are_invalid_params(bad: str) -> None:
    with pytest.raises(InvalidParams):
        parse_targets([bad])


def test_a_target_set_numbers_its_members_for_compact_parking() -> None:
    targets = parse_targets(["198.18.0.250-198.18.1.2", "fd00:18::/127", "fd00:18:16::5"])
    members = list(targets)
    assert [targets.index(address) for address in members] == list(range(len(members)))
    assert [targets.at(position) for position in range(targets.size)] == members


# --- frames ------------------------------------------------------------------------------------


def test_neighbor_solicitation_and_the_echo_to_all_nodes() -> None:
    frame = dpkt.ethernet.Ethernet(frames.neighbor_solicitation(SCANNER_MAC, SCANNER6, HOST6))
    assert frame.dst == bytes.fromhex("3333ff000007") and frame.type == frames.ETH_IPV6
    packet = frame.data
    assert packet.dst == packed(to_int("ff02::1:ff00:7")) and packet.src == packed(SCANNER6) and packet.hlim == 255
    body = bytes(packet.data)
    assert body[0] == frames.ND_NEIGHBOR_SOLICIT and body[8:24] == packed(HOST6)
    assert body[24:32] == bytes([frames.ND_SOURCE_LLADDR, 1]) + SCANNER_MAC
    assert _icmp6_checksum_ok(packet)
    echo = dpkt.ethernet.Ethernet(frames.all_nodes_echo(SCANNER_MAC, SCANNER6, 0x4242, 0x99))
    assert echo.dst == bytes.fromhex("333300000001") and echo.data.dst == packed(frames.ALL_NODES)
    assert bytes(echo.data.data)[:1] == bytes([frames.ICMPV6_ECHO]) and _icmp6_checksum_ok(echo.data)


def _icmp6_checksum_ok(packet: dpkt.ip6.IP6) -> bool:
    body = bytes(packet.data)
    pseudo = packet.src + packet.dst + struct.pack("!IxxxB", len(body), packet.nxt)
    return dpkt.in_cksum(pseudo + body) == 0


def test_ipv6_probes_are_what_they_claim() -> None:
    echo = dpkt.ip6.IP6(frames.icmp_echo(SCANNER6, ROUTED6, 0x1234, 0x77))
    assert echo.nxt == frames.IP_PROTO_ICMPV6 and bytes(echo.data)[:1] == bytes([frames.ICMPV6_ECHO])
    assert bytes(echo.data)[4:8] == struct.pack("!HH", 0x1234, 0x77) and _icmp6_checksum_ok(echo)
    syn = dpkt.ip6.IP6(frames.tcp_syn(SCANNER6, ROUTED6, 40000, 22, 0xDEADBEEF))
    assert syn.nxt == frames.IP_PROTO_TCP and _icmp6_checksum_ok(syn)  # the same pseudo-header sum for TCP
    tcp = dpkt.tcp.TCP(bytes(syn.data))
    assert tcp.flags == frames.TCP_SYN and tcp.seq == 0xDEADBEEF and tcp.dport == 22
    framed = dpkt.ethernet.Ethernet(frames.frame(frames.DLT_EN10MB, bytes(syn), src_mac=SCANNER_MAC, dst_mac=HOST_MAC))
    assert framed.type == frames.ETH_IPV6


def _ip6(src: int, dst: int, protocol: int, body: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(body), protocol, 64) + packed(src) + packed(dst) + body


def _advert(flags: int, option: bytes) -> bytes:
    return bytes([frames.ND_NEIGHBOR_ADVERT, 0, 0, 0, flags, 0, 0, 0]) + packed(HOST6) + option


def ipv6_replies() -> list[tuple[bytes, frames.Reply]]:
    """Raw IPv6 reply packets and what they parse as."""
    target_lladdr = bytes([frames.ND_TARGET_LLADDR, 1]) + HOST_MAC
    echo = bytes([frames.ICMPV6_ECHO_REPLY, 0, 0, 0]) + struct.pack("!HH", 7, 9) + b"payload"
    syn_ack = bytes(dpkt.tcp.TCP(sport=22, dport=45000, ack=1234, flags=frames.TCP_SYN | frames.TCP_ACK))
    inner = _ip6(SCANNER6, ROUTED6, frames.IP_PROTO_TCP, struct.pack("!HH", 45000, 443) + bytes(16))
    unreachable = bytes([frames.ICMPV6_UNREACHABLE, 4, 0, 0, 0, 0, 0, 0]) + inner
    return [
        (_ip6(HOST6, SCANNER6, 58, _advert(0x60, target_lladdr)), frames.NeighborAdvert(HOST6, SCANNER6, HOST_MAC)),
        (_ip6(HOST6, SCANNER6, 58, echo), frames.EchoReply(HOST6, SCANNER6, 7, 9)),
        (_ip6(ROUTED6, SCANNER6, 6, syn_ack), frames.TcpReply(ROUTED6, SCANNER6, 22, 45000, 1234, 0x12)),
        (_ip6(ROUTED6, SCANNER6, 58, unreachable), frames.Unreachable(ROUTED6, SCANNER6, ROUTED6, 6, 443, 4)),
    ]


def test_ipv6_replies_parse_on_raw_ethernet_and_cooked_links() -> None:
    for packet, expected in ipv6_replies():
        assert frames.parse(frames.DLT_RAW_LINUX, packet) == expected
        ethernet = frames.ethernet(SCANNER_MAC, HOST_MAC, frames.ETH_IPV6, packet)
        on_ethernet = frames.parse(frames.DLT_EN10MB, ethernet)
        mac = HOST_MAC  # the advertisement's own option, else the frame's source
        assert on_ethernet == type(expected)(**{**_fields(expected), "mac": mac})
        cooked = struct.pack("!HHH8sH", 0, 1, 6, HOST_MAC + b"\x00\x00", frames.ETH_IPV6) + packet
        assert frames.parse(frames.DLT_LINUX_SLL, cooked) == on_ethernet


def _fields(reply: frames.Reply) -> dict[str, object]:
    return {name: getattr(reply, name) for name in reply.__slots__}


def test_an_unsolicited_advertisement_or_one_without_a_mac_is_no_reply() -> None:
    unsolicited = _ip6(HOST6, SCANNER6, 58, _advert(0x20, bytes([frames.ND_TARGET_LLADDR, 1]) + HOST_MAC))
    assert frames.parse(frames.DLT_RAW_LINUX, unsolicited) is None
    assert frames.parse(frames.DLT_RAW_LINUX, _ip6(HOST6, SCANNER6, 58, _advert(0x40, b""))) is None


def test_the_ipv6_parser_survives_mutated_and_truncated_packets() -> None:
    rng = random.Random(6)
    parsed = 0
    for packet, _ in ipv6_replies():
        for _ in range(1500):
            data = bytearray(packet)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            reply = frames.parse(frames.DLT_RAW_LINUX, bytes(data))  # never raises
            parsed += reply is not None
        for cut in range(len(packet)):
            frames.parse(frames.DLT_RAW_LINUX, packet[:cut])
    assert parsed > 0


# --- the matcher -------------------------------------------------------------------------------


def _onlink(target: int) -> routes.Decision | None:
    """How a scan with :data:`ETH0` asks for ``target`` on the link (None: a routed one)."""
    return routes.Decision("arp", ETH0, SCANNER6, None, routes.Route(target, 128, "eth0")) if target == HOST6 else None


ASKED = Asked(parse_targets("fd00:18::/120,fd00:18:16::/120"), {SCANNER6}, COOKIES, (22, 80))


def test_neighbor_advertisements_answer_only_what_we_asked_on_the_link() -> None:
    route = _onlink(HOST6)
    reply = frames.NeighborAdvert(HOST6, SCANNER6, HOST_MAC)
    assert matcher.match(reply, ASKED, _onlink) == Evidence(HOST6, "ndp", matcher.ARP, mac=HOST_MAC, route=route)
    assert matcher.match(frames.NeighborAdvert(ROUTED6, SCANNER6, HOST_MAC), ASKED, _onlink) == Ignored("arp-unasked")
    multicast = frames.NeighborAdvert(HOST6, SCANNER6, bytes.fromhex("333300000001"))
    assert matcher.match(multicast, ASKED, _onlink) == Ignored("arp-mac")
    outsider = frames.NeighborAdvert(to_int("fd00:18::1:7"), SCANNER6, HOST_MAC)
    assert matcher.match(outsider, ASKED, _onlink) == Ignored("not-a-target")


def test_echo_replies_to_all_nodes_count_from_on_link_targets_only() -> None:
    all_nodes = COOKIES.echo_seq(frames.ALL_NODES)
    from_host = frames.EchoReply(HOST6, SCANNER6, COOKIES.echo_id, all_nodes, mac=HOST_MAC)
    assert matcher.match(from_host, ASKED, _onlink) == Evidence(
        HOST6, "icmp", matcher.ARP, mac=HOST_MAC, route=_onlink(HOST6)
    )
    from_routed = frames.EchoReply(ROUTED6, SCANNER6, COOKIES.echo_id, all_nodes, mac=HOST_MAC)
    assert matcher.match(from_routed, ASKED, _onlink) == Ignored("arp-unasked")
    wrong_id = frames.EchoReply(HOST6, SCANNER6, COOKIES.echo_id ^ 1, all_nodes, mac=HOST_MAC)
    assert matcher.match(wrong_id, ASKED, _onlink) == Ignored("echo-cookie")
    unicast = frames.EchoReply(ROUTED6, SCANNER6, COOKIES.echo_id, COOKIES.echo_seq(ROUTED6))
    assert matcher.match(unicast, ASKED, _onlink) == Evidence(ROUTED6, "icmp", matcher.ICMP)
    about_echo = frames.Unreachable(ROUTED6, SCANNER6, ROUTED6, matcher.IP_PROTO_ICMPV6, code=4)
    assert matcher.match(about_echo, ASKED, _onlink) == Evidence(ROUTED6, "icmp-unreachable", matcher.ICMP)


def test_cookies_keep_their_ipv4_values_and_use_every_bit_of_an_ipv6_address() -> None:
    def ipv4_cookie(address: int, port: int) -> int:  # the formula IPv4 scans have always used
        value = (address * 0x9E3779B1 ^ (port << 16) ^ COOKIES.key) & 0xFFFFFFFF
        value ^= value >> 15
        value = (value * 0x85EBCA6B) & 0xFFFFFFFF
        return value ^ (value >> 13)

    assert COOKIES.tcp_seq(SCANNER, 22) == ipv4_cookie(SCANNER, 22)
    high_bits_only = {to_int(f"fd00:{prefix}::7") for prefix in range(1, 9)}
    assert len({COOKIES.tcp_seq(address, 22) for address in high_bits_only}) == 8


# --- decisions with the kernel's routes ---------------------------------------------------------


def kernel_table(answers: dict[str, KernelRoute]) -> routes.RoutingTable:
    def kernel(address: int) -> KernelRoute:
        return answers[to_str(address)]  # a KeyError: asked for an address it must not be asked for

    local = frozenset({SCANNER, SCANNER6, to_int("198.18.16.250")})
    return routes.RoutingTable({"eth0": ETH0, "eth1": ETH1}, [], local, kernel=kernel)


def test_decisions_follow_the_kernels_answer_whatever_table_it_came_from() -> None:
    leg, router = to_int("198.18.16.250"), to_int("198.18.16.1")
    table = kernel_table(
        {
            "198.18.16.5": KernelRoute("unicast", 3, router, leg, 100),
            "198.18.0.7": KernelRoute("unicast", 2, None, SCANNER, 254),
            "198.18.0.255": KernelRoute("broadcast", 2, None, SCANNER, 255),
            "198.18.0.0": KernelRoute("unicast", 2, None, SCANNER, 254),
            "198.18.9.9": KernelRoute("prohibit"),
            "198.18.9.10": KernelRoute("unreachable"),
            "fd00:18::7": KernelRoute("unicast", 2, None, SCANNER6, 254),
            "fd00:18:16::5": KernelRoute("unicast", 2, GATEWAY6, SCANNER6, 254),
        }
    )
    policy = table.decide(to_int("198.18.16.5"))
    assert isinstance(policy, routes.Decision)
    assert (policy.method, policy.interface.name, policy.gateway, policy.source) == ("ip", "eth1", router, leg)
    assert policy.route.table == 100
    onlink = table.decide(to_int("198.18.0.7"))
    assert isinstance(onlink, routes.Decision) and (onlink.method, onlink.interface.name) == ("arp", "eth0")
    assert table.decide(to_int("198.18.0.255")) == routes.BROADCAST
    assert table.decide(to_int("198.18.0.0")) == routes.BROADCAST  # the network address of eth0's subnet
    assert table.decide(to_int("198.18.9.9")) == table.decide(to_int("198.18.9.10")) == routes.UNREACHABLE
    onlink6 = table.decide(HOST6)
    assert isinstance(onlink6, routes.Decision) and (onlink6.method, onlink6.source) == ("arp", SCANNER6)
    routed6 = table.decide(ROUTED6)
    assert isinstance(routed6, routes.Decision) and (routed6.method, routed6.gateway) == ("ip", GATEWAY6)


@pytest.mark.parametrize("address", ["::1", "::", "::198.18.0.1", "fe80::7", "ff02::1", "ff05::2"])
def test_reserved_ipv6_addresses_are_never_asked_for(address: str) -> None:
    assert kernel_table({}).decide(to_int(address)) == routes.RESERVED


def test_an_interface_picks_a_source_of_the_targets_family() -> None:
    assert ETH0.source_for(HOST6) == SCANNER6
    assert ETH0.source_for(to_int("2001:db8::1")) == SCANNER6  # its first of that family
    assert ETH0.source_for(to_int("198.18.5.5")) == SCANNER
    assert ETH1.source_for(HOST6) is None


# --- the netlink codec -------------------------------------------------------------------------


def test_a_route_request_asks_for_one_destination_and_the_table() -> None:
    for address, af, bits in ((to_int("198.18.16.5"), socket.AF_INET, 32), (ROUTED6, socket.AF_INET6, 128)):
        message = kernelroute.request(address, 77)
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", message)
        assert (length, kind, flags, seq) == (len(message), kernelroute.RTM_GETROUTE, kernelroute.NLM_F_REQUEST, 77)
        rtm = struct.unpack_from("=BBBBBBBBI", message, 16)
        assert rtm[0] == af and rtm[1] == bits and rtm[8] & kernelroute.RTM_F_LOOKUP_TABLE
        attribute_length, attribute = struct.unpack_from("=HH", message, 28)
        assert attribute == kernelroute.RTA_DST and message[32 : 28 + attribute_length] == packed(address)
        assert len(message) % 4 == 0


def _attribute(kind: int, value: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(value), kind) + value
    return data + b"\x00" * (-len(data) % 4)


def _reply(seq: int, kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_the_kernels_answer_is_parsed_and_errors_are_unreachable() -> None:
    leg, router = to_int("198.18.16.250"), to_int("198.18.16.1")
    rtm = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 252, 3, 0, 1, 0)
    body = (
        rtm
        + _attribute(kernelroute.RTA_TABLE, struct.pack("=I", 100))
        + _attribute(kernelroute.RTA_DST, packed(to_int("198.18.16.5")))
        + _attribute(kernelroute.RTA_OIF, struct.pack("=I", 3))
        + _attribute(kernelroute.RTA_GATEWAY, packed(router))
        + _attribute(kernelroute.RTA_PREFSRC, packed(leg))
    )
    other = _reply(8, kernelroute.RTM_NEWROUTE, body)
    answer = _reply(9, kernelroute.RTM_NEWROUTE, body)
    assert kernelroute.parse(other + answer, 9) == KernelRoute("unicast", 3, router, leg, 100)
    assert kernelroute.parse(other, 9) is None  # an answer to another request
    for code, kind in ((errno.EACCES, "prohibit"), (errno.ENETUNREACH, "unreachable"), (errno.EINVAL, "unreachable")):
        error = _reply(9, kernelroute.NLMSG_ERROR, struct.pack("=i", -code) + bytes(16))
        assert kernelroute.parse(error, 9) == KernelRoute(kind)
    for cut in range(len(answer)):
        kernelroute.parse(answer[:cut], 9)  # never raises


def test_the_kernel_answers_for_its_own_loopback() -> None:
    with kernelroute.RouteLookup() as lookup:
        answer = lookup.get(to_int("127.0.0.1"))
    assert answer.type == "local" and answer.source == to_int("127.0.0.1")
