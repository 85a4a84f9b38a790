"""The discovery scheduler: what to send next and when, and what the answers settle. No sockets, no clock.

A target is in flight as one :class:`Probe` (a bit per unanswered packet: on an ARP path the one
ARP request; on an IP path bit 0 the ICMP echo and bit ``1 + i`` the TCP SYN to ``ports[i]``) on a
:class:`Path` (an interface, a stage and a next hop, with its own RTT estimate and its tries in
the order their waits end, one queue per backoff: each retry waits half as long again as the try
before it). The :class:`Scheduler` is fed the time and the :class:`~.matcher.Evidence`
of replies and hands out packets in the order the :class:`~.timing.Pacer` allows: retries first,
then the follow-up probes of hosts ARP found, then fresh targets drawn lazily from the target set.
A try whose wait is over is retried while the :class:`~.timing.RetryPolicy` allows; a silent
target that used up its tries is parked in two compact arrays (its position in the target set and
its tries: 5 bytes a target, IPv6 ones too) and goes again as soon as the policy allows more tries
(and once more at the end).

Each path has a congestion :class:`~.timing.Window`: a try begins only while its path's window is
open, else it is held on the path until the end of a wait frees a place (a held fresh target stops
the drawing of more, so what is held stays bounded). The window learns from the answers: a try
answered grows it; a retry answered shows the tries before it lost (drops).
The RTT is measured from the packet that was answered (each packet's own send time); an answer to
a packet sent more than once is ambiguous and, by Karn's rule, never an RTT sample of the path.

Opening a path may need I/O (a capture on the interface): the scheduler asks its
``open_path`` for one the first time a route needs it; it answers a :class:`Path`, or why there is
none. An interface that fails during the scan (:meth:`Scheduler.fail_interface`) ends its paths:
their targets are skipped as ``interface-failed``, the other paths go on.
"""

from __future__ import annotations

import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ksocket.collectors.discovery import matcher, routes
from ksocket.collectors.discovery.targets import TargetSet
from ksocket.collectors.discovery.timing import Pacer, RetryPolicy, RttEstimator, Window

MIN_WAIT = 0.02  # the floor of the wait for a reply, seconds
BACKOFFS = 6  # a retry waits twice as long as the try before it, up to 2**(BACKOFFS-1) times the first
ARP_STAGE = "arp"
IP_STAGE = "ip"
ICMP_BIT = 0
INTERFACE_FAILED = "interface-failed"


@dataclass
class Settings:
    methods: frozenset[str]
    ports: tuple[int, ...]
    rate: float
    timeout: float  # the longest wait for one reply
    # a path at its limit loses some 40% of the tries: 12 keep a thousand live hosts' misses near 0.02
    max_tries: int = 12


@dataclass
class Path:
    """One way out: an interface, a stage (ARP or IP) and a next hop; it keeps its own RTT estimate."""

    interface: str
    stage: str
    gateway: int | None
    rtt: RttEstimator
    # tries sent, by backoff (the n-th try waits 2**(n-1) times the first), each in the order its waits end
    waiting: list[deque[Probe]] = field(default_factory=lambda: [deque() for _ in range(BACKOFFS)])
    window: Window = field(default_factory=lambda: Window(float("inf")))  # the scheduler sizes it
    held: deque[Probe] = field(default_factory=deque)  # tries to begin when the window opens
    failed: bool = False

    @classmethod
    def opened(cls, interface: str, stage: str, gateway: int | None, timeout: float) -> Path:
        """A path with no RTT sample yet: it waits ``timeout`` for a reply until it has one."""
        return cls(interface, stage, gateway, RttEstimator(timeout, MIN_WAIT, timeout))

    def wait(self, backoff: int) -> float:
        """How long a try of ``backoff`` waits for its answer: retries back off, so that a path that
        drops what exceeds its rate does not meet every retry of a target at the same moment."""
        return min(self.rtt.ceiling, self.rtt.timeout * (1 + backoff / 2))

    def tries_waiting(self) -> list[Probe]:
        return [probe for waiting in self.waiting for probe in waiting]


PathKey = tuple[str, str, int | None]
OpenPath = Callable[[routes.Decision, str], Path | str | None]  # a path, or why there is none


