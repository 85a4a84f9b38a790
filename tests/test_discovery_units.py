"""Discovery without a network: targets, params, frames (and a fuzzed parser), timing, reply checks."""

from __future__ import annotations

import random
import subprocess
import sys
import tracemalloc
import types
from collections import deque
from typing import Any

import dpkt
import pytest

from ksocket.collectors.base import InvalidParams, NullContext
from ksocket.collectors.discovery import frames, routes, validate
from ksocket.collectors.discovery.engine import Engine
from ksocket.collectors.discovery.scheduler import Settings
from ksocket.collectors.discovery.targets import TargetSet, parse_targets, to_int, to_str
from ksocket.collectors.discovery.timing import Pacer, RetryPolicy, RttEstimator

# --- targets -----------------------------------------------------------------------------------


def addresses(targets: TargetSet) -> list[str]:
    return [to_str(value) for value in targets]


def test_target_forms_and_excludes() -> None:
    targets = parse_targets(["198.18.0.0/30", "198.18.1.5", "198.18.2.10-12", "198.18.3.250-198.18.4.1"])
    assert addresses(targets) == [
        "198.18.0.0",
        "198.18.0.1",
        "198.18.0.2",
        "198.18.0.3",
        "198.18.1.5",
        "198.18.2.10",
        "198.18.2.11",
        "198.18.2.12",
        "198.18.3.250",
        "198.18.3.251",
        "198.18.3.252",
        "198.18.3.253",
        "198.18.3.254",
        "198.18.3.255",
        "198.18.4.0",
        "198.18.4.1",
    ]
    excluded = parse_targets("198.18.0.0/24", ["198.18.0.0/25", "198.18.0.200-198.18.0.255", "198.18.0.130"])
    assert len(excluded) == 128 - 56 - 1
    assert to_int("198.18.0.130") not in excluded and to_int("198.18.0.131") in excluded
    assert to_int("198.18.0.200") not in excluded and to_int("198.18.0.199") in excluded
    # host bits in a CIDR mean its network; overlapping targets count once; globs
    assert addresses(parse_targets("198.18.0.9/30, 198.18.0.10")) == [
        "198.18.0.8",
        "198.18.0.9",
        "198.18.0.10",
        "198.18.0.11",
    ]
    assert len(parse_targets("198.18.7.*")) == 256


@pytest.mark.parametrize(
    "bad",
    [
        "198.18.0.0/33",
        "198.18.0.256",
        "198.18.0.9-198.18.0.1",
        "example.org",
        "2001:db8::/64",
        "198.18.0.1-300",
        "198.18.0.0/24/1",
        "1.2.3",
    ],
)
def test_bad_targets_are_invalid_params(bad: str) -> None:
    with pytest.raises(InvalidParams):
        parse_targets([bad])


def test_more_than_65536_addresses_is_refused() -> None:
    assert len(parse_targets("198.18.0.0/16")) == 65_536
    with pytest.raises(InvalidParams, match="65536"):
        parse_targets("198.18.0.0/15")
    with pytest.raises(InvalidParams):
        parse_targets(["198.18.0.0/16", "198.19.0.0/32"])
    with pytest.raises(InvalidParams):
        validate({"targets": ["198.16.0.0/12"]})
    # excludes count: a /15 minus half of it is a /16
    assert len(parse_targets("198.18.0.0/15", "198.19.0.0/16")) == 65_536


def test_target_expansion_is_lazy_and_small() -> None:
    tracemalloc.start()
    try:
        targets = parse_targets("198.18.0.0/16")
        iterator = iter(targets)
        assert isinstance(iterator, types.GeneratorType)
        assert targets.intervals == ((to_int("198.18.0.0"), to_int("198.18.255.255")),)
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        count = 0
        last = -1
        for value in iterator:
            assert value > last
            last = value
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 65_536
    # a list of 65,536 ints would take over 2 MB; iteration holds one at a time
    assert peak - before < 64 * 1024


def test_params_validation() -> None:
    request = validate({"targets": ["198.18.0.0/24"]})
    assert request.methods == {"arp", "icmp", "tcp"}
    assert request.ports == (22, 80, 443, 3389, 5985, 135, 139, 445)
    assert request.rate == 1000 and request.dns is True
    assert validate({"targets": "198.18.0.1", "ports": ["22", 80, "8000-8002"]}).ports == (22, 80, 8000, 8001, 8002)
    assert validate({}).targets is None  # the on-link networks, decided at run time
    for bad in (
        {"methods": ["arp", "udp"]},
        {"methods": []},
        {"ports": [0]},
        {"ports": ["x"]},
        {"rate": 0},
        {"rate": "fast"},
        {"timeout": 0},
        {"dns": "yes"},
        {"mode": "aws"},
        {"exclude": ["nonsense"]},
        {"targets": [1, 2]},
    ):
        with pytest.raises(InvalidParams):
            validate({"targets": ["198.18.0.0/24"], **bad})


