"""The send/capture engine: probes out at a paced rate, replies in through pypcap and a BPF filter.

One :class:`LinkIO` per interface holds a pcap handle (immediate mode, non-blocking, inbound only,
filtered to the scan's replies) and sends the on-link questions with ``pcap_sendpacket``: ARP
requests, IPv6 Neighbor Solicitations and the one echo to all nodes, and the follow-up probes of
the hosts they found, to their MACs. Every other ICMP echo and TCP SYN (routed, or over a link
without a link layer) goes through the kernel: :class:`KernelSender`'s raw sockets, bound to the
source address the kernel's route picks, so that policy routing, IPsec, WireGuard and the firewall
treat the probe as any packet of the host; the reply is captured on the interface that route names.
An interface that cannot be opened, or fails while the scan runs, ends only its own paths: the
others go on, and the summary's ``failedInterfaces`` says which and why (when none could be opened,
the scan fails).

The TCP SYN probes leave from one source port outside the kernel's ephemeral range
(``ip_local_port_range``), bound by a TCP socket for the scan's life, so no connection of the host
ever gets it; the kernel answers a SYN-ACK to it with a reset, as it does for any port without a
listener.

The :class:`Engine` loop, single-threaded, only moves bytes: it reads every capture and hands each
parsed reply to :func:`~.matcher.match` and its evidence to the :class:`~.scheduler.Scheduler`,
tells the scheduler the time so it expires the tries whose wait is over, builds and sends the
packets the scheduler has due, reports progress, checks for cancellation, and sleeps in ``select``
until the next of those is due. Memory is the scheduler's: the in-flight window (rate x wait), the
parked targets (5 bytes a target) and the hosts found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import random
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

import pcap

from ksocket.collectors.base import Context, OperationFailed
from ksocket.collectors.discovery import frames, routes
from ksocket.collectors.discovery.matcher import Asked, Cookies, Ignored, match
from ksocket.collectors.discovery.scheduler import (
    ARP_STAGE,
    ICMP_BIT,
    INTERFACE_FAILED,
    IP_STAGE,
    Host,
    Path,
    Probe,
    Scheduler,
    Settings,
)
from ksocket.collectors.discovery.targets import V6, TargetSet, family, to_str
from ksocket.protocol import ErrorCode

LINGER = 0.03  # after the last probe's wait, one more look for late replies
TICK = 0.1  # progress and cancellation checks
SEND_BATCH = 32  # packets sent before the captures are read again
EPHEMERAL_RANGE = FilePath("/proc/sys/net/ipv4/ip_local_port_range")
PORT_TRIES = 64
_RANDOM = random.SystemRandom()


class SendBlocked(Exception):
    """The link's queue is full for now (ENOBUFS/EAGAIN): try the same packet again shortly."""


class LinkFailed(OperationFailed):
    """The interface can no longer capture or send (it went away, say)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNREACHABLE, message, transient=True)


def _ephemeral_range(path: FilePath) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def reserve_source_port(
    ephemeral: FilePath = EPHEMERAL_RANGE, choose: Callable[[range], int] = _RANDOM.choice
) -> socket.socket:
    """A TCP socket bound to a port outside the ephemeral range (above it if there is room, else below),
    held for the scan's life so that the kernel never gives the port to a connection."""
    low, high = _ephemeral_range(ephemeral)
    ports = range(high + 1, 65536) if 65535 - high >= 256 else range(1024, max(1025, low))
    for _ in range(PORT_TRIES):
        reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            reservation.bind(("0.0.0.0", choose(ports)))  # noqa: S104 - every address's port, never listened on
        except OSError:
            reservation.close()
            continue
        return reservation
    raise OperationFailed(ErrorCode.INTERNAL, f"no free TCP port in {ports.start}-{ports.stop - 1} for the SYN probes")


class SendRefused(Exception):
    """The kernel would not send this packet (a firewall rule, a route gone): no reply will come."""


