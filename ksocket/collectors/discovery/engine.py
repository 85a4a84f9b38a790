"""The send/capture engine: probes out through pypcap at a paced rate, replies in through a BPF filter.

One :class:`LinkIO` per interface holds a pcap handle (immediate mode, non-blocking, inbound only,
filtered to the scan's replies) and sends with ``pcap_sendpacket``; on a Linux cooked link, where
libpcap cannot inject, it sends through a raw IPv4 socket bound to the interface.

The :class:`Engine` loop, single-threaded: read every capture, expire probes whose wait is over
(retry them or give up), send what the :class:`~.timing.Pacer` allows (retries first, then the
follow-up probes of hosts ARP found, then fresh targets drawn lazily from the target set), report
progress, check for cancellation, and sleep in ``select`` until the next of those is due.

A target is in flight as one :class:`Probe` (a bit per unanswered packet); silent targets that used
up their tries are parked in two compact arrays and get more tries at the end if the retry policy
grew meanwhile. Memory is the in-flight window (rate x wait), the parked arrays (5 bytes a target)
and the hosts found.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pcap

from ksocket.collectors.base import Context, OperationFailed
from ksocket.collectors.discovery import frames, routes
from ksocket.collectors.discovery.targets import TargetSet, to_str
from ksocket.collectors.discovery.timing import Pacer, RetryPolicy, RttEstimator

SO_BINDTODEVICE = 25
MIN_WAIT = 0.02  # the floor of the wait for a reply, seconds
LINGER = 0.03  # after the last probe's wait, one more look for late replies
TICK = 0.1  # progress and cancellation checks
SEND_BATCH = 32  # packets sent before the captures are read again
ARP_STAGE = "arp"
IP_STAGE = "ip"


class SendBlocked(Exception):
    """The link's queue is full for now (ENOBUFS/EAGAIN): try the same packet again shortly."""


class LinkIO:
    """Capture and send on one interface."""

    def __init__(self, iface: routes.Interface, bpf: str, *, device: str | None = None) -> None:
        self.iface = iface
        try:
            self.capture = pcap.pcap(
                name=device or iface.name, snaplen=256, promisc=False, timeout_ms=1, immediate=True
            )
            self.capture.setfilter(bpf)
            with contextlib.suppress(Exception):
                self.capture.setdirection(pcap.PCAP_D_IN)
            self.capture.setnonblock(True)
        except OSError as error:
            raise OperationFailed(
                "internal", f"cannot capture on {iface.name}: {_text(error)} (needs root or CAP_NET_RAW)"
            ) from None
        self.link_type = int(self.capture.datalink())
        self.raw: socket.socket | None = None
        if self.link_type in (frames.DLT_LINUX_SLL, frames.DLT_LINUX_SLL2) or device == "any":
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.raw.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.name.encode())
            self.raw.setblocking(False)
        elif self.link_type not in frames.KNOWN_LINK_TYPES:
            self.close()
            raise OperationFailed("internal", f"{iface.name}: link type {self.link_type} is not supported")

    @property
    def ethernet(self) -> bool:
        return self.link_type == frames.DLT_EN10MB and self.raw is None

    def fileno(self) -> int:
        return int(self.capture.fileno())

    def send(self, data: bytes, destination: int) -> None:
        try:
            if self.raw is not None:
                self.raw.sendto(data, (to_str(destination), 0))
            else:
                self.capture.sendpacket(data)
        except BlockingIOError:
            raise SendBlocked from None
        except OSError as error:
            text = _text(error)
            if error.errno in (errno.ENOBUFS, errno.EAGAIN) or "No buffer space" in text or "temporarily" in text:
                raise SendBlocked from None
            raise OperationFailed("unreachable", f"sending on {self.iface.name}: {text}", transient=True) from None

    def read(self) -> list[tuple[float, bytes]]:
        try:
            packets: list[tuple[float, bytes]] = self.capture.readpkts()
        except OSError:
            return []
        return packets

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.capture.close()
        if self.raw is not None:
            self.raw.close()


def _text(error: BaseException) -> str:
    parts = [part.decode(errors="replace") if isinstance(part, bytes) else str(part) for part in error.args]
    return " ".join(parts) or type(error).__name__


@dataclass
class Path:
    """One way out: an interface, a stage (ARP or IP) and a next hop; it keeps its own RTT estimate."""

    link: LinkIO
    stage: str
    gateway: int | None
    gateway_mac: bytes | None
    rtt: RttEstimator
    waiting: deque[Probe] = field(default_factory=deque)


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


