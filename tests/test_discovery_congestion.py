"""Congestion control and robustness of the discovery engine, without sockets or a clock: the per-path
:class:`Window`, how the scheduler drives it, the RTT of the packet answered, retry backoff, an
interface that fails, and the SYN probes' reserved source port."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path as FilePath
from typing import Any

import dpkt
import pytest

from ksocket.collectors.base import NullContext, OperationFailed
from ksocket.collectors.discovery import engine as engine_module
from ksocket.collectors.discovery import frames, matcher, routes
from ksocket.collectors.discovery.engine import Engine, reserve_source_port
from ksocket.collectors.discovery.matcher import Evidence
from ksocket.collectors.discovery.scheduler import ARP_STAGE, INTERFACE_FAILED, IP_STAGE, Path, Scheduler, Settings
from ksocket.collectors.discovery.targets import parse_targets, to_int, to_str
from ksocket.collectors.discovery.timing import Window
from ksocket.protocol import ErrorCode
from tests.lab import Lab
from tests.labtools import make_lab, scan_in  # noqa: F401  (fixture)
from tests.test_discovery_core import Wire

SCANNER, SCANNER1 = to_int("198.18.0.1"), to_int("198.18.4.1")
GATEWAY = to_int("198.18.0.254")
MAC = bytes.fromhex("00163e000001")
ETH0 = routes.Interface("eth0", 2, "ether", bytes.fromhex("026b73000001"), True, ((SCANNER, 24, None),))
ETH1 = routes.Interface("eth1", 3, "ether", bytes.fromhex("026b73000002"), True, ((SCANNER1, 24, None),))
TABLE = routes.RoutingTable(
    {"eth0": ETH0, "eth1": ETH1},
    [
        routes.Route(to_int("198.18.0.0"), 24, "eth0", source=SCANNER),
        routes.Route(to_int("198.18.4.0"), 24, "eth1", source=SCANNER1),
        routes.Route(0, 0, "eth0", gateway=GATEWAY),
    ],
    frozenset({SCANNER, SCANNER1}),
)
A, B, C, D = (to_int(f"198.18.0.{n}") for n in (2, 3, 4, 5))
E = to_int("198.18.4.2")
ROUTED = to_int("198.18.16.5")
PORTS = (22, 80)


# --- the window ----------------------------------------------------------------------------------


def test_a_window_starts_at_its_ceiling_and_counts_the_tries_in_their_wait() -> None:
    window = Window(ceiling=3)
    assert window.cwnd == window.ssthresh == 3
    for _ in range(3):
        assert window.open()
        window.take()
    assert not window.open()
    window.release()
    assert window.open() and window.inflight == 2
    with pytest.raises(ValueError):
        Window(ceiling=10, floor=0.5)
    assert Window(ceiling=0.2).cwnd == 1  # never below its floor, even when the rate is tiny


def test_drops_beyond_random_loss_halve_the_window_once_per_epoch() -> None:
    window = Window(ceiling=1000)
    for _ in range(40):
        window.take()  # 40 tries in their wait: a window of 1000 means nothing more
    window.dropped(lost=1.0, now=2.0, tries=3)
    assert window.decreases == 0  # three lost tries in four: not yet significant
    window.dropped(lost=1.0, now=2.0, tries=3)
    assert window.decreases == 1
    assert window.cwnd == pytest.approx(41 / 2) and window.ssthresh == pytest.approx(41 * 3 / 4)
    assert window.epoch == 2.0
    for _ in range(10):
        window.dropped(lost=1.5, now=2.5, tries=9)  # lost before the decrease: already answered for
    assert window.decreases == 1 and window.drops == 0
    window.dropped(lost=2.1, now=3.0, tries=9)
    assert window.decreases == 2 and window.cwnd == pytest.approx(41 / 4)


def test_random_loss_within_the_tolerance_never_shrinks_the_window() -> None:
    window = Window(ceiling=50)
    for index in range(2000):
        if index % 5 == 3:  # one answer in five needed a second try: one try in six lost
            window.dropped(lost=float(index), now=float(index))
        else:
            window.answered(sent=float(index))
    assert window.decreases == 0 and window.cwnd == 50


def test_slow_start_below_ssthresh_then_one_per_window_above_it_never_above_the_ceiling() -> None:
    window = Window(ceiling=100)
    for _ in range(16):
        window.take()
    window.dropped(lost=0.0, now=1.0, tries=9)  # a target answered its tenth try
    assert (window.cwnd, window.ssthresh) == (8.5, 12.75)
    for _ in range(4):
        window.answered(sent=1.5)
    assert window.cwnd == 12.5  # slow start: one more per answer
    window.answered(sent=1.5)
    assert window.cwnd == 13.5
    window.answered(sent=1.5)
    assert window.cwnd == pytest.approx(13.5 + 1 / 13.5)  # congestion avoidance: one more per window
    for _ in range(10_000):
        window.answered(sent=2.0)
    assert window.cwnd == 100


def test_no_growth_while_the_drops_exceed_the_tolerance() -> None:
    window = Window(ceiling=100, confidence=100)  # never shrinks: only growth is looked at
    for _ in range(20):
        window.take()
    window.cwnd = 10
    window.dropped(lost=0.0, now=0.0)
    window.answered(sent=0.0)
    assert window.cwnd == 10  # one try lost in three
    for _ in range(2):
        window.answered(sent=0.0)
    assert window.cwnd > 10  # one in five: within the tolerance


def test_repeated_congestion_stops_at_the_floor() -> None:
    window = Window(ceiling=1000, floor=2)
    for round_ in range(20):
        window.dropped(lost=float(round_), now=float(round_) + 0.5, tries=9)
    assert window.cwnd == 2 and window.decreases == 20


# --- the scheduler drives the window -------------------------------------------------------------


def scheduler_for(targets: str, methods: str = "arp icmp tcp", *, rate: float = 1000) -> Scheduler:
    settings = Settings(frozenset(methods.split()), PORTS, rate=rate, timeout=1.0)

    def open_path(decision: routes.Decision, stage: str) -> Path | str | None:
        return Path.opened(decision.interface.name, stage, decision.gateway, 1.0)

    scheduler = Scheduler(parse_targets([targets]), TABLE, settings, open_path)
    scheduler.start(0.0)
    return scheduler


def arp_answer(target: int) -> Evidence:
    decision = TABLE.decide(target)
    assert isinstance(decision, routes.Decision)
    return Evidence(target, "arp", matcher.ARP, mac=MAC, route=decision)


def arp_path(scheduler: Scheduler) -> Path:
    return next(path for path in scheduler.open_paths() if path.stage == ARP_STAGE and path.interface == "eth0")


def test_the_window_ceiling_is_what_the_rate_can_have_waiting() -> None:
    scheduler = scheduler_for("198.18.0.2-198.18.0.5", rate=250)
    Wire(scheduler).send(1)
    assert arp_path(scheduler).window.ceiling == 250  # rate x the longest wait (1 s)


def test_a_closed_window_holds_tries_until_a_wait_ends_and_draws_no_more_targets() -> None:
    scheduler = scheduler_for("198.18.0.2-198.18.0.9")
    decision = TABLE.decide(A)
    assert isinstance(decision, routes.Decision)
    path = scheduler.path_for(decision)
    assert isinstance(path, Path)
    path.window = Window(ceiling=2)
    wire = Wire(scheduler)
    assert wire.send(5) == [(A, ARP_STAGE, 0), (B, ARP_STAGE, 0)]  # C is held: two tries are in their wait
    assert [probe.target for probe in path.held] == [C] and scheduler.has_work()
    assert scheduler.next_due() == pytest.approx(1.0)  # not the pacer's next slot: A's wait
    scheduler.answer(arp_answer(A), "eth0", 0.0005)  # its RTT sample makes the wait 20 ms
    assert wire.send(5) == [(A, IP_STAGE, 0), (A, IP_STAGE, 1), (A, IP_STAGE, 2)]  # other paths go on
    assert path.window.inflight == 2  # an answered try keeps its place to the end of its wait
    scheduler.expire(0.0205)  # A's wait is over, not B's
    wire.now = 0.0205
    assert wire.send(5) == [(C, ARP_STAGE, 0)]  # the held try first
    assert wire.send(5) == []  # B and C in their wait
    assert [probe.target for probe in path.held] == [D]  # D waits for a place; no target after it is drawn


def test_an_answer_to_a_retry_is_a_drop_an_answer_to_a_first_try_an_ack() -> None:
    scheduler = scheduler_for("198.18.0.2-198.18.0.3", "arp")
    wire = Wire(scheduler, now=0.5)
    wire.send(2)
    window = arp_path(scheduler).window
    scheduler.answer(arp_answer(B), "eth0", 0.5015)
    assert (window.acks, window.drops) == (1, 0)
    scheduler.expire(2.0)
    assert wire.send(1) == [(A, ARP_STAGE, 0)]
    scheduler.answer(arp_answer(A), "eth0", 0.503)
    assert (window.acks, window.drops) == (2, 1)  # the retry answered, the first try lost
    scheduler.answer(arp_answer(A), "eth0", 0.504)
    assert (window.acks, window.drops) == (2, 1)  # once per try


def test_a_path_that_drops_what_exceeds_its_rate_gets_a_smaller_window() -> None:
    scheduler = scheduler_for("198.18.0.0/24", "arp")
    scheduler.policy.min_tries = 4  # silent targets get four tries
    wire = Wire(scheduler)
    for _ in range(3):  # each round, the path carries one try in five: those targets answer
        sent = [target for target, _, _ in wire.send(300)]
        for target in sent[::5]:
            scheduler.answer(arp_answer(target), "eth0", wire.now)
        wire.now += 1.0
        scheduler.expire(wire.now)
    window = arp_path(scheduler).window
    assert window.decreases == 1  # the third round's answers showed two lost tries each
    assert window.cwnd < 100  # half of what was in its wait then, not of the ceiling


def test_retries_back_off() -> None:
    scheduler = scheduler_for("198.18.0.2", "arp")
    scheduler.policy.record(1)  # a host needed a second try: silent ones get three
    path = arp_path_after_first_send(scheduler)
    path.rtt.sample(0.001)
    first_wait = path.rtt.timeout
    assert path.wait(0) == first_wait and path.wait(1) == pytest.approx(first_wait * 1.5)
    assert path.wait(5) <= path.rtt.ceiling
    scheduler.expire(first_wait)
    wire = Wire(scheduler, now=first_wait)
    assert wire.send(1) == [(A, ARP_STAGE, 0)]
    scheduler.expire(first_wait * 2.1)
    assert not scheduler.retry  # the second try waits half as long again
    scheduler.expire(first_wait * 2.6)
    assert [probe.target for probe in scheduler.retry] == [A]


def arp_path_after_first_send(scheduler: Scheduler) -> Path:
    Wire(scheduler).send(1)
    return arp_path(scheduler)


# --- the RTT of the packet answered --------------------------------------------------------------


def test_the_rtt_is_measured_from_the_packet_answered() -> None:
    scheduler = scheduler_for("198.18.16.5")  # routed: ICMP at 0 ms, SYN to 22 at 1 ms, to 80 at 2 ms
    Wire(scheduler).send(3)
    path = scheduler.inflight[ROUTED].path
    scheduler.answer(Evidence(ROUTED, "tcp/80", matcher.TCP, port=80, port_open=False), "eth0", 0.0025)
    assert scheduler.hosts[ROUTED].rtt == pytest.approx(0.0005)
    assert path.rtt.samples == 1 and path.rtt.srtt == pytest.approx(0.0005)


def test_an_answer_to_a_packet_sent_twice_measures_from_the_latest_but_is_no_sample() -> None:
    scheduler = scheduler_for("198.18.16.5", "icmp")
    wire = Wire(scheduler)
    wire.send(1)
    scheduler.expire(1.0)
    wire.now = 1.0
    wire.send(1)
    path = scheduler.inflight[ROUTED].path
    scheduler.answer(Evidence(ROUTED, "icmp", matcher.ICMP), "eth0", 1.002)
    assert scheduler.hosts[ROUTED].rtt == pytest.approx(0.002)
    assert path.rtt.samples == 0  # Karn: the first echo may be the one answered


# --- an interface that fails ---------------------------------------------------------------------


def test_an_interface_that_fails_ends_its_paths_and_the_others_go_on() -> None:
    scheduler = scheduler_for("198.18.0.2-198.18.0.3,198.18.4.2-198.18.4.4", "arp")
    wire = Wire(scheduler)
    assert [target for target, _, _ in wire.send(3)] == [A, B, E]
    scheduler.fail_interface("eth1")
    assert INTERFACE_FAILED in scheduler.paths.values()
    assert wire.send(5) == []  # the rest of eth1's targets are skipped
    assert scheduler.skipped == {INTERFACE_FAILED: 3} and scheduler.done == 3
    scheduler.answer(arp_answer(A), "eth0", 0.0005)
    assert set(scheduler.hosts) == {A}
    scheduler.expire(1.0)
    assert [target for target, _, _ in wire.send(1)] == [B]  # eth0 goes on


class FakeLinkIO:
    """Opens eth0; eth1 cannot be opened."""

    def __init__(self, iface: routes.Interface, bpf: str, *, device: str | None = None) -> None:
        if iface.name == "eth1":
            raise OperationFailed(ErrorCode.INTERNAL, "cannot capture on eth1: No such device exists")
        self.iface = iface
        self.link_type = frames.DLT_EN10MB
        self.ethernet = True
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def read(self) -> list[tuple[float, bytes]]:
        return []

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def test_an_interface_that_cannot_be_opened_is_named_and_the_scan_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "LinkIO", FakeLinkIO)
    monkeypatch.setattr(engine_module.select, "select", lambda *args: ([], [], []))
    settings = Settings(frozenset({"arp"}), PORTS, 1000, 0.05)
    engine = Engine(
        parse_targets(["198.18.4.2", "198.18.0.2-198.18.0.3"]), TABLE, settings, NullContext(), clock=Clock()
    )
    engine.run()
    assert engine.failed == {"eth1": "cannot capture on eth1: No such device exists"}
    assert engine.skipped == {INTERFACE_FAILED: 1}
    summary = engine.summary()
    assert summary["failedInterfaces"] == engine.failed
    assert [path["interface"] for path in summary["paths"]] == ["eth0"]
    assert summary["packetsSent"] >= 2  # eth0's targets were probed


def test_when_no_interface_can_be_opened_the_scan_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "LinkIO", FakeLinkIO)
    settings = Settings(frozenset({"arp"}), PORTS, 1000, 0.05)
    engine = Engine(parse_targets(["198.18.4.2"]), TABLE, settings, NullContext(), clock=Clock())
    with pytest.raises(OperationFailed, match="cannot capture on eth1"):
        engine.run()


def test_a_link_that_fails_mid_scan_is_taken_out(monkeypatch: pytest.MonkeyPatch) -> None:
    class Vanishing(FakeLinkIO):
        def read(self) -> list[tuple[float, bytes]]:
            if self.sent:
                raise engine_module.LinkFailed(f"capturing on {self.iface.name}: The interface went down")
            return []

    monkeypatch.setattr(engine_module, "LinkIO", Vanishing)
    monkeypatch.setattr(engine_module.select, "select", lambda *args: ([], [], []))
    settings = Settings(frozenset({"arp"}), PORTS, 1000, 0.05)
    engine = Engine(parse_targets(["198.18.0.2-198.18.0.5"]), TABLE, settings, NullContext(), clock=Clock())
    engine.run()
    assert engine.failed == {"eth0": "capturing on eth0: The interface went down"}
    assert sum(engine.skipped.values()) >= 1 and engine.links == {}


def test_a_pcap_read_error_is_a_link_failure() -> None:
    link = object.__new__(engine_module.LinkIO)
    link.iface = ETH0

    class Capture:
        def readpkts(self) -> Any:
            raise OSError(errno.ENETDOWN, "The interface went down")

    link.capture = Capture()
    with pytest.raises(engine_module.LinkFailed, match=r"capturing on eth0: .*went down"):
        link.read()


# --- the SYN probes' source port -----------------------------------------------------------------


def test_the_source_port_is_outside_the_ephemeral_range_and_held(tmp_path: FilePath) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    reservation = reserve_source_port(ranges)
    try:
        port = reservation.getsockname()[1]
        assert 61000 <= port <= 65535
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(OSError) as caught:
            other.bind(("0.0.0.0", port))  # the port is taken, whatever the address
        other.close()
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        reservation.close()
    ranges.write_text("30000 65500\n")  # too few ports above: below the range
    reservation = reserve_source_port(ranges)
    assert 1024 <= reservation.getsockname()[1] < 30000
    reservation.close()


def test_a_taken_port_is_skipped(tmp_path: FilePath) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768 60999\n")
    taken = reserve_source_port(ranges)
    port = taken.getsockname()[1]
    picks = iter([port, port, port + 1 if port < 65535 else port - 1])
    try:
        reservation = reserve_source_port(ranges, choose=lambda ports: next(picks))
        assert reservation.getsockname()[1] != port
        reservation.close()
    finally:
        taken.close()


class FakeKernelSender:
    """Keeps the packets the kernel would have routed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, packet: bytes, source: int, destination: int) -> None:
        self.sent.append(packet)

    def close(self) -> None:
        pass