# --- frames ------------------------------------------------------------------------------------

SCANNER_MAC = bytes.fromhex("026b73000001")
HOST_MAC = bytes.fromhex("00163e000001")
SCANNER = to_int("198.18.0.1")
HOST = to_int("198.18.0.7")


def arp_reply() -> bytes:
    arp = dpkt.arp.ARP(
        op=dpkt.arp.ARP_OP_REPLY,
        sha=HOST_MAC,
        spa=HOST.to_bytes(4, "big"),
        tha=SCANNER_MAC,
        tpa=SCANNER.to_bytes(4, "big"),
    )
    return frames.ethernet(SCANNER_MAC, HOST_MAC, frames.ETH_ARP, bytes(arp))


def echo_reply(ident: int, seq: int, src: int = HOST) -> bytes:
    icmp = dpkt.icmp.ICMP(type=0, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=b"x" * 8))
    return bytes(dpkt.ip.IP(src=src.to_bytes(4, "big"), dst=SCANNER.to_bytes(4, "big"), p=1, data=icmp))


def tcp_reply(sport: int, dport: int, ack: int, flags: int) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=1, ack=ack, flags=flags)
    return bytes(dpkt.ip.IP(src=HOST.to_bytes(4, "big"), dst=SCANNER.to_bytes(4, "big"), p=6, data=tcp))


def unreachable(src: int, about: bytes) -> bytes:
    icmp = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=dpkt.ip.IP(about)))
    return bytes(dpkt.ip.IP(src=src.to_bytes(4, "big"), dst=SCANNER.to_bytes(4, "big"), p=1, data=icmp))


def sll(packet: bytes, ethertype: int = frames.ETH_IP) -> bytes:
    return bytes(dpkt.sll.SLL(type=0, hrd=1, hlen=6, hdr=HOST_MAC + b"\0\0", ethtype=ethertype)) + packet


def sll2(packet: bytes, ethertype: int = frames.ETH_IP) -> bytes:
    header = ethertype.to_bytes(2, "big") + b"\0\0" + (3).to_bytes(4, "big") + (1).to_bytes(2, "big") + b"\0" + b"\x06"
    return header + HOST_MAC + b"\0\0" + packet


def test_probes_are_what_they_claim() -> None:
    request = dpkt.ethernet.Ethernet(frames.arp_request(SCANNER_MAC, SCANNER, HOST))
    assert request.dst == frames.BROADCAST and request.src == SCANNER_MAC and len(bytes(request)) == 60
    assert request.data.op == dpkt.arp.ARP_OP_REQUEST and request.data.tpa == HOST.to_bytes(4, "big")
    echo = dpkt.ip.IP(frames.icmp_echo(SCANNER, HOST, 0x1234, 0x77))
    assert echo.dst == HOST.to_bytes(4, "big") and echo.data.type == 8 and echo.data.data.id == 0x1234
    assert dpkt.in_cksum(bytes(echo.data)) == 0  # checksums are right
    syn = dpkt.ip.IP(frames.tcp_syn(SCANNER, HOST, 40000, 22, 0xDEADBEEF))
    assert syn.data.flags == frames.TCP_SYN and syn.data.seq == 0xDEADBEEF and syn.data.dport == 22
    framed = dpkt.ethernet.Ethernet(frames.frame(frames.DLT_EN10MB, bytes(syn), src_mac=SCANNER_MAC, dst_mac=HOST_MAC))
    assert framed.dst == HOST_MAC and framed.type == frames.ETH_IP
    assert frames.frame(frames.DLT_RAW_LINUX, bytes(syn)) == bytes(syn)