@dataclass
class Settings:
    methods: frozenset[str]
    ports: tuple[int, ...]
    rate: float
    timeout: float  # the longest wait for one reply
    max_tries: int = 10


@dataclass
class Stats:
    sent: int = 0
    replies: int = 0
    ignored: dict[str, int] = field(default_factory=dict)  # frames let in that answer no probe of ours, by why
    blocked: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    gateway_arp: list[str] = field(default_factory=list)


class Engine:
    def __init__(
        self,
        targets: TargetSet,
        table: routes.RoutingTable,
        settings: Settings,
        context: Context,
        *,
        on_found: Callable[[int], None] | None = None,
        capture_device: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = targets
        self.table = table
        self.settings = settings
        self.context = context
        self.on_found = on_found
        self.capture_device = capture_device
        self.clock = clock
        self.policy = RetryPolicy(max_tries=settings.max_tries)
        self.hosts: dict[int, Host] = {}
        self.inflight: dict[int, Probe] = {}
        self.retry: deque[Probe] = deque()
        self.followups: deque[Probe] = deque()
        self.parked_targets = array.array("I")
        self.parked_tries = bytearray()
        self.links: dict[str, LinkIO] = {}
        self.paths: dict[tuple[str, str, int | None], Path | None] = {}
        self.stats = Stats()
        self.done = 0
        self.key = int.from_bytes(os.urandom(4), "big")
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.sport = 40000 + int.from_bytes(os.urandom(2), "big") % 20000
        self.sources: set[int] = set()
        self._fresh: Iterator[int] = iter(targets)
        self._fresh_left = True
        self._sending: tuple[Probe, list[int]] | None = None
        self._blocked: tuple[bytes, int] | None = None
        self.started = 0.0
        self.finished = 0.0

    # cookies: a reply must carry what only our probe to that address could have told it
    def cookie(self, address: int, port: int) -> int:
        value = (address * 0x9E3779B1 ^ (port << 16) ^ self.key) & 0xFFFFFFFF
        value ^= value >> 15
        value = (value * 0x85EBCA6B) & 0xFFFFFFFF
        return value ^ (value >> 13)

    def icmp_seq(self, address: int) -> int:
        return self.cookie(address, 0) & 0xFFFF

    # --- set-up --------------------------------------------------------------------------------

    def _bpf(self, iface: routes.Interface) -> str:
        hosts = [to_str(address) for address, _, _ in iface.addresses]
        ip_part = " or ".join(f"dst host {host}" for host in hosts) or "dst host 0.0.0.0"
        ip_filter = f"(ip and ({ip_part}) and (icmp or (tcp and dst port {self.sport})))"
        arp_part = " or ".join(f"arp[24:4] = 0x{address:08x}" for address, _, _ in iface.addresses)
        if iface.ethernet and arp_part and self.capture_device is None:
            return f"(arp and arp[6:2] = 2 and ({arp_part})) or {ip_filter}"
        return ip_filter

    def link(self, iface: routes.Interface) -> LinkIO:
        link = self.links.get(iface.name)
        if link is None:
            link = LinkIO(iface, self._bpf(iface), device=self.capture_device)
            self.links[iface.name] = link
            self.sources.update(address for address, _, _ in iface.addresses)
        return link

    def path_for(self, decision: routes.Decision) -> Path | None:
        stage = ARP_STAGE if decision.method == "arp" else IP_STAGE
        key = (decision.interface.name, stage, decision.gateway)
        if key in self.paths:
            return self.paths[key]
        link = self.link(decision.interface)
        gateway_mac = None
        if stage == IP_STAGE and link.ethernet:
            if decision.gateway is None:
                return None
            gateway_mac = self._resolve(link, decision.source, decision.gateway)
            if gateway_mac is None:
                self.paths[key] = None
                return None
        if stage == ARP_STAGE and not link.ethernet:
            self.paths[key] = None
            return None
        initial = self.settings.timeout
        path = Path(link, stage, decision.gateway, gateway_mac, RttEstimator(initial, MIN_WAIT, self.settings.timeout))
        self.paths[key] = path
        return path

    def _resolve(self, link: LinkIO, source: int, gateway: int) -> bytes | None:
        """The gateway's MAC: from the kernel's neighbour table, else by asking it (ARP, 3 tries)."""
        known = self.table.neighbours.get((link.iface.name, gateway))
        if known:
            return known
        assert link.iface.mac is not None
        request = frames.arp_request(link.iface.mac, source, gateway)
        self.stats.gateway_arp.append(to_str(gateway))
        for _ in range(3):
            with contextlib.suppress(SendBlocked):
                link.send(request, gateway)
                self.stats.sent += 1
            end = self.clock() + 0.5
            while self.clock() < end:
                self.context.check_cancelled()
                select.select([link.fileno()], [], [], 0.05)
                for _, data in link.read():
                    reply = frames.parse(link.link_type, data)
                    if reply is not None and reply.kind == "arp" and reply.src == gateway and reply.dst == source:
                        return reply.mac
                    if reply is not None:
                        self._handle(reply, time.time(), link)  # a target answered meanwhile: keep it
        return None

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        self.started = self.clock()
        self.pacer = Pacer(self.settings.rate, self.started)
        next_tick = self.started
        try:
            while True:
                now = self.clock()
                self._drain()
                self._expire(now)
                self._send()
                now = self.clock()
                if now >= next_tick:
                    self.context.check_cancelled()
                    self.context.progress(min(self.done, self.targets.size), self.targets.size)
                    next_tick = now + TICK
                if not self._has_work() and not self.inflight:
                    if not self._revive():
                        break
                    continue
                self._wait(next_tick)
            end = self.clock() + LINGER
            while self.clock() < end:
                self._wait(end)
                self._drain()
        finally:
            self.finished = self.clock()
            for link in self.links.values():
                link.close()
        self.context.progress(self.targets.size, self.targets.size)

    def _has_work(self) -> bool:
        return bool(self._sending or self._blocked or self.retry or self.followups or self._fresh_left)

    def _wait(self, next_tick: float) -> None:
        now = self.clock()
        deadline = next_tick
        if self._has_work():
            deadline = min(deadline, self.pacer.next_at if not self._blocked else now + 0.001)
        for path in self.paths.values():
            if path is not None and path.waiting:
                deadline = min(deadline, path.waiting[0].sent_mono + path.rtt.timeout)
        delay = max(0.0, min(deadline - now, TICK))
        fds = [link.fileno() for link in self.links.values()]
        if delay > 0:
            if fds:
                select.select(fds, [], [], delay)
            else:
                time.sleep(delay)

    def _drain(self) -> None:
        for link in self.links.values():
            for stamp, data in link.read():
                reply = frames.parse(link.link_type, data)
                if reply is None:
                    self._ignore("unparsed")
                    continue
                self._handle(reply, stamp, link)

    def _expire(self, now: float) -> None:
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
                    self.parked_targets.append(probe.target)
                    self.parked_tries.append(min(probe.tries, 255))

    def _finish(self, probe: Probe) -> None:
        probe.done = True
        if self.inflight.get(probe.target) is probe:
            del self.inflight[probe.target]
        if not probe.counted:
            probe.counted = True
            self.done += 1

    def _revive(self) -> bool:
        """Silent targets that have fewer tries than the policy now allows go again; False when none."""
        allowed = self.policy.allowed_tries()
        if not any(tries < allowed for tries in self.parked_tries):
            return False
        targets, tries_left = self.parked_targets, self.parked_tries
        self.parked_targets, self.parked_tries = array.array("I"), bytearray()
        revived = False
        for target, tries in zip(targets, tries_left, strict=True):
            if target in self.hosts:
                continue
            if tries >= allowed:
                self.parked_targets.append(target)
                self.parked_tries.append(tries)
                continue
            probe = self._new_probe(target, revived=True)
            if probe is not None:
                probe.tries = tries
                probe.counted = True
                self.retry.append(probe)
                revived = True
        return revived

    def _new_probe(self, target: int, *, revived: bool = False) -> Probe | None:
        decision = self.table.decide(target)
        if isinstance(decision, str):
            if not revived:
                self._skip(decision)
            return None
        if decision.method == "arp" and "arp" not in self.settings.methods:
            if not revived:
                self._skip("arp-disabled")
            return None
        path = self.path_for(decision)
        if path is None:
            if not revived:
                self._skip("gateway-unresolved" if decision.method == "ip" and decision.gateway else routes.UNREACHABLE)
            return None
        if path.stage == ARP_STAGE:
            return Probe(target, path, decision.source, 1, None)
        pending = self._ip_mask()
        if not pending:
            if not revived:
                self._skip("no-method")
            return None
        return Probe(target, path, decision.source, pending, path.gateway_mac)

    def _ip_mask(self) -> int:
        mask = 1 if "icmp" in self.settings.methods else 0
        if "tcp" in self.settings.methods:
            mask |= ((1 << len(self.settings.ports)) - 1) << 1
        return mask

    def _skip(self, reason: str) -> None:
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        self.done += 1

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
            probe = self._new_probe(target)
            if probe is not None:
                return probe
        return None

    def _packets(self, probe: Probe) -> list[int]:
        """The bits of the probe's packets to send on this try."""
        return [bit for bit in range(probe.pending.bit_length()) if probe.pending >> bit & 1]

    def _build(self, probe: Probe, bit: int) -> bytes:
        path = probe.path
        link = path.link
        if path.stage == ARP_STAGE:
            assert link.iface.mac is not None
            return frames.arp_request(link.iface.mac, probe.source, probe.target)
        if bit == 0:
            packet = frames.icmp_echo(probe.source, probe.target, self.ident, self.icmp_seq(probe.target))
        else:
            port = self.settings.ports[bit - 1]
            packet = frames.tcp_syn(probe.source, probe.target, self.sport, port, self.cookie(probe.target, port))
        if link.ethernet:
            return frames.frame(frames.DLT_EN10MB, packet, src_mac=link.iface.mac, dst_mac=probe.dst_mac)
        return packet

    def _send(self) -> None:
        budget = SEND_BATCH
        while budget > 0:
            now = self.clock()
            if not self.pacer.ready(now):
                return
            if self._blocked is not None:
                data, _ = self._blocked
                probe = self._sending[0] if self._sending else None
                if probe is None:
                    self._blocked = None
                    continue
                try:
                    probe.path.link.send(data, probe.target)
                except SendBlocked:
                    self.stats.blocked += 1
                    return
                self._blocked = None
                self._sent(probe, now)
                budget -= 1
                continue
            if self._sending is None:
                probe = self._next_probe()
                if probe is None:
                    return
                if probe.done or (probe.target in self.inflight and self.inflight[probe.target] is not probe):
                    continue
                self.inflight[probe.target] = probe
                probe.sent_wall = 0.0
                self._sending = (probe, self._packets(probe))
            probe, bits = self._sending
            if not bits or probe.done:
                self._sending = None
                continue
            bit = bits.pop(0)
            if not probe.pending >> bit & 1:
                if not bits:
                    self._sending = None
                    self._stamp(probe)
                continue  # answered while we were sending the rest of this try
            data = self._build(probe, bit)
            if not probe.sent_wall:  # the first packet of this try
                probe.sent_wall = time.time()
            try:
                probe.path.link.send(data, probe.target)
            except SendBlocked:
                self.stats.blocked += 1
                self._blocked = (data, bit)
                return
            self._sent(probe, now)
            budget -= 1

    def _sent(self, probe: Probe, now: float) -> None:
        self.pacer.consume(now)
        self.stats.sent += 1
        assert self._sending is not None
        _, bits = self._sending
        if not bits:
            self._sending = None
            self._stamp(probe)

    def _stamp(self, probe: Probe) -> None:
        """The try is out: its wait starts now."""
        probe.tries += 1
        probe.sent_mono = self.clock()
        probe.path.waiting.append(probe)

    # --- replies -------------------------------------------------------------------------------

    def _ignore(self, reason: str) -> None:
        self.stats.ignored[reason] = self.stats.ignored.get(reason, 0) + 1

    def _handle(self, reply: frames.Reply, stamp: float, link: LinkIO) -> None:
        target = reply.src
        if target not in self.targets or reply.dst not in self.sources:
            self._ignore("not-a-target")
            return
        kind = reply.kind
        bit = -1
        evidence: str
        asked: routes.Decision | None = None  # for an ARP reply: how the scan reaches its sender
        if kind == "arp":
            asked = self._arp_decision(target, link)
            if asked is None:
                self._ignore("arp-unasked")
                return
            if reply.mac is None or reply.mac[0] & 0x01 or not any(reply.mac):
                self._ignore("arp-mac")  # a broadcast, multicast or zero MAC is nobody's: never probe it
                return
            evidence = "arp"
        elif kind == "echo":
            if reply.ident != self.ident or reply.seq != self.icmp_seq(target):
                self._ignore("echo-cookie")
                return
            evidence, bit = "icmp", 0
        elif kind == "tcp":
            port = reply.port
            if reply.ident != self.sport or port not in self.settings.ports:
                self._ignore("tcp-port")
                return
            if reply.seq != (self.cookie(target, port) + 1) & 0xFFFFFFFF:
                self._ignore("tcp-cookie")
                return
            evidence, bit = f"tcp/{port}", 1 + self.settings.ports.index(port)
        elif kind == "unreachable":
            # only the target itself saying "port/protocol unreachable" shows it is up
            if reply.inner_dst != target or (reply.ident == 6 and reply.port not in self.settings.ports):
                self._ignore("unreachable-other")
                return
            evidence = "icmp-unreachable"
            if reply.ident == 1:
                bit = 0
            elif reply.ident == 6:
                bit = 1 + self.settings.ports.index(reply.port)
        else:
            self._ignore("kind")
            return
        self.stats.replies += 1
        probe = self.inflight.get(target)
        if probe is not None and (probe.path.stage == ARP_STAGE) != (kind == "arp"):
            probe = None  # e.g. a late ARP reply while the follow-up probes run
        host = self.hosts.get(target)
        new = host is None
        if host is None:
            iface = link.iface.name
            via = probe.path.gateway if probe is not None else None
            host = Host(target, iface, via)
            self.hosts[target] = host
            if probe is not None:
                self.policy.record(max(0, probe.tries - 1))
        host.evidence.add(evidence)
        if kind == "arp":
            host.mac = reply.mac
        elif kind == "tcp":
            # a reset wins over a SYN in the same segment: only a clean SYN-ACK means the port is open
            (host.closed if reply.flags & frames.TCP_RST else host.open).add(reply.port)
        if probe is not None and probe.sent_wall:
            rtt = stamp - probe.sent_wall
            if host.rtt is None and rtt >= 0:
                host.rtt = rtt
            first_try = probe.tries == 0 or (probe.tries == 1 and not (self._sending and self._sending[0] is probe))
            if first_try and rtt >= 0:
                probe.path.rtt.sample(rtt)  # Karn: never a sample from a retransmitted try
        if probe is not None:
            if new and not probe.counted:
                probe.counted = True
                self.done += 1
            if kind == "arp":
                probe.pending = 0
            elif bit >= 0:
                probe.pending &= ~(1 << bit)
            if probe.pending == 0:
                probe.done = True
                del self.inflight[target]
        # no probe in flight: a late answer from a parked target, counted when it was parked
        if new:
            if asked is not None and self._ip_mask():
                self._follow_up(host, asked, link)
            if self.on_found is not None:
                self.on_found(target)

    def _arp_decision(self, target: int, link: LinkIO) -> routes.Decision | None:
        """How the scan reaches ``target`` if it sends ARP requests for it on ``link``, else None: an ARP
        reply for any other address (a routed one, say) answers nothing we asked, and is no evidence of a host."""
        if "arp" not in self.settings.methods:
            return None
        decision = self.table.decide(target)
        if isinstance(decision, str) or decision.method != "arp" or decision.interface.name != link.iface.name:
            return None
        return decision

    def _follow_up(self, host: Host, decision: routes.Decision, link: LinkIO) -> None:
        """ICMP and TCP probes to a host ARP found, to its MAC, for evidence and open ports."""
        if host.mac is None:
            return
        key = (decision.interface.name, IP_STAGE, None)
        path = self.paths.get(key)
        if path is None:
            path = Path(
                link, IP_STAGE, None, None, RttEstimator(self.settings.timeout, MIN_WAIT, self.settings.timeout)
            )
            self.paths[key] = path
        self.followups.append(Probe(host.address, path, decision.source, self._ip_mask(), host.mac, counted=True))

    # --- results -------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        elapsed = max(1e-9, (self.finished or self.clock()) - self.started)
        return {
            "packetsSent": self.stats.sent,
            "replies": self.stats.replies,
            "ignoredFrames": dict(self.stats.ignored),
            "elapsed": round(elapsed, 3),
            "sendRate": round(self.stats.sent / elapsed, 1),
            "tries": self.policy.allowed_tries(),
            "lossEstimate": round(self.policy.loss, 4),
            "paths": [
                {
                    "interface": path.link.iface.name,
                    "linkType": path.link.link_type,
                    "stage": path.stage,
                    "gateway": to_str(path.gateway) if path.gateway is not None else None,
                    "srtt": round(path.rtt.srtt * 1000, 3) if path.rtt.srtt is not None else None,
                    "wait": round(path.rtt.timeout * 1000, 3),
                }
                for path in self.paths.values()
                if path is not None
            ],
            "gatewayArp": self.stats.gateway_arp,
        }
