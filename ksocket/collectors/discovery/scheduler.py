"""The discovery scheduler: what to send next and when, and what the answers settle. No sockets, no clock.

A target is in flight as one :class:`Probe` (a bit per unanswered packet: on an ARP path the one
ARP request; on an IP path bit 0 the ICMP echo and bit ``1 + i`` the TCP SYN to ``ports[i]``) on a
:class:`Path` (an interface, a stage and a next hop, with its own RTT estimate and its probes in
the order their waits end). The :class:`Scheduler` is fed the time and the :class:`~.matcher.Evidence`
of replies and hands out packets in the order the :class:`~.timing.Pacer` allows: retries first,
then the follow-up probes of hosts ARP found, then fresh targets drawn lazily from the target set.
A try whose wait is over is retried while the :class:`~.timing.RetryPolicy` allows; a silent
target that used up its tries is parked in two compact arrays (its position in the target set and
its tries: 5 bytes a target, IPv6 ones too) and gets more
tries at the end if the policy grew meanwhile.

Opening a path may need I/O (a capture on the interface, the gateway's MAC): the scheduler asks its
``open_path`` for one the first time a route needs it. Each path keeps its own RTT estimate and
its tries in flight, so a per-path congestion window (how many tries a path may have waiting) fits
there, checked where :meth:`Scheduler.next_packet` begins a try.
"""

from __future__ import annotations

import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ksocket.collectors.discovery import matcher, routes
from ksocket.collectors.discovery.targets import TargetSet
from ksocket.collectors.discovery.timing import Pacer, RetryPolicy, RttEstimator

MIN_WAIT = 0.02  # the floor of the wait for a reply, seconds
ARP_STAGE = "arp"
IP_STAGE = "ip"
ICMP_BIT = 0


@dataclass
class Settings:
    methods: frozenset[str]
    ports: tuple[int, ...]
    rate: float
    timeout: float  # the longest wait for one reply
    max_tries: int = 10


@dataclass
class Path:
    """One way out: an interface, a stage (ARP or IP) and a next hop; it keeps its own RTT estimate."""

    interface: str
    stage: str
    gateway: int | None
    gateway_mac: bytes | None
    rtt: RttEstimator
    waiting: deque[Probe] = field(default_factory=deque)  # tries sent, in the order their waits end

    @classmethod
    def opened(cls, interface: str, stage: str, gateway: int | None, gateway_mac: bytes | None, timeout: float) -> Path:
        """A path with no RTT sample yet: it waits ``timeout`` for a reply until it has one."""
        return cls(interface, stage, gateway, gateway_mac, RttEstimator(timeout, MIN_WAIT, timeout))


PathKey = tuple[str, str, int | None]
OpenPath = Callable[[routes.Decision, str], Path | None]


class Probe:
    __slots__ = ("counted", "done", "dst_mac", "path", "pending", "sent_mono", "sent_wall", "source", "target", "tries")

    def __init__(
        self, target: int, path: Path, source: int, pending: int, dst_mac: bytes | None, *, counted: bool = False
    ) -> None:
        self.target = target
        self.path = path
        self.source = source
        self.pending = pending
        self.dst_mac = dst_mac
        self.tries = 0
        self.counted = counted  # in the progress count already (a revived or follow-up probe)
        self.sent_mono = 0.0
        self.sent_wall = 0.0
        self.done = False


class Host:
    __slots__ = ("address", "closed", "evidence", "interface", "mac", "open", "rtt", "via")

    def __init__(self, address: int, interface: str, via: int | None) -> None:
        self.address = address
        self.interface = interface
        self.via = via
        self.mac: bytes | None = None
        self.rtt: float | None = None
        self.evidence: set[str] = set()
        self.open: set[int] = set()
        self.closed: set[int] = set()

    def note(self, evidence: matcher.Evidence) -> None:
        self.evidence.add(evidence.name)
        if evidence.mac is not None:
            self.mac = evidence.mac
        if evidence.port is not None and evidence.port_open is not None:
            (self.open if evidence.port_open else self.closed).add(evidence.port)