# the kernel refusing one packet: EPERM/EACCES from a firewall rule, no route (any more)
_REFUSED = frozenset({errno.EPERM, errno.EACCES, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


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
            text = _text(error)
            hint = " (needs root or CAP_NET_RAW)" if "ermission" in text or "not permitted" in text else ""
            raise OperationFailed(ErrorCode.INTERNAL, f"cannot capture on {iface.name}: {text}{hint}") from None
        self.link_type = int(self.capture.datalink())
        if self.link_type not in frames.KNOWN_LINK_TYPES:
            self.close()
            raise OperationFailed(ErrorCode.INTERNAL, f"{iface.name}: link type {self.link_type} is not supported")

    @property
    def ethernet(self) -> bool:
        return self.link_type == frames.DLT_EN10MB

    def fileno(self) -> int:
        return int(self.capture.fileno())

    def send(self, data: bytes) -> None:
        """Injects an Ethernet frame."""
        try:
            self.capture.sendpacket(data)
        except OSError as error:
            raise _send_error(error, self.iface.name) from None

    def read(self) -> list[tuple[float, bytes]]:
        try:
            packets: list[tuple[float, bytes]] = self.capture.readpkts()
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EINTR):
                return []
            raise LinkFailed(f"capturing on {self.iface.name}: {_text(error)}") from None
        return packets

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.capture.close()


class KernelSender:
    """Raw sockets (``IPPROTO_RAW``: our IP header, the kernel's route) bound to each source address."""

    def __init__(self) -> None:
        self.sockets: dict[int, socket.socket] = {}

    def _socket(self, source: int) -> socket.socket:
        sock = self.sockets.get(source)
        if sock is None:
            af = socket.AF_INET6 if family(source) == 6 else socket.AF_INET
            sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_RAW)
            try:
                sock.bind((to_str(source), 0))
            except OSError as error:
                sock.close()
                raise OperationFailed(
                    ErrorCode.INTERNAL, f"cannot send from {to_str(source)}: {_text(error)}"
                ) from None
            sock.setblocking(False)
            self.sockets[source] = sock
        return sock

    def send(self, packet: bytes, source: int, destination: int) -> None:
        """Hands ``packet`` (an IP packet from ``source``) to the kernel to route to ``destination``."""
        sock = self._socket(source)
        try:
            sock.sendto(packet, (to_str(destination), 0))
        except OSError as error:
            if error.errno in _REFUSED:
                raise SendRefused from None
            raise _send_error(error, f"the route to {to_str(destination)}") from None

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def _send_error(error: OSError, where: str) -> Exception:
    """:class:`SendBlocked` for a full queue, else :class:`LinkFailed`."""
    text = _text(error)
    if isinstance(error, BlockingIOError) or error.errno in (errno.ENOBUFS, errno.EAGAIN):
        return SendBlocked()
    if "No buffer space" in text or "temporarily" in text:
        return SendBlocked()
    return LinkFailed(f"sending on {where}: {text}")


def _text(error: BaseException) -> str:
    parts = [part.decode(errors="replace") if isinstance(part, bytes) else str(part) for part in error.args]
    return " ".join(parts) or type(error).__name__


@dataclass
class Stats:
    sent: int = 0
    replies: int = 0
    ignored: dict[str, int] = field(default_factory=dict)  # frames let in that answer no probe of ours, by why
    blocked: int = 0
    refused: int = 0  # probes the kernel would not send (a firewall rule, a route gone)


