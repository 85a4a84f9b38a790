"""The discovery engine's pure cores without sockets or a clock: the scheduler and the reply matcher."""

from __future__ import annotations

import pytest

from ksocket.collectors.discovery import frames, matcher, routes
from ksocket.collectors.discovery.matcher import Asked, Cookies, Evidence, Ignored
from ksocket.collectors.discovery.scheduler import ARP_STAGE, IP_STAGE, Path, Scheduler, Settings
from ksocket.collectors.discovery.targets import parse_targets, to_int

SCANNER = to_int("198.18.0.1")
GATEWAY = to_int("198.18.0.254")
MAC = bytes.fromhex("00163e000001")
ETH0 = routes.Interface("eth0", 2, "ether", bytes.fromhex("026b73000001"), True, ((SCANNER, 24, None),))
TABLE = routes.RoutingTable(
    {"eth0": ETH0},
    [routes.Route(to_int("198.18.0.0"), 24, "eth0", source=SCANNER), routes.Route(0, 0, "eth0", gateway=GATEWAY)],
    frozenset({SCANNER}),
)
A, B, C = to_int("198.18.0.2"), to_int("198.18.0.3"), to_int("198.18.0.4")
ROUTED = to_int("198.18.16.5")
COOKIES = Cookies(key=0x12345678, echo_id=0x4242, sport=45000)
PORTS = (22, 80)


def arp_route(target: int) -> routes.Decision:
    decision = TABLE.decide(target)
    assert isinstance(decision, routes.Decision) and decision.method == "arp"
    return decision


# --- the scheduler -------------------------------------------------------------------------------


def scheduler_for(targets: str, methods: str = "arp icmp tcp", *, open_paths: bool = True) -> Scheduler:
    settings = Settings(frozenset(methods.split()), PORTS, rate=1000, timeout=1.0)

    def open_path(decision: routes.Decision, stage: str) -> Path | None:
        if not open_paths:
            return None
        return Path.opened(decision.interface.name, stage, decision.gateway, 1.0)

    scheduler = Scheduler(parse_targets([targets]), TABLE, settings, open_path)
    scheduler.start(0.0)
    return scheduler


class Wire:
    """Sends what the scheduler has due at 1 ms a packet (its rate) and remembers it."""

    def __init__(self, scheduler: Scheduler, now: float = 0.0) -> None:
        self.scheduler = scheduler
        self.now = now
        self.sent: list[tuple[int, str, int]] = []  # target, stage, bit

    def send(self, count: int) -> list[tuple[int, str, int]]:
        out = []
        for _ in range(count):
            due = self.scheduler.next_packet(self.now)
            if due is None:
                break
            probe, bit = due
            self.scheduler.sent(probe, self.now, self.now)
            out.append((probe.target, probe.path.stage, bit))
            self.now += 0.001
        self.sent += out
        return out


def arp_answer(target: int) -> Evidence:
    return Evidence(target, "arp", matcher.ARP, mac=MAC, route=arp_route(target))


def test_the_pacer_holds_packets_until_their_slot() -> None:
    scheduler = scheduler_for("198.18.0.2-198.18.0.4")
    first = scheduler.next_packet(0.0)
    assert first is not None
    scheduler.sent(first[0], 0.0, 0.0)
    assert scheduler.next_packet(0.0005) is None  # 1000 packets a second: the next slot is at 1 ms
    assert scheduler.next_due() == pytest.approx(0.001)
    assert scheduler.next_packet(0.001) is not None