def test_replies_parse_on_every_link_type() -> None:
    reply = frames.parse(frames.DLT_EN10MB, arp_reply())
    assert reply == frames.ArpReply(HOST, SCANNER, HOST_MAC)
    echo = echo_reply(7, 9)
    for link_type, data in (
        (frames.DLT_RAW_LINUX, echo),
        (frames.LINKTYPE_RAW, echo),
        (frames.DLT_EN10MB, frames.ethernet(SCANNER_MAC, HOST_MAC, frames.ETH_IP, echo)),
        (frames.DLT_LINUX_SLL, sll(echo)),
        (frames.DLT_LINUX_SLL2, sll2(echo)),
    ):
        parsed = frames.parse(link_type, data)
        assert isinstance(parsed, frames.EchoReply), link_type
        assert (parsed.src, parsed.echo_id, parsed.echo_seq) == (HOST, 7, 9), link_type
    assert frames.parse(frames.DLT_LINUX_SLL, sll(arp_reply()[14:], frames.ETH_ARP)) is not None
    synack = frames.parse(frames.DLT_RAW_LINUX, tcp_reply(22, 40000, 1234, frames.TCP_SYN | frames.TCP_ACK))
    assert isinstance(synack, frames.TcpReply) and (synack.port, synack.our_port, synack.ack) == (22, 40000, 1234)
    rst = frames.parse(frames.DLT_RAW_LINUX, tcp_reply(80, 40000, 99, frames.TCP_RST | frames.TCP_ACK))
    assert isinstance(rst, frames.TcpReply) and rst.flags & frames.TCP_RST
    assert (
        frames.parse(frames.DLT_RAW_LINUX, tcp_reply(80, 40000, 99, frames.TCP_ACK)) is None
    )  # not an answer to a SYN
    about = frames.tcp_syn(SCANNER, HOST, 40000, 5985, 1)
    unreach = frames.parse(frames.DLT_RAW_LINUX, unreachable(HOST, about))
    assert isinstance(unreach, frames.Unreachable)
    assert (unreach.inner_dst, unreach.inner_protocol, unreach.port, unreach.code) == (HOST, 6, 5985, 3)
    assert frames.parse(99999, echo) is None


def corpus() -> list[tuple[int, bytes]]:
    echo = echo_reply(1, 2)
    tcp = tcp_reply(22, 40000, 5, frames.TCP_SYN | frames.TCP_ACK)
    unreach = unreachable(HOST, frames.tcp_syn(SCANNER, HOST, 40000, 22, 1))
    return [
        (frames.DLT_EN10MB, arp_reply()),
        (frames.DLT_EN10MB, frames.ethernet(SCANNER_MAC, HOST_MAC, frames.ETH_IP, echo)),
        (frames.DLT_EN10MB, frames.ethernet(SCANNER_MAC, HOST_MAC, frames.ETH_VLAN, b"\x00\x05\x08\x00" + tcp)),
        (frames.DLT_RAW_LINUX, echo),
        (frames.DLT_RAW_LINUX, tcp),
        (frames.DLT_RAW_LINUX, unreach),
        (frames.LINKTYPE_RAW, unreach),
        (frames.DLT_LINUX_SLL, sll(tcp)),
        (frames.DLT_LINUX_SLL, sll(arp_reply()[14:], frames.ETH_ARP)),
        (frames.DLT_LINUX_SLL2, sll2(unreach)),
    ]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    choice = rng.randrange(6)
    if choice == 0:  # truncate
        return bytes(buffer[: rng.randrange(len(buffer) + 1)])
    if choice == 1:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        return bytes(buffer)
    if choice == 2:  # hostile lengths: IHL, total length, TCP offset, ARP hln/pln set to extremes
        for _ in range(rng.randint(1, 4)):
            buffer[rng.randrange(min(len(buffer), 48))] = rng.choice((0, 1, 0x0F, 0x45, 0x4F, 0xF0, 0xFF))
        return bytes(buffer)
    if choice == 3:  # garbage appended
        return bytes(buffer) + rng.randbytes(rng.randrange(1, 200))
    if choice == 4:  # pure noise
        return rng.randbytes(rng.randrange(0, 120))
    cut = rng.randrange(len(buffer) + 1)  # truncate then flip
    head = bytearray(buffer[:cut])
    if head:
        head[rng.randrange(len(head))] ^= 0xFF
    return bytes(head)


def test_parser_survives_mutated_and_truncated_frames() -> None:
    rng = random.Random(20240601)
    parsed = 0
    total = 0
    for link_type, seed in corpus():
        for _ in range(2000):
            data = mutate(rng, seed)
            reply = frames.parse(link_type, data)  # must never raise
            total += 1
            if reply is not None:
                parsed += 1
                assert isinstance(reply, (frames.ArpReply, frames.EchoReply, frames.TcpReply, frames.Unreachable))
                assert 0 <= reply.src < 2**32
        for cut in range(len(seed)):  # every truncation
            frames.parse(link_type, seed[:cut])
            total += 1
    assert total > 20_000
    # the corpus reaches deep: some mutants still parse as replies, most do not
    assert 0 < parsed < total


# --- timing ------------------------------------------------------------------------------------