class Probe:
    __slots__ = (
        "counted",
        "done",
        "dst_mac",
        "holding",
        "path",
        "pending",
        "previous_mono",
        "sent_bits",
        "sent_mono",
        "source",
        "target",
        "told",
        "tries",
    )

    def __init__(
        self, target: int, path: Path, source: int, pending: int, dst_mac: bytes | None, *, counted: bool = False
    ) -> None:
        self.target = target
        self.path = path
        self.source = source
        self.pending = pending
        self.dst_mac = dst_mac
        self.tries = 0  # tries begun
        self.counted = counted  # in the progress count already (a revived or follow-up probe)
        self.sent_mono = 0.0  # when the latest try was out
        self.previous_mono = 0.0  # when the try before it was out
        self.sent_bits: dict[int, tuple[float, int]] = {}  # bit -> (wall time of its latest send, sends)
        self.holding = False  # a place in its path's window, from the try's start to the end of its wait
        self.told = 0  # the latest try whose answer the window was told
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
        self.paths: dict[PathKey, Path | str] = {}
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
        self._fresh_held_on: Path | None = None  # no fresh target is drawn while this path holds one
        self._now = 0.0  # the latest time the scheduler was told
        self._allowed = self.policy.allowed_tries()  # the tries the policy allowed at the last expiry
        self._sending: tuple[Probe, list[int]] | None = None  # the try going out, and its bits still to send

    def start(self, now: float) -> None:
        """The pacer's first slot is ``now``."""
        self.pacer = Pacer(self.settings.rate, now)
        self._now = now

    # --- paths ---------------------------------------------------------------------------------

    def open_paths(self) -> list[Path]:
        return [path for path in self.paths.values() if isinstance(path, Path)]

    def path_for(self, decision: routes.Decision) -> Path | str:
        """The path ``decision`` goes out on, or why there is none (opened the first time it is asked)."""
        stage = ARP_STAGE if decision.method == "arp" else IP_STAGE
        key = (decision.interface.name, stage, decision.gateway)
        if key not in self.paths:
            path = self.open_path(decision, stage)
            if path is None:
                path = routes.UNREACHABLE
            self.paths[key] = self._sized(path)
        return self.paths[key]

    def _sized(self, path: Path | str) -> Path | str:
        """``path`` with its window: its ceiling is the most tries the pacer can have waiting."""
        if isinstance(path, Path):
            path.window = Window(max(1.0, self.settings.rate * self.settings.timeout))
        return path

    def _follow_up_path(self, interface: str) -> Path | None:
        key = (interface, IP_STAGE, None)
        path = self.paths.get(key)
        if path is None:
            path = self._sized(Path.opened(interface, IP_STAGE, None, self.settings.timeout))
            self.paths[key] = path
        return path if isinstance(path, Path) else None

    def fail_interface(self, interface: str) -> None:
        """``interface`` can no longer send or capture: its paths end, their targets are skipped."""
        for key, path in self.paths.items():
            if not isinstance(path, Path) or path.interface != interface:
                continue
            path.failed = True
            self.paths[key] = INTERFACE_FAILED
            for probe in (*path.tries_waiting(), *path.held):
                self._abandon(probe)
            path.waiting = [deque() for _ in range(BACKOFFS)]
            path.held.clear()
        if self._sending is not None and self._sending[0].path.failed:
            self._abandon(self._sending[0])
            self._sending = None

    def _abandon(self, probe: Probe) -> None:
        """A probe whose path failed: settled without an answer, its target skipped if not found."""
        if probe.done:
            return
        if probe.target not in self.hosts:
            self.skipped[INTERFACE_FAILED] = self.skipped.get(INTERFACE_FAILED, 0) + 1
        self._finish(probe)

    # --- sending -------------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Something is left to send (now or when the pacer and the windows allow)."""
        return self._sendable() or any(path.held for path in self.open_paths())

    def _sendable(self) -> bool:
        """Something may be sent as soon as the pacer allows (what waits for a window does not count)."""
        fresh = self._fresh_left and not (self._fresh_held_on and self._fresh_held_on.held)
        held = any(path.held and path.window.open() for path in self.open_paths())
        return bool(self._sending or self.retry or self.followups or fresh or held)

    def next_due(self) -> float:
        """When the next packet or the next expiry is due (infinity when neither is)."""
        due = self.pacer.next_at if self._sendable() else float("inf")
        for path in self.open_paths():
            for backoff, waiting in enumerate(path.waiting):
                if waiting:
                    due = min(due, waiting[0].sent_mono + path.wait(backoff))
        return due

    def next_packet(self, now: float) -> tuple[Probe, int] | None:
        """The next packet to send (its probe and its bit), None when the pacer says wait or nothing is
        left. Call :meth:`sent` once it is out; until then the same packet is the one to resend."""
        self._now = max(self._now, now)
        if not self.pacer.ready(now):
            return None
        while True:
            if self._sending is None and not self._begin_try():
                return None
            assert self._sending is not None
            probe, bits = self._sending
            if not bits or probe.done:
                self._release(probe)  # answered before the rest of its try went out
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
        self._now = max(self._now, now)
        assert self._sending is not None
        _, bits = self._sending
        bit = bits.pop(0)
        probe.sent_bits[bit] = (wall, probe.sent_bits.get(bit, (0.0, 0))[1] + 1)
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
            if probe.path.failed:
                self._abandon(probe)
                continue
            if not probe.path.window.open():
                probe.path.held.append(probe)
                continue
            self.inflight[probe.target] = probe
            probe.tries += 1
            probe.holding = True
            probe.path.window.take()
            self._sending = (probe, _bits(probe.pending))
            return True

    def _stamp(self, probe: Probe, now: float) -> None:
        """The try is out: its wait starts now."""
        probe.previous_mono = probe.sent_mono
        probe.sent_mono = now
        probe.path.waiting[min(probe.tries, BACKOFFS) - 1].append(probe)

    def _release(self, probe: Probe) -> None:
        """The try no longer waits: its place in the window is free."""
        if probe.holding:
            probe.holding = False
            probe.path.window.release()

    def _next_probe(self) -> Probe | None:
        for path in self.open_paths():
            if path.held and path.window.open():
                return path.held.popleft()
        if self.retry:
            return self.retry.popleft()
        if self.followups:
            return self.followups.popleft()
        return self._next_fresh()

    def _next_fresh(self) -> Probe | None:
        if self._fresh_held_on is not None and self._fresh_held_on.held:
            return None  # the last fresh target waits for its path's window: draw no more
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
                self._fresh_held_on = probe.path
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
        if isinstance(path, str):
            return None, path
        if path.stage == ARP_STAGE:
            return Probe(target, path, decision.source, 1, None), ""
        if not self.ip_mask:
            return None, "no-method"
        return Probe(target, path, decision.source, self.ip_mask, None), ""

    # --- waits ---------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Tries whose wait is over at ``now`` go to the retries, or their targets are parked; when the
        policy allows more tries than before, the parked targets go again at once."""
        self._now = max(self._now, now)
        allowed = self.policy.allowed_tries()
        if allowed > self._allowed:
            self._allowed = allowed
            self.revive()
        for path in self.open_paths():
            for backoff, waiting in enumerate(path.waiting):
                wait = path.wait(backoff)
                while waiting and waiting[0].sent_mono + wait <= now:
                    self._expired(waiting.popleft(), allowed)

    def _expired(self, probe: Probe, allowed: int) -> None:
        """``probe``'s try waited its time: a retry if the policy allows, else its target is parked."""
        self._release(probe)
        if probe.done:
            return
        if probe.tries < allowed:
            self.retry.append(probe)
            return
        self._finish(probe)
        if probe.target not in self.hosts:
            self.parked_targets.append(self.targets.index(probe.target))
            self.parked_tries.append(min(probe.tries, 255))

    def _finish(self, probe: Probe) -> None:
        probe.done = True
        self._release(probe)
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
            answered = self._answered_bits(evidence)
            self._measure(probe, host, answered, stamp)
            self._inform_window(probe)
            self._settle(probe, answered, counts=new)
        # no probe in flight: a late answer from a parked target, counted when it was parked
        if new and evidence.route is not None and self.ip_mask:
            self._follow_up(host, evidence.route)
        return new

    def _measure(self, probe: Probe, host: Host, answered: int, stamp: float) -> None:
        """The RTT from the send of the packet answered: the latest one (an answer to a retry measures
        from the retry); one sent more than once is ambiguous, never a sample of the path (Karn)."""
        bit = (answered & -answered).bit_length() - 1  # the lowest bit answered; -1 for none
        if bit < 0 or bit not in probe.sent_bits:
            return
        sent, sends = probe.sent_bits[bit]
        rtt = stamp - sent
        if rtt < 0:
            return
        if host.rtt is None:
            host.rtt = rtt
        if sends == 1:
            probe.path.rtt.sample(rtt)

    def _inform_window(self, probe: Probe) -> None:
        """The first answer to a try tells its path's window: an answer, or a drop when the try before
        it went unanswered."""
        if probe.told == probe.tries:
            return  # another answer to a try already answered
        probe.told = probe.tries
        stamped = not (self._sending and self._sending[0] is probe)  # else answered while going out
        sent, before = (probe.sent_mono, probe.previous_mono) if stamped else (self._now, probe.sent_mono)
        if probe.tries == 1:
            probe.path.window.answered(sent)
        elif before:  # not a revived target's first new try: when its last try went out is not kept
            probe.path.window.dropped(before, self._now, probe.tries - 1)

    def _settle(self, probe: Probe, answered: int, *, counts: bool) -> None:
        if counts and not probe.counted:
            probe.counted = True
            self.done += 1
        probe.pending &= ~answered
        if probe.pending == 0:
            probe.done = True  # its place in the window is kept to the end of its wait
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
        path = self._follow_up_path(decision.interface.name)
        if host.mac is None or path is None:
            return
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