def test_the_engine_sends_its_syns_from_the_reserved_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "LinkIO", FakeLinkIO)
    monkeypatch.setattr(engine_module, "KernelSender", FakeKernelSender)
    monkeypatch.setattr(engine_module.select, "select", lambda *args: ([], [], []))
    ports = []
    real = engine_module.reserve_source_port

    def reserve() -> socket.socket:
        reservation = real()
        ports.append(reservation.getsockname()[1])
        return reservation

    monkeypatch.setattr(engine_module, "reserve_source_port", reserve)
    settings = Settings(frozenset({"tcp"}), PORTS, 1000, 0.05)
    engine = Engine(parse_targets(["198.18.16.5"]), TABLE, settings, NullContext(), clock=Clock())
    engine.run()
    low, high = (int(part) for part in FilePath("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert not low <= ports[0] <= high
    assert engine.cookies.sport == ports[0] and engine.asked.cookies.sport == ports[0]
    assert isinstance(engine.kernel, FakeKernelSender)  # routed: the SYNs go through the kernel
    syns = [dpkt.ip.IP(packet).data for packet in engine.kernel.sent]
    assert len(syns) >= 2 and {syn.sport for syn in syns} == {ports[0]}
    assert engine._port is not None and engine._port.fileno() == -1  # given back when the scan ended


# --- in the lab ----------------------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.timeout(300)
def test_a_slow_path_is_scanned_at_what_it_carries(make_lab) -> None:  # noqa: F811
    """The scanner's port carries 100 frames a second; the scan asks for 1,000: its window shrinks to what
    the path carries, and the retries find everyone."""
    lab: Lab = make_lab().flat(200, prefixlen=24).slow_path(100).up()
    result = scan_in(lab, {"targets": [lab.cidr("lan")], "methods": ["arp"], "rate": 1000, "dns": False})
    hosts = {host["address"] for host in result["hosts"]}
    expected = lab.expected("lan")
    assert hosts <= expected  # never a false positive
    assert len(hosts) >= len(expected) - 1
    (path,) = result["stats"]["paths"]
    assert path["windowDecreases"] >= 1 and path["window"] < 1000


@pytest.mark.lab
def test_without_the_switch_the_bridge_floods_and_the_scan_still_finds_everyone(make_lab) -> None:  # noqa: F811
    lab: Lab = make_lab(switch=False).flat(20, prefixlen=27).up()
    rules = lab.exec_in(lab.bridge_ns, ["nft", "list", "ruleset"]).stdout
    assert "fwd to" not in rules
    result = scan_in(lab, {"targets": [lab.cidr("lan")], "methods": ["arp"], "dns": False})
    assert {host["address"] for host in result["hosts"]} == lab.expected("lan")


DEVICE_GONE = """
import json, subprocess
from ksocket.collectors.base import NullContext
from ksocket.collectors.discovery import routes
from ksocket.collectors.discovery.engine import Engine
from ksocket.collectors.discovery.scheduler import Settings
from ksocket.collectors.discovery.targets import parse_targets

table = routes.RoutingTable.from_kernel()
subprocess.run(["ip", "link", "del", "gone0"], check=True)  # it was there when the routes were read
settings = Settings(frozenset({"arp"}), (22,), 1000, 0.5)
engine = Engine(parse_targets(["198.18.40.0/29", "198.18.0.0/28"]), table, settings, NullContext())
engine.run()
print(json.dumps({"hosts": sorted(engine.hosts), "failed": engine.failed, "skipped": engine.skipped}))
"""


@pytest.mark.lab
def test_an_interface_that_is_gone_when_the_scan_opens_it_leaves_the_others_scanning(make_lab) -> None:  # noqa: F811
    lab: Lab = make_lab().flat(6, prefixlen=28).up()
    for command in (
        "link add gone0 type veth peer name gone1",
        "link set gone1 up",
        "addr add 198.18.40.1/29 dev gone0",
        "link set gone0 up",
    ):
        lab.run_in_scanner(["ip", *command.split()], check=True)
    done = lab.python_in_scanner(DEVICE_GONE)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {to_str(address) for address in report["hosts"]} == lab.expected("lan")
    assert list(report["failed"]) == ["gone0"] and "gone0" in report["failed"]["gone0"]
    assert report["skipped"]["interface-failed"] == 5  # .2-.6: the network, broadcast and own address aside
    print(report["failed"])