def test_pacer_holds_the_rate_and_bounds_bursts() -> None:
    pacer = Pacer(rate=2000, start=0.0)
    now = 0.0
    sent = []
    while now < 2.0:
        while pacer.ready(now):
            pacer.consume(now)
            sent.append(now)
        now += random.Random(int(now * 1e6)).uniform(0.0001, 0.003)  # jittery wake-ups
    assert abs(len(sent) / 2.0 - 2000) / 2000 < 0.01
    # after a long sleep it does not fire the missed slots at once
    late = Pacer(rate=1000, start=0.0, max_lag=0.01)
    burst = 0
    while late.ready(1.0):
        late.consume(1.0)
        burst += 1
    assert 1 <= burst <= 11


def test_rtt_estimator_and_retry_policy() -> None:
    rtt = RttEstimator(initial=1.0, floor=0.02, ceiling=1.0)
    assert rtt.timeout == 1.0
    for _ in range(50):
        rtt.sample(0.0005)
    assert rtt.timeout == 0.02  # the floor
    for _ in range(50):
        rtt.sample(0.3)
    assert 0.3 <= rtt.timeout <= 1.0
    clean = RetryPolicy()
    for _ in range(999):
        clean.record(0)
    assert clean.allowed_tries() == 2 and clean.loss == 0
    lossy = RetryPolicy()
    rng = random.Random(5)
    for _ in range(999):
        tries = 0
        while rng.random() < 0.19:
            tries += 1
        lossy.record(tries)
    assert 0.12 < lossy.loss < 0.26
    assert lossy.allowed_tries() >= 6  # 999 · 0.19^6 ≈ 0.05 expected misses


# --- reply checks: no false positives from foreign or forged frames ---------------------------


class FakeLink:
    def __init__(self) -> None:
        self.iface = routes.Interface("eth0", 2, "ether", SCANNER_MAC, True, ((SCANNER, 24, None),))
        self.link_type = frames.DLT_EN10MB


def engine_for(targets: str) -> Engine:
    table = routes.RoutingTable(
        {"eth0": FakeLink().iface},
        [routes.Route(to_int("198.18.0.0"), 24, "eth0", source=SCANNER)],
        frozenset({SCANNER}),
    )
    engine = Engine(
        parse_targets(targets), table, Settings(frozenset({"arp", "icmp", "tcp"}), (22, 80), 1000, 1.0), NullContext()
    )
    engine.sources.add(SCANNER)
    return engine


def test_only_valid_answers_from_targets_count() -> None:
    engine = engine_for("198.18.0.0/29")
    link = FakeLink()
    cookies = engine.cookies
    outsider = to_int("198.18.0.100")
    forged = [
        frames.EchoReply(HOST, SCANNER, cookies.echo_id ^ 1, cookies.echo_seq(HOST)),  # wrong id
        frames.EchoReply(HOST, SCANNER, cookies.echo_id, cookies.echo_seq(HOST) ^ 1),  # wrong cookie
        frames.TcpReply(HOST, SCANNER, 22, cookies.sport, cookies.tcp_seq(HOST, 22), 0x12),  # no +1
        frames.TcpReply(HOST, SCANNER, 23, cookies.sport, cookies.tcp_seq(HOST, 23) + 1, 0x12),
        frames.EchoReply(outsider, SCANNER, cookies.echo_id, cookies.echo_seq(outsider)),  # not a target
        frames.ArpReply(outsider, SCANNER, HOST_MAC),
        frames.ArpReply(HOST, to_int("198.18.0.2"), HOST_MAC),  # not asked by us
        frames.Unreachable(to_int("198.18.0.254"), SCANNER, HOST, 1),  # a router about it
    ]
    for reply in forged:
        engine._handle(reply, 0.0, link)  # type: ignore[arg-type]
    assert engine.hosts == {}
    engine._handle(
        frames.TcpReply(HOST, SCANNER, 22, cookies.sport, cookies.tcp_seq(HOST, 22) + 1, 0x12),
        0.0,
        link,  # type: ignore[arg-type]
    )
    engine._handle(frames.ArpReply(to_int("198.18.0.3"), SCANNER, HOST_MAC), 0.0, link)  # type: ignore[arg-type]
    assert sorted(engine.hosts) == [to_int("198.18.0.3"), HOST]
    assert engine.hosts[HOST].open == {22} and engine.hosts[HOST].evidence == {"tcp/22"}
    assert engine.hosts[to_int("198.18.0.3")].mac == HOST_MAC