def test_retries_go_first_then_follow_ups_of_arp_found_hosts_then_fresh_targets() -> None:
    scheduler = scheduler_for("198.18.0.2-198.18.0.4")
    wire = Wire(scheduler)
    assert wire.send(2) == [(A, ARP_STAGE, 0), (B, ARP_STAGE, 0)]
    assert scheduler.answer(arp_answer(A), "eth0", 0.0005) is True  # A found: its follow-up is queued
    scheduler.expire(1.5)  # B's wait is over: a retry is queued
    assert list(scheduler.retry) == [scheduler.inflight[B]]
    assert wire.send(10) == [
        (B, ARP_STAGE, 0),  # the retry
        (A, IP_STAGE, 0),  # the follow-up: ICMP echo, then a SYN per port, to A's MAC
        (A, IP_STAGE, 1),
        (A, IP_STAGE, 2),
        (C, ARP_STAGE, 0),  # a fresh target last
    ]
    follow_up = scheduler.inflight[A]
    assert follow_up.dst_mac == MAC and follow_up.counted


def test_a_silent_target_gets_the_tries_the_policy_allows_then_is_parked_and_revived_when_it_grows() -> None:
    scheduler = scheduler_for("198.18.0.2")
    wire = Wire(scheduler)
    assert scheduler.policy.allowed_tries() == 2
    for expiry in (2.0, 4.0):
        assert wire.send(5) == [(A, ARP_STAGE, 0)]
        scheduler.expire(expiry)
    assert not scheduler.has_work() and scheduler.inflight == {}
    assert [scheduler.targets.at(position) for position in scheduler.parked_targets] == [A]
    assert list(scheduler.parked_tries) == [2]
    assert scheduler.done == 1
    assert scheduler.revive() is False  # the policy still allows two tries
    scheduler.policy.record(2)  # some host needed a third try: silent ones get more
    assert scheduler.revive() is True
    assert list(scheduler.parked_targets) == [] and scheduler.retry[0].tries == 2
    assert wire.send(5) == [(A, ARP_STAGE, 0)]
    assert scheduler.done == 1  # a revived target was counted when it was parked


def test_an_answer_clears_the_packets_it_answers_and_settles_the_probe() -> None:
    scheduler = scheduler_for("198.18.16.5")  # routed: ICMP and a SYN per port through the gateway
    wire = Wire(scheduler)
    assert wire.send(1) == [(ROUTED, IP_STAGE, 0)]
    probe = scheduler.inflight[ROUTED]
    assert probe.pending == 0b111 and probe.dst_mac is None  # the kernel routes it
    assert scheduler.answer(Evidence(ROUTED, "tcp/80", matcher.TCP, port=80, port_open=False), "eth0", 0.0) is True
    assert probe.pending == 0b011
    assert wire.send(5) == [(ROUTED, IP_STAGE, 1)]  # the answered SYN is not sent on this try
    assert scheduler.answer(Evidence(ROUTED, "icmp-unreachable", None), "eth0", 0.0) is False
    assert probe.pending == 0b011  # answers no one packet
    scheduler.answer(Evidence(ROUTED, "icmp", matcher.ICMP), "eth0", 0.0)
    scheduler.answer(Evidence(ROUTED, "tcp/22", matcher.TCP, port=22, port_open=True), "eth0", 0.0)
    assert probe.done and ROUTED not in scheduler.inflight
    host = scheduler.hosts[ROUTED]
    assert (host.open, host.closed, host.via) == ({22}, {80}, GATEWAY)
    assert host.evidence == {"tcp/80", "icmp-unreachable", "icmp", "tcp/22"}
    assert scheduler.policy.found == 1 and scheduler.done == 1