class Engine:
    """The loop that moves packets between the links and the :class:`~.scheduler.Scheduler` and
    :func:`~.matcher.match`."""

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
        self.scheduler = Scheduler(targets, table, settings, self._open_path)
        self.links: dict[str, LinkIO] = {}
        self.link_types: dict[str, int] = {}
        self.failed: dict[str, str] = {}  # interface -> why it could not be used
        self.kernel = KernelSender()
        self.greeted: set[tuple[str, int]] = set()  # (interface, source) of the echoes to all nodes sent
        self.stats = Stats()
        self.cookies = Cookies.random()
        self.sources: set[int] = set(table.local)
        self.asked = Asked(targets, self.sources, self.cookies, settings.ports)
        self._blocked: tuple[Probe, bytes] | None = None  # a packet the link had no room for, to send again
        self._port: socket.socket | None = None  # holds the SYN probes' source port
        self.started = 0.0
        self.finished = 0.0

    @property
    def hosts(self) -> dict[int, Host]:
        return self.scheduler.hosts

    @property
    def skipped(self) -> dict[str, int]:
        """Targets never probed, by why (no route, a reserved address, a method left out…)."""
        return self.scheduler.skipped

    # --- set-up --------------------------------------------------------------------------------

    def _bpf(self, iface: routes.Interface) -> str:
        """Replies to any of the host's addresses (a policy route's source may be another interface's)."""
        hosts = sorted(to_str(address) for address in self.sources)
        ip_part = " or ".join(f"dst host {host}" for host in hosts) or "dst host 0.0.0.0"
        ip_filter = f"((ip or ip6) and ({ip_part}) and (icmp or icmp6 or (tcp and dst port {self.cookies.sport})))"
        arp_part = " or ".join(f"arp[24:4] = 0x{address:08x}" for address, _, _ in iface.addresses_of(0))
        if iface.ethernet and arp_part and self.capture_device is None:
            return f"(arp and arp[6:2] = 2 and ({arp_part})) or {ip_filter}"
        return ip_filter

    def link(self, iface: routes.Interface) -> LinkIO:
        link = self.links.get(iface.name)
        if link is None:
            link = LinkIO(iface, self._bpf(iface), device=self.capture_device)
            self.links[iface.name] = link
            self.link_types[iface.name] = link.link_type
        return link

    def _open_path(self, decision: routes.Decision, stage: str) -> Path | str | None:
        """The scheduler's way out for ``decision``: a capture on the interface the kernel's route names
        (IP probes leave through the kernel); None for on-link questions on a link without a link layer,
        ``interface-failed`` when the interface cannot be used (the scan goes on with the others)."""
        name = decision.interface.name
        if name in self.failed:
            return INTERFACE_FAILED
        try:
            return self._path(decision, stage)
        except OperationFailed as error:
            self._fail(name, str(error))
            return INTERFACE_FAILED

    def _fail(self, name: str, reason: str) -> None:
        """``name`` is out of the scan: its capture closed, its paths ended."""
        self.failed[name] = reason
        link = self.links.pop(name, None)
        if link is not None:
            link.close()
        if self._blocked is not None and self._blocked[0].path.interface == name:
            self._blocked = None
        self.scheduler.fail_interface(name)

    def _path(self, decision: routes.Decision, stage: str) -> Path | None:
        link = self.link(decision.interface)
        if stage == ARP_STAGE and not link.ethernet:
            return None
        return Path.opened(link.iface.name, stage, decision.gateway, self.settings.timeout)

    # --- the loop ------------------------------------------------------------------------------

    def _reserve_port(self) -> None:
        """The SYN probes' source port, reserved (see the module's docstring)."""
        if "tcp" not in self.settings.methods:
            return
        self._port = reserve_source_port()
        self.cookies = dataclasses.replace(self.cookies, sport=self._port.getsockname()[1])
        self.asked = dataclasses.replace(self.asked, cookies=self.cookies)

    def run(self) -> None:
        self._reserve_port()
        self.started = self.clock()
        self.scheduler.start(self.started)
        next_tick = self.started
        try:
            while True:
                now = self.clock()
                self._drain()
                self.scheduler.expire(now)
                self._send()
                now = self.clock()
                if now >= next_tick:
                    self.context.check_cancelled()
                    self.context.progress(min(self.scheduler.done, self.targets.size), self.targets.size)
                    next_tick = now + TICK
                if not self._has_work() and not self.scheduler.inflight:
                    if not self.scheduler.revive():
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
            self.kernel.close()
            if self._port is not None:
                self._port.close()
        if self.failed and not self.link_types:  # no interface could be opened: nothing was scanned
            raise OperationFailed(ErrorCode.INTERNAL, "; ".join(self.failed.values()))
        self.context.progress(self.targets.size, self.targets.size)

    def _has_work(self) -> bool:
        return self._blocked is not None or self.scheduler.has_work()

    def _wait(self, next_tick: float) -> None:
        now = self.clock()
        deadline = min(next_tick, self.scheduler.next_due())
        if self._blocked is not None:
            deadline = min(deadline, now + 0.001)
        delay = max(0.0, min(deadline - now, TICK))
        fds = [link.fileno() for link in self.links.values()]
        if delay > 0:
            if fds:
                select.select(fds, [], [], delay)
            else:
                time.sleep(delay)

    def _drain(self) -> None:
        for link in list(self.links.values()):
            try:
                packets = link.read()
            except LinkFailed as error:
                self._fail(link.iface.name, str(error))
                continue
            for stamp, data in packets:
                reply = frames.parse(link.link_type, data)
                if reply is None:
                    self._ignore("unparsed")
                    continue
                self._handle(reply, stamp, link)

    def _send(self) -> None:
        """Sends what the scheduler has due, up to a batch, until the pacer says wait or the link is full."""
        for _ in range(SEND_BATCH):
            now = self.clock()
            if self._blocked is not None:
                if not self.scheduler.pacer.ready(now):
                    return
                probe, data = self._blocked
            else:
                due = self.scheduler.next_packet(now)
                if due is None:
                    return
                probe, data = due[0], self._build(*due)
            wall = time.time()
            try:
                self._out(probe, data)
            except SendBlocked:
                self.stats.blocked += 1
                self._blocked = (probe, data)
                return
            except SendRefused:
                self.stats.refused += 1
            except LinkFailed as error:
                self._fail(probe.path.interface, str(error))
                continue
            else:
                self.stats.sent += 1
            self._blocked = None
            self.scheduler.sent(probe, now, wall)

    def _out(self, probe: Probe, data: bytes) -> None:
        """On-link questions and probes to a known MAC go out on the link; the others through the kernel."""
        link = self.links[probe.path.interface]
        if probe.path.stage == IP_STAGE and probe.dst_mac is None:
            self.kernel.send(data, probe.source, probe.target)
            return
        link.send(data)
        if probe.path.stage == ARP_STAGE and probe.target >= V6:
            self._greet(link, probe.source)

    def _greet(self, link: LinkIO, source: int) -> None:
        """One echo to all nodes of the link from ``source``, with the first Neighbor Solicitation."""
        if (link.iface.name, source) in self.greeted:
            return
        assert link.iface.mac is not None
        self.greeted.add((link.iface.name, source))
        echo = frames.all_nodes_echo(
            link.iface.mac, source, self.cookies.echo_id, self.cookies.echo_seq(frames.ALL_NODES)
        )
        with contextlib.suppress(SendBlocked):
            link.send(echo)
            self.stats.sent += 1

    def _build(self, probe: Probe, bit: int) -> bytes:
        path = probe.path
        link = self.links[path.interface]
        if path.stage == ARP_STAGE:
            assert link.iface.mac is not None
            if probe.target >= V6:
                return frames.neighbor_solicitation(link.iface.mac, probe.source, probe.target)
            return frames.arp_request(link.iface.mac, probe.source, probe.target)
        if bit == ICMP_BIT:
            seq = self.cookies.echo_seq(probe.target)
            packet = frames.icmp_echo(probe.source, probe.target, self.cookies.echo_id, seq)
        else:
            port = self.settings.ports[bit - 1]
            seq = self.cookies.tcp_seq(probe.target, port)
            packet = frames.tcp_syn(probe.source, probe.target, self.cookies.sport, port, seq)
        if probe.dst_mac is not None:
            return frames.frame(frames.DLT_EN10MB, packet, src_mac=link.iface.mac, dst_mac=probe.dst_mac)
        return packet

    # --- replies -------------------------------------------------------------------------------

    def _ignore(self, reason: str) -> None:
        self.stats.ignored[reason] = self.stats.ignored.get(reason, 0) + 1

    def _handle(self, reply: frames.Reply, stamp: float, link: LinkIO) -> None:
        outcome = match(reply, self.asked, lambda target: self._arp_route(target, link))
        if isinstance(outcome, Ignored):
            self._ignore(outcome.reason)
            return
        self.stats.replies += 1
        if self.scheduler.answer(outcome, link.iface.name, stamp) and self.on_found is not None:
            self.on_found(outcome.target)

    def _arp_route(self, target: int, link: LinkIO) -> routes.Decision | None:
        """How the scan reaches ``target`` if it sends ARP requests for it on ``link``, else None."""
        if "arp" not in self.settings.methods:
            return None
        decision = self.table.decide(target)
        if isinstance(decision, str) or decision.method != "arp" or decision.interface.name != link.iface.name:
            return None
        return decision

    # --- results -------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        elapsed = max(1e-9, (self.finished or self.clock()) - self.started)
        policy = self.scheduler.policy
        return {
            "packetsSent": self.stats.sent,
            "replies": self.stats.replies,
            "ignoredFrames": dict(self.stats.ignored),
            "elapsed": round(elapsed, 3),
            "sendRate": round(self.stats.sent / elapsed, 1),
            "tries": policy.allowed_tries(),
            "lossEstimate": round(policy.loss, 4),
            "paths": [
                {
                    "interface": path.interface,
                    "linkType": self.link_types[path.interface],
                    "stage": path.stage,
                    "gateway": to_str(path.gateway) if path.gateway is not None else None,
                    "srtt": round(path.rtt.srtt * 1000, 3) if path.rtt.srtt is not None else None,
                    "wait": round(path.rtt.timeout * 1000, 3),
                    "window": round(path.window.cwnd, 1),
                    "windowDecreases": path.window.decreases,
                }
                for path in self.scheduler.open_paths()
            ],
            "failedInterfaces": dict(self.failed),
            "refused": self.stats.refused,
        }