class Scheduler:
    """The probes of one scan: fed the time, the packets sent and the evidence of replies; asked what to send."""

    def __init__(self, targets: TargetSet, table: routes.RoutingTable, settings: Settings, open_path: OpenPath) -> None:
        self.targets = targets
        self.table = table
        self.settings = settings
        self.open_path = open_path
        self.policy = RetryPolicy(max_tries=settings.max_tries)
        self.pacer = Pacer(settings.rate, 0.0)  # its first slot is set by :meth:`start`
        self.paths: dict[PathKey, Path | None] = {}
        self.hosts: dict[int, Host] = {}
        self.inflight: dict[int, Probe] = {}
        self.retry: deque[Probe] = deque()
        self.followups: deque[Probe] = deque()
        self.parked_targets = array.array("I")
        self.parked_tries = bytearray()
        self.skipped: dict[str, int] = {}
        self.done = 0  # targets settled: found, skipped, or silent through their tries
        self.ip_mask = _ip_mask(settings)
        self._fresh: Iterator[int] = iter(targets)
        self._fresh_left = True
        self._sending: tuple[Probe, list[int]] | None = None  # the try going out, and its bits still to send

    def start(self, now: float) -> None:
        """The pacer's first slot is ``now``."""
        self.pacer = Pacer(self.settings.rate, now)

    # --- paths ---------------------------------------------------------------------------------

    def path_for(self, decision: routes.Decision) -> Path | None:
        stage = ARP_STAGE if decision.method == "arp" else IP_STAGE
        key = (decision.interface.name, stage, decision.gateway)
        if key not in self.paths:
            self.paths[key] = self.open_path(decision, stage)
        return self.paths[key]

    def _follow_up_path(self, interface: str) -> Path:
        key = (interface, IP_STAGE, None)
        path = self.paths.get(key)
        if path is None:
            path = Path.opened(interface, IP_STAGE, None, None, self.settings.timeout)
            self.paths[key] = path
        return path

    # --- sending -------------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Something is left to send (now or when the pacer allows)."""
        return bool(self._sending or self.retry or self.followups or self._fresh_left)

    def next_due(self) -> float:
        """When the next packet or the next expiry is due (infinity when neither is)."""
        due = self.pacer.next_at if self.has_work() else float("inf")
        for path in self.paths.values():
            if path is not None and path.waiting:
                due = min(due, path.waiting[0].sent_mono + path.rtt.timeout)
        return due

    def next_packet(self, now: float) -> tuple[Probe, int] | None:
        """The next packet to send (its probe and its bit), None when the pacer says wait or nothing is
        left. Call :meth:`sent` once it is out; until then the same packet is the one to resend."""
        if not self.pacer.ready(now):
            return None
        while True:
            if self._sending is None and not self._begin_try():
                return None
            assert self._sending is not None
            probe, bits = self._sending
            if not bits or probe.done:
                self._sending = None
                continue
            bit = bits[0]
            if probe.pending >> bit & 1:
                return probe, bit
            bits.pop(0)  # answered while we were sending the rest of this try
            if not bits:
                self._sending = None
                self._stamp(probe, now)

    def sent(self, probe: Probe, now: float, wall: float) -> None:
        """The packet :meth:`next_packet` gave went out at ``now`` (``wall`` on the capture's clock)."""
        self.pacer.consume(now)
        if not probe.sent_wall:  # the first packet of this try
            probe.sent_wall = wall
        assert self._sending is not None
        _, bits = self._sending
        bits.pop(0)
        if not bits:
            self._sending = None
            self._stamp(probe, now)

    def _begin_try(self) -> bool:
        """Takes the next probe to send a try of; False when there is none."""
        while True:
            probe = self._next_probe()
            if probe is None:
                return False
            if probe.done or self.inflight.get(probe.target, probe) is not probe:
                continue
            self.inflight[probe.target] = probe
            probe.sent_wall = 0.0
            self._sending = (probe, _bits(probe.pending))
            return True

    def _stamp(self, probe: Probe, now: float) -> None:
        """The try is out: its wait starts now."""
        probe.tries += 1
        probe.sent_mono = now
        probe.path.waiting.append(probe)

    def _next_probe(self) -> Probe | None:
        if self.retry:
            return self.retry.popleft()
        if self.followups:
            return self.followups.popleft()
        while self._fresh_left:
            try:
                target = next(self._fresh)
            except StopIteration:
                self._fresh_left = False
                return None
            if target in self.hosts:  # found before its turn: an IPv6 host answering our echo to all nodes
                self.done += 1
                continue
            probe = self._new_probe(target)
            if probe is not None:
                return probe
        return None

    def _new_probe(self, target: int, *, revived: bool = False) -> Probe | None:
        probe, skipped = self._probe_or_reason(target)
        if skipped and not revived:
            self.skipped[skipped] = self.skipped.get(skipped, 0) + 1
            self.done += 1
        return probe

    def _probe_or_reason(self, target: int) -> tuple[Probe | None, str]:
        decision = self.table.decide(target)
        if isinstance(decision, str):
            return None, decision
        if decision.method == "arp" and "arp" not in self.settings.methods:
            return None, "arp-disabled"
        path = self.path_for(decision)
        if path is None:
            unresolved = decision.method == "ip" and decision.gateway
            return None, "gateway-unresolved" if unresolved else routes.UNREACHABLE
        if path.stage == ARP_STAGE:
            return Probe(target, path, decision.source, 1, None), ""
        if not self.ip_mask:
            return None, "no-method"
        return Probe(target, path, decision.source, self.ip_mask, path.gateway_mac), ""

    # --- waits ---------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Tries whose wait is over at ``now`` go to the retries, or their targets are parked."""
        allowed = self.policy.allowed_tries()
        for path in self.paths.values():
            if path is None:
                continue
            wait = path.rtt.timeout
            waiting = path.waiting
            while waiting and (waiting[0].done or waiting[0].sent_mono + wait <= now):
                probe = waiting.popleft()
                if probe.done:
                    continue
                if probe.tries < allowed:
                    self.retry.append(probe)
                    continue
                self._finish(probe)
                if probe.target not in self.hosts:
                    self.parked_targets.append(self.targets.index(probe.target))
                    self.parked_tries.append(min(probe.tries, 255))

    def _finish(self, probe: Probe) -> None:
        probe.done = True
        if self.inflight.get(probe.target) is probe:
            del self.inflight[probe.target]
        if not probe.counted:
            probe.counted = True
            self.done += 1

    def revive(self) -> bool:
        """Silent targets that have fewer tries than the policy now allows go again; False when none."""
        allowed = self.policy.allowed_tries()
        if not any(tries < allowed for tries in self.parked_tries):
            return False
        targets, tries_left = self.parked_targets, self.parked_tries
        self.parked_targets, self.parked_tries = array.array("I"), bytearray()
        revived = False
        for position, tries in zip(targets, tries_left, strict=True):
            target = self.targets.at(position)
            if target in self.hosts:
                continue
            if tries >= allowed:
                self.parked_targets.append(position)
                self.parked_tries.append(tries)
                continue
            probe = self._new_probe(target, revived=True)
            if probe is not None:
                probe.tries = tries
                probe.counted = True
                self.retry.append(probe)
                revived = True
        return revived

    # --- answers -------------------------------------------------------------------------------

    def answer(self, evidence: matcher.Evidence, interface: str, stamp: float) -> bool:
        """Settles what ``evidence`` (a reply on ``interface``, captured at wall time ``stamp``) answers;
        True when it is the host's first answer."""
        probe = self.inflight.get(evidence.target)
        if probe is not None and (probe.path.stage == ARP_STAGE) != (evidence.answers == matcher.ARP):
            probe = None  # e.g. a late ARP reply while the follow-up probes run
        host = self.hosts.get(evidence.target)
        new = host is None
        if host is None:
            host = Host(evidence.target, interface, probe.path.gateway if probe is not None else None)
            self.hosts[evidence.target] = host
            if probe is not None:
                self.policy.record(max(0, probe.tries - 1))
        host.note(evidence)
        if probe is not None:
            self._measure(probe, host, stamp)
            self._settle(probe, evidence, counts=new)
        # no probe in flight: a late answer from a parked target, counted when it was parked
        if new and evidence.route is not None and self.ip_mask:
            self._follow_up(host, evidence.route)
        return new

    def _measure(self, probe: Probe, host: Host, stamp: float) -> None:
        if not probe.sent_wall:
            return
        rtt = stamp - probe.sent_wall
        if rtt < 0:
            return
        if host.rtt is None:
            host.rtt = rtt
        first_try = probe.tries == 0 or (probe.tries == 1 and not (self._sending and self._sending[0] is probe))
        if first_try:
            probe.path.rtt.sample(rtt)  # Karn: never a sample from a retransmitted try

    def _settle(self, probe: Probe, evidence: matcher.Evidence, *, counts: bool) -> None:
        if counts and not probe.counted:
            probe.counted = True
            self.done += 1
        probe.pending &= ~self._answered_bits(evidence)
        if probe.pending == 0:
            probe.done = True
            del self.inflight[probe.target]

    def _answered_bits(self, evidence: matcher.Evidence) -> int:
        if evidence.answers == matcher.ARP:
            return -1  # the whole ARP try
        if evidence.answers == matcher.ICMP:
            return 1 << ICMP_BIT
        if evidence.answers == matcher.TCP and evidence.port is not None:
            return 1 << (1 + self.settings.ports.index(evidence.port))
        return 0

    def _follow_up(self, host: Host, decision: routes.Decision) -> None:
        """ICMP and TCP probes to a host ARP found, to its MAC, for evidence and open ports."""
        if host.mac is None:
            return
        path = self._follow_up_path(decision.interface.name)
        self.followups.append(Probe(host.address, path, decision.source, self.ip_mask, host.mac, counted=True))


def _ip_mask(settings: Settings) -> int:
    """The bits of an IP probe's packets: the ICMP echo, then a TCP SYN per port."""
    mask = 1 << ICMP_BIT if "icmp" in settings.methods else 0
    if "tcp" in settings.methods:
        mask |= ((1 << len(settings.ports)) - 1) << 1
    return mask


def _bits(pending: int) -> list[int]:
    """The bits of the packets to send on a try."""
    return [bit for bit in range(pending.bit_length()) if pending >> bit & 1]