def routed_table() -> routes.RoutingTable:
    """eth0 on 198.18.0.0/24 and a default route through 198.18.0.254."""
    return routes.RoutingTable(
        {"eth0": FakeLink().iface},
        [
            routes.Route(to_int("198.18.0.0"), 24, "eth0", source=SCANNER),
            routes.Route(0, 0, "eth0", gateway=to_int("198.18.0.254")),
        ],
        frozenset({SCANNER}),
    )


def test_arp_replies_we_did_not_ask_for_or_from_nobodys_mac_are_no_hosts() -> None:
    engine = Engine(
        parse_targets("198.18.0.0/29,198.18.16.0/29"),
        routed_table(),
        Settings(frozenset({"arp", "icmp", "tcp"}), (22,), 1000, 1.0),
        NullContext(),
    )
    engine.sources.add(SCANNER)
    link = FakeLink()
    routed = to_int("198.18.16.5")  # a target behind the gateway: asked by ICMP/TCP, never by ARP
    unasked = [
        frames.ArpReply(routed, SCANNER, HOST_MAC),
        frames.ArpReply(HOST, SCANNER, b"\xff" * 6),
        frames.ArpReply(HOST, SCANNER, b"\x00" * 6),
        frames.ArpReply(HOST, SCANNER, bytes.fromhex("01005e000001")),
    ]
    for reply in unasked:
        engine._handle(reply, 0.0, link)  # type: ignore[arg-type]
    assert engine.hosts == {} and engine.scheduler.followups == deque()
    assert engine.stats.ignored == {"arp-unasked": 1, "arp-mac": 3}
    engine._handle(frames.ArpReply(HOST, SCANNER, HOST_MAC), 0.0, link)  # type: ignore[arg-type]
    assert list(engine.hosts) == [HOST] and [probe.dst_mac for probe in engine.scheduler.followups] == [HOST_MAC]


@pytest.mark.parametrize("address", ["255.255.255.255", "224.0.0.1", "239.1.2.3", "240.0.0.1", "0.0.0.1", "127.0.0.2"])
def test_reserved_addresses_are_never_probed_whatever_the_routes_say(address: str) -> None:
    assert routed_table().decide(to_int(address)) == routes.RESERVED


def test_default_targets_leave_out_link_local_unplugged_and_down_interfaces() -> None:
    def link(name: str, index: int, *flags: str) -> dict[str, Any]:
        return {"ifname": name, "ifindex": index, "link_type": "ether", "address": "02:00:00:00:00:01", "flags": flags}

    def addresses(index: int, *cidrs: str) -> dict[str, Any]:
        infos = [{"family": "inet", "local": c.split("/")[0], "prefixlen": int(c.split("/")[1])} for c in cidrs]
        return {"ifindex": index, "addr_info": infos}

    table = routes.RoutingTable.from_json(
        [
            link("eth0", 2, "UP", "LOWER_UP"),
            link("docker0", 3, "NO-CARRIER", "UP"),
            link("eth1", 4, "UP", "LOWER_UP"),
            link("eth2", 5),
        ],
        [
            addresses(2, "198.18.0.1/24"),
            addresses(3, "172.17.0.1/16"),
            addresses(4, "169.254.3.4/16", "198.18.2.1/24"),
            addresses(5, "198.18.4.1/24"),
        ],
        [],
        [],
    )
    assert table.onlink_networks() == ["198.18.0.0/24", "198.18.2.0/24"]


def test_a_syn_ack_opens_a_port_and_any_reset_closes_it() -> None:
    engine = engine_for("198.18.0.0/29")
    for port, flags in [(22, frames.TCP_SYN | frames.TCP_ACK), (80, frames.TCP_SYN | frames.TCP_RST | frames.TCP_ACK)]:
        reply = frames.TcpReply(
            HOST, SCANNER, port, engine.cookies.sport, engine.cookies.tcp_seq(HOST, port) + 1, flags
        )
        engine._handle(reply, 0.0, FakeLink())  # type: ignore[arg-type]
    assert engine.hosts[HOST].open == {22} and engine.hosts[HOST].closed == {80}


def test_a_hanging_resolver_holds_neither_the_scan_nor_the_process_at_exit() -> None:
    code = (
        "import threading\n"
        "from ksocket.collectors import discovery\n"
        "from ksocket.collectors.base import NullContext\n"
        "discovery.Resolver._lookup = staticmethod(lambda address: threading.Event().wait() and None)\n"
        "resolver = discovery.Resolver(True)\n"
        "for address in range(20):\n"
        "    resolver.submit(address)\n"
        "print(sorted(set(resolver.finish(NullContext(), wait=0.1).values()), key=str))\n"
        "resolver.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[None]\n"