def test_only_first_tries_sample_the_rtt_and_a_late_arp_reply_leaves_the_follow_up_alone() -> None:
    scheduler = scheduler_for("198.18.0.2-198.18.0.3")
    wire = Wire(scheduler)
    wire.send(2)  # A at 0 ms, B at 1 ms
    scheduler.expire(1.5)
    assert wire.send(1) == [(A, ARP_STAGE, 0)]  # A's second try, at 2 ms
    arp_path = scheduler.inflight[A].path
    scheduler.answer(arp_answer(A), "eth0", 0.003)
    assert arp_path.rtt.samples == 0  # Karn: which try did it answer?
    assert scheduler.hosts[A].rtt == pytest.approx(0.001)
    scheduler.answer(arp_answer(B), "eth0", 0.0015)  # B's first try, answered before its retry went out
    assert arp_path.rtt.samples == 1 and arp_path.rtt.srtt == pytest.approx(0.0005)
    assert wire.send(1) == [(A, IP_STAGE, 0)]  # B's retry is dropped; A's follow-up is in flight
    follow_up = scheduler.inflight[A]
    assert scheduler.answer(arp_answer(A), "eth0", 0.01) is False
    assert scheduler.inflight[A] is follow_up and follow_up.pending == 0b111
    assert [probe.target for probe in scheduler.followups] == [B]  # one follow-up per host found


def test_targets_the_scan_cannot_probe_are_skipped_and_counted() -> None:
    no_arp = scheduler_for("198.18.0.2-198.18.0.3", "icmp tcp")
    assert Wire(no_arp).send(5) == [] and not no_arp.has_work()
    assert no_arp.skipped == {"arp-disabled": 2} and no_arp.done == 2
    no_path = scheduler_for("198.18.16.5,198.18.0.255", open_paths=False)
    assert Wire(no_path).send(5) == []
    assert no_path.skipped == {routes.BROADCAST: 1, routes.UNREACHABLE: 1}
    arp_only = scheduler_for("198.18.16.5", "arp")
    assert Wire(arp_only).send(5) == [] and arp_only.skipped == {"no-method": 1}


def test_an_answer_with_no_probe_in_flight_still_finds_the_host() -> None:
    scheduler = scheduler_for("198.18.0.2")
    assert scheduler.answer(arp_answer(A), "eth0", 0.0) is True  # a late answer from a parked target, say
    assert scheduler.hosts[A].mac == MAC and scheduler.policy.found == 0  # no try to learn from
    assert [probe.target for probe in scheduler.followups] == [A]


# --- the matcher ---------------------------------------------------------------------------------

ASKED = Asked(parse_targets(["198.18.0.0/24"]), {SCANNER}, COOKIES, PORTS)


def no_arp(target: int) -> None:
    raise AssertionError("only ARP replies ask for the ARP route")


def test_a_reply_from_outside_the_targets_or_to_someone_else_is_ignored() -> None:
    echo = frames.EchoReply(A, SCANNER, COOKIES.echo_id, COOKIES.echo_seq(A))
    assert matcher.match(echo, ASKED, no_arp) == Evidence(A, "icmp", matcher.ICMP)
    outsider = to_int("198.18.1.2")
    assert matcher.match(
        frames.EchoReply(outsider, SCANNER, COOKIES.echo_id, COOKIES.echo_seq(outsider)), ASKED, no_arp
    ) == Ignored("not-a-target")
    assert matcher.match(frames.EchoReply(A, B, COOKIES.echo_id, COOKIES.echo_seq(A)), ASKED, no_arp) == Ignored(
        "not-a-target"
    )


def test_arp_reply() -> None:
    route = arp_route(A)
    assert matcher.match_arp(frames.ArpReply(A, SCANNER, MAC), route) == Evidence(
        A, "arp", matcher.ARP, mac=MAC, route=route
    )
    assert matcher.match_arp(frames.ArpReply(A, SCANNER, MAC), None) == Ignored("arp-unasked")
    for nobody in (frames.BROADCAST, frames.ZERO_MAC, bytes.fromhex("01005e000001")):
        assert matcher.match_arp(frames.ArpReply(A, SCANNER, nobody), route) == Ignored("arp-mac")
    asked_for = []
    reply = frames.ArpReply(A, SCANNER, MAC)
    assert matcher.match(reply, ASKED, lambda target: asked_for.append(target)) == Ignored("arp-unasked")
    assert asked_for == [A]


def test_echo_reply() -> None:
    assert matcher.match_echo(frames.EchoReply(A, SCANNER, COOKIES.echo_id, COOKIES.echo_seq(A)), COOKIES) == Evidence(
        A, "icmp", matcher.ICMP
    )
    for echo_id, echo_seq in ((COOKIES.echo_id ^ 1, COOKIES.echo_seq(A)), (COOKIES.echo_id, COOKIES.echo_seq(B))):
        assert matcher.match_echo(frames.EchoReply(A, SCANNER, echo_id, echo_seq), COOKIES) == Ignored("echo-cookie")


def test_tcp_reply() -> None:
    ack = (COOKIES.tcp_seq(A, 80) + 1) & 0xFFFFFFFF
    syn_ack, rst, syn_rst = frames.TCP_SYN | frames.TCP_ACK, frames.TCP_RST | frames.TCP_ACK, 0x16
    assert matcher.match_tcp(frames.TcpReply(A, SCANNER, 80, COOKIES.sport, ack, syn_ack), COOKIES, PORTS) == Evidence(
        A, "tcp/80", matcher.TCP, port=80, port_open=True
    )
    for flags in (rst, syn_rst):  # a reset wins over a SYN
        evidence = matcher.match_tcp(frames.TcpReply(A, SCANNER, 80, COOKIES.sport, ack, flags), COOKIES, PORTS)
        assert isinstance(evidence, Evidence) and evidence.port_open is False
    ignored = [
        frames.TcpReply(A, SCANNER, 80, COOKIES.sport + 1, ack, syn_ack),  # to another port of ours
        frames.TcpReply(A, SCANNER, 443, COOKIES.sport, ack, syn_ack),  # from a port we did not probe
    ]
    assert [matcher.match_tcp(reply, COOKIES, PORTS) for reply in ignored] == [Ignored("tcp-port")] * 2
    for wrong in (ack - 1, COOKIES.tcp_seq(B, 80) + 1, COOKIES.tcp_seq(A, 22) + 1):
        reply = frames.TcpReply(A, SCANNER, 80, COOKIES.sport, wrong, syn_ack)
        assert matcher.match_tcp(reply, COOKIES, PORTS) == Ignored("tcp-cookie")


def test_unreachable() -> None:
    about_echo = frames.Unreachable(A, SCANNER, A, matcher.IP_PROTO_ICMP, code=2)
    assert matcher.match_unreachable(about_echo, PORTS) == Evidence(A, "icmp-unreachable", matcher.ICMP)
    about_syn = frames.Unreachable(A, SCANNER, A, matcher.IP_PROTO_TCP, port=22, code=3)
    assert matcher.match_unreachable(about_syn, PORTS) == Evidence(A, "icmp-unreachable", matcher.TCP, port=22)
    about_udp = frames.Unreachable(A, SCANNER, A, 17, code=3)
    assert matcher.match_unreachable(about_udp, PORTS) == Evidence(A, "icmp-unreachable", None)
    from_a_router = frames.Unreachable(GATEWAY, SCANNER, A, matcher.IP_PROTO_ICMP, code=1)
    about_another_port = frames.Unreachable(A, SCANNER, A, matcher.IP_PROTO_TCP, port=443, code=3)
    for reply in (from_a_router, about_another_port):
        assert matcher.match_unreachable(reply, PORTS) == Ignored("unreachable-other")


def test_cookies_differ_by_address_port_and_secret() -> None:
    other = Cookies(key=COOKIES.key ^ 1, echo_id=COOKIES.echo_id, sport=COOKIES.sport)
    values = {COOKIES.tcp_seq(A, 22), COOKIES.tcp_seq(B, 22), COOKIES.tcp_seq(A, 80), other.tcp_seq(A, 22)}
    assert len(values) == 4
    assert COOKIES.echo_seq(A) == COOKIES.tcp_seq(A, 0) & 0xFFFF
    fresh = Cookies.random()
    assert 40000 <= fresh.sport < 60000 and 0 <= fresh.echo_id < 0x10000
