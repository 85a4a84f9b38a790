"""The network lab: network namespaces in 198.18.0.0/15 (``python -m tests.lab up|down``, ``inv lab.up``).

Every host is a namespace of its own with one veth interface (its own MAC) plugged into a Linux
bridge that lives in the bridge namespace; the scanner has a namespace of its own. Nothing is
configured in the root namespace, and nothing there can reach the lab.

Topology (all optional but the scanner)::

    scanner (PREFIX-s) eth0 198.18.0.1 ─scan0─ bridge lan0 (PREFIX-b) ─h*─ hosts of the flat LAN
                       │                                   └─rl0─ router (PREFIX-r) 198.18.<lan>.254
                       │                                           └─rr0─ bridge rt0 ─h*─ routed 198.18.16.0/24
                       └── tun0 198.18.32.1 ══ point-to-point, no link layer, relayed by the lab daemon ══
                           tun0 198.18.32.2 tunnel router (PREFIX-t) ─tr0─ bridge tn0 ─h*─ 198.18.33.0/24

A Linux bridge takes 1023 ports at most, so a LAN of more hosts is several bridges chained by veth
pairs (one broadcast domain still). Frame loss is an nftables ``numgen random`` drop rule in the
bridge namespace on frames leaving or entering a host port, so each direction loses ``percent``.

The switch: a real switch floods a broadcast in hardware, but a Linux bridge floods it in software,
and charges the sender's CPU for every copy: with a thousand ports, one ARP request took some 7 ms
here, so every tool scanning the LAN measured the bridge (about 150 requests/s) rather than itself.
An nftables netdev rule on the scanner's port therefore hands each ARP request to the port of the
host that owns the address (``fwd``, one map lookup, 0.13 ms); a request for an address nobody owns
is flooded as before. Every host still answers for itself, and every tool gets the same switch.

The slow path (:meth:`Lab.slow_path`), for the scanners' congestion control: real paths carry less
than a scanner sends (a router or firewall rate-limiting ARP and ICMP, a slow WAN link, a switch's
CPU path). An nftables ``limit rate over N/second drop`` on the scanner's port lets N frames a second
from the scanner into the lab and drops the rest silently, deterministically on any machine. The
switch can also be left off (``switch=False``): then the bridge floods every ARP request in software
and the sender's CPU pays for it (about 150 requests/s for a thousand ports here, but that depends
on the machine and its load).

One helper process (the lab daemon, ``python -m tests.lab daemon``) relays the tunnel and holds the
TCP listeners of every host that has open ports; sshd and snmpd are started on demand
(:meth:`Lab.start_sshd`, :meth:`Lab.start_snmpd`). Teardown kills every process whose network
namespace is one of the lab's, deletes the namespaces, and removes the files; ``down`` of the CLI
does so for every namespace named ``kslab-*``, left-overs of a killed run included.

Hosts forward IPv4 (``fast_arp``): a host that does not route allocates and frees a route entry
for every ARP request it sees for another address, which made one broadcast flooded to a thousand
ports cost some 40% more CPU on this 2-core machine (about 1.8 ms instead of 1.3 ms, all of it
charged to the sender). Nothing a scanner sends or sees changes: no probe is routed through a host.

IPv6 (``ipv6()``, optional): ULA addresses on the flat LAN (``fd00:18::N`` for ``198.18.0.N``, N in
hex) and the routed subnet (``fd00:18:16::N`` for ``198.18.16.N``), routed the same way; the tunnel
and the bridges keep IPv6 off. Policy routing (``policy_route(address)``, optional): the scanner gets
a second leg ``eth1`` (198.18.16.250/32) on the routed subnet's bridge, and a rule sends ``address``
to table 100, whose route goes out ``eth1`` via the router's 198.18.16.1, where the main table says
``eth0``.

Kernel globals: the per-CPU backlog (``net.core.netdev_max_backlog``, 1000 by default) overflows when
one broadcast is flooded to a thousand veth ports, which would be loss the lab did not ask for; it is
raised while a lab is up and restored when the last lab goes down.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NETNS_DIR = Path("/run/netns")
STATE_DIR = Path("/run/kslab")
ETC_NETNS = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
BRIDGE_PORTS = 1000  # a Linux bridge takes at most 1023 ports
BACKLOG = 20000

LAN_BASE = "198.18.0.0"
ROUTED_BASE = "198.18.16.0"
TUNNEL_LOCAL = "198.18.32.1"
TUNNEL_PEER = "198.18.32.2"
TUNNEL_BASE = "198.18.33.0"
SCANNER_MAC = "02:6b:73:00:00:01"
SCANNER_LEG = "198.18.16.250"  # the scanner's second leg, on the routed subnet (policy routing)
SCANNER_LEG_MAC = "02:6b:73:00:00:02"
POLICY_TABLE = 100
LAN6 = "fd00:18::"
ROUTED6 = "fd00:18:16::"
# host MACs cycle through a few registered OUIs (and one locally administered, vendor-less one)
OUIS = ("00:16:3e", "00:50:56", "08:00:27", "00:15:5d", "52:54:00")

_libc = ctypes.CDLL(None, use_errno=True)


# --- namespaces --------------------------------------------------------------------------------


def _ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def _addr(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def setns(name: str) -> None:
    """Moves this thread into the named namespace."""
    path = str(NETNS_DIR / name)
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {name}: {os.strerror(error)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """This thread in namespace ``name`` for the block, then back where it was."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(name)
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(home)


def write_sysctl(name: str, value: str) -> None:
    """Writes a sysctl of the calling thread's network namespace (``net.ipv4.ip_forward`` …)."""
    Path("/proc/sys", *name.split(".")).write_text(value)


def ip_batch(lines: Sequence[str], netns: str | None = None, *, force: bool = False) -> None:
    """Runs ``ip -batch``; ``force`` goes on past a failed line (a teardown must not stop half-way)."""
    if not lines:
        return
    command = ["ip", *(["-n", netns] if netns else []), *(["-force"] if force else []), "-batch", "-"]
    done = subprocess.run(command, input="\n".join(lines) + "\n", text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip -batch ({netns or 'root'}) failed: {done.stderr.strip()}")


def lab_namespaces(prefix: str = "kslab", *, own: bool = True) -> list[str]:
    """The namespaces of the lab ``prefix`` (``prefix-s``, ``prefix-h12`` …); with ``own`` false, also
    those of every lab whose prefix extends it (``kslab`` then names the test runs' ``kslab-PID-N-…``)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    node = re.compile(rf"{re.escape(prefix)}-[a-z]+\d*")
    return sorted(name for name in names if node.fullmatch(name) or (not own and name.startswith(prefix + "-")))


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def processes_in(namespaces: Sequence[str]) -> list[int]:
    """PIDs of every process whose network namespace is one of ``namespaces``."""
    inodes = {inode for name in namespaces if (inode := _netns_inode(str(NETNS_DIR / name))) is not None}
    if not inodes:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        if _netns_inode(f"/proc/{entry}/ns/net") in inodes:
            pids.append(int(entry))
    return pids


def kill_processes(pids: Sequence[int], grace: float = 2.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        end = time.monotonic() + grace
        while time.monotonic() < end and any(_alive(pid) for pid in alive):
            time.sleep(0.02)
        pids = [pid for pid in alive if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        # a zombie child of ours still "exists": reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def remove_namespaces(prefix: str, *, own: bool = True) -> list[str]:
    """Kills every process in the lab's namespaces (see :func:`lab_namespaces`) and deletes them with
    their files; returns their names."""
    names = lab_namespaces(prefix, own=own)
    kill_processes(processes_in(names))
    ip_batch([f"netns delete {name}" for name in names], force=True)
    for name in names:
        shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
    work = [f"{prefix}-work-*"] if own else [f"{prefix}-work-*", f"{prefix}-*-work-*"]
    for pattern in work:
        for folder in Path(tempfile.gettempdir()).glob(pattern):
            shutil.rmtree(folder, ignore_errors=True)
    for state in [STATE_DIR / f"{prefix}.json"] if own else STATE_DIR.glob(f"{prefix}*.json"):
        state.unlink(missing_ok=True)
    _restore_backlog()
    for folder in (ETC_NETNS, STATE_DIR):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    return names


def remove_stale() -> None:
    """Removes labs of test runs whose process is gone (``kslab-PID-N-*`` with PID dead)."""
    owners: set[str] = set()
    for name in lab_namespaces("kslab", own=False):
        match = re.match(r"^(kslab-(\d+)-\d+)-", name)
        if match and not _alive(int(match.group(2))):
            owners.add(match.group(1))
    for prefix in owners:
        remove_namespaces(prefix)


def _raise_backlog() -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    saved = STATE_DIR / "netdev_max_backlog"
    current = int(Path("/proc/sys/net/core/netdev_max_backlog").read_text())
    if not saved.exists():
        saved.write_text(str(current))
    if current < BACKLOG:
        write_sysctl("net.core.netdev_max_backlog", str(BACKLOG))


def _restore_backlog() -> None:
    saved = STATE_DIR / "netdev_max_backlog"
    if not saved.exists() or lab_namespaces("kslab", own=False):
        return
    write_sysctl("net.core.netdev_max_backlog", saved.read_text().strip())
    saved.unlink(missing_ok=True)


# --- the topology ------------------------------------------------------------------------------


@dataclass
class LabHost:
    """One host of the lab: its namespace, address, MAC and what it runs."""

    netns: str
    address: str
    mac: str
    segment: str  # "lan", "routed" or "tunnel"
    icmp: bool = True  # False: an nftables rule drops ICMP (and ICMPv6) echo requests
    ports: tuple[int, ...] = ()  # TCP ports with a listener


@dataclass
class Segment:
    name: str  # "lan", "routed", "tunnel"
    network: int
    prefixlen: int
    hosts: int
    gateway: str | None = None  # the router's address on the segment (routed, tunnel)

    @property
    def cidr(self) -> str:
        return f"{_addr(self.network)}/{self.prefixlen}"

    @property
    def broadcast(self) -> int:
        return self.network | ((1 << (32 - self.prefixlen)) - 1)


@dataclass
class Lab:
    """A lab topology: build it with the methods below, then :meth:`up`; :meth:`down` removes all of it.

    ``Lab().flat(30).routed(10).tunnel(5).icmp_blocked(3, segment="routed").loss(10).up()``
    """

    prefix: str = "kslab"
    seed: int = 1
    segments: dict[str, Segment] = field(default_factory=dict)
    hosts: list[LabHost] = field(default_factory=list)
    loss_percent: float = 0.0
    blocked: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)
    listeners: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # address -> name in the scanner's /etc/hosts
    is_up: bool = False
    workdir: Path | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    setup_seconds: float = 0.0
    fast_arp: bool = True  # hosts forward IPv4: see the module's docstring
    switch: bool = True  # ARP requests go to their owner's port only: see the module's docstring
    path_limit: int = 0  # frames a second from the scanner into the lab, 0: no limit
    with_ipv6: bool = False  # ULA addresses on the LAN and the routed subnet
    policy: list[str] = field(default_factory=list)  # addresses the scanner routes by table 100 (eth1)

    # names
    @property
    def scanner_ns(self) -> str:
        return f"{self.prefix}-s"

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-b"

    @property
    def router_ns(self) -> str:
        return f"{self.prefix}-r"

    @property
    def tunnel_ns(self) -> str:
        return f"{self.prefix}-t"

    @property
    def scanner_address(self) -> str:
        return "198.18.0.1"

    @property
    def scanner_mac(self) -> str:
        return SCANNER_MAC

    # builders ----------------------------------------------------------------------------------

    def flat(self, n_hosts: int, prefixlen: int | None = None) -> Lab:
        """A flat LAN of ``n_hosts`` hosts with the scanner on it (198.18.0.0/prefixlen, scanner .1)."""
        if prefixlen is None:
            prefixlen = 24
            while (1 << (32 - prefixlen)) - 4 < n_hosts:
                prefixlen -= 1
        if not 16 <= prefixlen <= 29 or (1 << (32 - prefixlen)) - 4 < n_hosts:
            raise ValueError(f"{n_hosts} hosts do not fit a /{prefixlen} LAN in 198.18.0.0/16")
        self.segments["lan"] = Segment("lan", _ip(LAN_BASE), prefixlen, n_hosts)
        return self

    def routed(self, n_hosts: int, prefixlen: int = 24) -> Lab:
        """A subnet (198.18.16.0/prefixlen) behind a router on the LAN; the scanner routes it via the router."""
        if not 20 <= prefixlen <= 29 or (1 << (32 - prefixlen)) - 3 < n_hosts:
            raise ValueError(f"{n_hosts} hosts do not fit a /{prefixlen} routed subnet")
        if "lan" not in self.segments:
            self.flat(0)
        self.segments["routed"] = Segment("routed", _ip(ROUTED_BASE), prefixlen, n_hosts, gateway="198.18.16.1")
        return self

    def tunnel(self, n_hosts: int) -> Lab:
        """198.18.33.0/24 reached over a tun point-to-point link (no link layer) 198.18.32.1 ⇄ .2."""
        if n_hosts > 250:
            raise ValueError("at most 250 tunnel hosts")
        self.segments["tunnel"] = Segment("tunnel", _ip(TUNNEL_BASE), 24, n_hosts, gateway="198.18.33.1")
        return self

    def icmp_blocked(self, n_hosts: int, ports: Sequence[int] = (22, 443), segment: str = "routed") -> Lab:
        """``n_hosts`` hosts of ``segment`` drop ICMP echo requests but listen on TCP ``ports``."""
        self.blocked.append((segment, n_hosts, tuple(ports)))
        return self

    def listen(self, n_hosts: int, ports: Sequence[int] = (22, 80), segment: str = "lan") -> Lab:
        """``n_hosts`` hosts of ``segment`` (after any icmp-blocked ones) listen on TCP ``ports``."""
        self.listeners.append((segment, n_hosts, tuple(ports)))
        return self

    def ipv6(self) -> Lab:
        """IPv6 ULA addresses too: ``fd00:18::N`` on the LAN, ``fd00:18:16::N`` on the routed subnet."""
        self.with_ipv6 = True
        return self

    def policy_route(self, *addresses: str) -> Lab:
        """A rule sends ``addresses`` (routed ones) to table 100: out the scanner's ``eth1`` on the routed
        subnet's bridge via its router 198.18.16.1, not the main table's ``eth0`` via the LAN's router."""
        self.policy.extend(addresses)
        return self

    def address6(self, address: str) -> str:
        """The IPv6 address of the lab's IPv4 ``address`` (LAN or routed subnet) in an IPv6 lab."""
        value = _ip(address)
        if "routed" in self.segments and _ip(ROUTED_BASE) <= value <= _ip("198.18.31.255"):
            return f"{ROUTED6}{value - _ip(ROUTED_BASE):x}"
        return f"{LAN6}{value - _ip(LAN_BASE):x}"

    def loss(self, percent: float) -> Lab:
        """Drops ``percent`` % of the frames in each direction at every host's bridge port."""
        self.loss_percent = percent
        if self.is_up:
            self._apply_switch()
        return self

    def slow_path(self, per_second: int) -> Lab:
        """The scanner's port carries at most ``per_second`` frames a second; the rest are dropped."""
        self.path_limit = per_second
        if self.is_up:
            self._apply_switch()
        return self

    # ground truth ------------------------------------------------------------------------------

    def addresses(self, segment: str | None = None) -> list[str]:
        return [host.address for host in self.hosts if segment is None or host.segment == segment]

    def truth(self, segment: str | None = None) -> dict[str, str]:
        """The live hosts: address -> MAC."""
        return {host.address: host.mac for host in self.hosts if segment is None or host.segment == segment}

    def routers(self, segment: str | None = None) -> dict[str, str]:
        """The lab's routers' addresses on each segment (they answer probes too): address -> segment."""
        found: dict[str, str] = {}
        lan = self.segments.get("lan")
        if lan and "routed" in self.segments:
            found[_addr(lan.broadcast - 1)] = "lan"
        for name in ("routed", "tunnel"):
            if name in self.segments and self.segments[name].gateway:
                found[str(self.segments[name].gateway)] = name
        if "tunnel" in self.segments:
            found[TUNNEL_PEER] = "p2p"
        return {address: name for address, name in found.items() if segment is None or name == segment}

    def expected(self, segment: str | None = None) -> set[str]:
        """Every address that should answer on ``segment`` (all segments by default): hosts and routers."""
        return set(self.truth(segment)) | set(self.routers(segment))

    def host(self, address: str) -> LabHost:
        for host in self.hosts:
            if host.address == address:
                return host
        raise KeyError(address)

    def cidr(self, segment: str) -> str:
        return self.segments[segment].cidr

    def _plan(self) -> None:
        if self.segments["lan"].prefixlen < 20 and {"routed", "tunnel"} & set(self.segments):
            raise ValueError("a LAN wider than /20 overlaps the routed and tunnel subnets (198.18.16.0 and up)")
        rng = random.Random(self.seed)
        self.hosts = []
        index = 0
        for name in ("lan", "routed", "tunnel"):
            segment = self.segments.get(name)
            if segment is None:
                continue
            reserved = {segment.network, segment.broadcast}
            if name == "lan":
                reserved |= {_ip(self.scanner_address), segment.broadcast - 1}  # scanner, router
            else:
                reserved.add(_ip(segment.gateway or "0.0.0.0"))
            if name == "routed" and self.policy:
                reserved.add(_ip(SCANNER_LEG))
            free = [a for a in range(segment.network, segment.broadcast + 1) if a not in reserved]
            for address in sorted(rng.sample(free, segment.hosts)):
                oui = OUIS[index % len(OUIS)]
                serial = index + 1
                mac = f"{oui}:{(serial >> 16) & 255:02x}:{(serial >> 8) & 255:02x}:{serial & 255:02x}"
                self.hosts.append(LabHost(f"{self.prefix}-h{index}", _addr(address), mac, name))
                index += 1
        for kinds, icmp in ((self.blocked, False), (self.listeners, True)):
            for segment_name, count, ports in kinds:
                candidates = [h for h in self.hosts if h.segment == segment_name and not h.ports and h.icmp]
                if len(candidates) < count:
                    raise ValueError(f"segment {segment_name} has not {count} hosts left for listeners")
                for host in candidates[:count]:
                    host.ports = ports
                    host.icmp = icmp
        # every fifth LAN host has a name in the scanner's /etc/hosts (reverse DNS)
        self.names = {h.address: f"{h.netns.rsplit('-', 1)[1]}.lab.test" for h in self.hosts[::5]}

    # up / down ---------------------------------------------------------------------------------

    def up(self) -> Lab:
        """Builds every namespace, link, address, route, rule and process; tears down on failure."""
        if os.geteuid() != 0:
            raise PermissionError("the lab needs root (network namespaces)")
        if "lan" not in self.segments:
            self.flat(0)
        started = time.monotonic()
        remove_stale()
        if lab_namespaces(self.prefix):
            remove_namespaces(self.prefix)
        self._plan()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-work-"))
        try:
            self._raise_backlog()
            self._build()
            self.is_up = True
            self._save()
        except BaseException:
            self.down()
            raise
        self.setup_seconds = time.monotonic() - started
        return self

    def _raise_backlog(self) -> None:
        _raise_backlog()

    def _build(self) -> None:
        lan = self.segments["lan"]
        routed = self.segments.get("routed")
        tunnel = self.segments.get("tunnel")
        infra = [self.scanner_ns, self.bridge_ns]
        if routed:
            infra.append(self.router_ns)
        if tunnel:
            infra.append(self.tunnel_ns)
        ip_batch([f"netns add {name}" for name in infra + [h.netns for h in self.hosts]])
        # no IPv6 anywhere (no router solicitations, MLD or DAD on the bridge); set before links exist
        hosts = {h.netns for h in self.hosts}
        for name in infra + [h.netns for h in self.hosts]:
            with in_netns(name):
                if self._ipv6_in(name):
                    write_sysctl("net.ipv6.conf.default.accept_dad", "0")
                    write_sysctl("net.ipv6.conf.all.accept_dad", "0")
                else:
                    write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
                    write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
                if name in hosts and self.fast_arp:
                    write_sysctl("net.ipv4.ip_forward", "1")
        with in_netns(self.bridge_ns):
            for table in ("arptables", "iptables", "ip6tables"):
                with contextlib.suppress(OSError):
                    write_sysctl(f"net.bridge.bridge-nf-call-{table}", "0")
        for name in (self.router_ns, self.tunnel_ns):
            if name in infra:
                with in_netns(name):
                    write_sysctl("net.ipv4.ip_forward", "1")

        # links: every veth is created with both ends in their namespaces
        by_segment = {name: [h for h in self.hosts if h.segment == name] for name in ("lan", "routed", "tunnel")}
        lan_bridges = max(1, -(-(len(by_segment["lan"]) + 2) // BRIDGE_PORTS))
        links = [
            f"link add eth0 netns {self.scanner_ns} address {SCANNER_MAC} type veth"
            f" peer name scan0 netns {self.bridge_ns}"
        ]
        if self.policy:
            links.append(
                f"link add eth1 netns {self.scanner_ns} address {SCANNER_LEG_MAC} type veth"
                f" peer name scan1 netns {self.bridge_ns}"
            )
        bridge_cmds = []
        for number in range(lan_bridges):
            bridge_cmds += [f"link add lan{number} type bridge", f"link set lan{number} up"]
            if number:
                links.append(
                    f"link add lk{number}a netns {self.bridge_ns} type veth"
                    f" peer name lk{number}b netns {self.bridge_ns}"
                )
                bridge_cmds += [f"link set lk{number}a master lan0 up", f"link set lk{number}b master lan{number} up"]
        bridge_cmds.append("link set scan0 master lan0 up")
        for position, host in enumerate(by_segment["lan"]):
            port = host.netns.rsplit("-", 1)[1]
            links.append(
                f"link add eth0 netns {host.netns} address {host.mac} type veth peer name {port} netns {self.bridge_ns}"
            )
            bridge_cmds.append(f"link set {port} master lan{(position + 2) // BRIDGE_PORTS} up")
        if routed:
            bridge_cmds += ["link add rt0 type bridge", "link set rt0 up"]
            links += [
                f"link add lan netns {self.router_ns} type veth peer name rl0 netns {self.bridge_ns}",
                f"link add sub netns {self.router_ns} type veth peer name rr0 netns {self.bridge_ns}",
            ]
            bridge_cmds += ["link set rl0 master lan0 up", "link set rr0 master rt0 up"]
            if self.policy:
                bridge_cmds.append("link set scan1 master rt0 up")
        if tunnel:
            bridge_cmds += ["link add tn0 type bridge", "link set tn0 up"]
            links.append(f"link add sub netns {self.tunnel_ns} type veth peer name tr0 netns {self.bridge_ns}")
            bridge_cmds.append("link set tr0 master tn0 up")
        for segment_name, bridge in (("routed", "rt0"), ("tunnel", "tn0")):
            for host in by_segment[segment_name]:
                port = host.netns.rsplit("-", 1)[1]
                links.append(
                    f"link add eth0 netns {host.netns} address {host.mac} type veth"
                    f" peer name {port} netns {self.bridge_ns}"
                )
                bridge_cmds.append(f"link set {port} master {bridge} up")
        ip_batch(links)
        ip_batch(bridge_cmds, self.bridge_ns)

        # addresses and routes, one `ip -batch` per namespace, a few at a time
        configs: list[tuple[str, list[str]]] = []
        scanner = ["link set lo up", f"addr add {self.scanner_address}/{lan.prefixlen} dev eth0", "link set eth0 up"]
        lan_router = _addr(lan.broadcast - 1)
        if routed:
            scanner.append(f"route add {routed.cidr} via {lan_router} dev eth0")
            configs.append(
                (
                    self.router_ns,
                    [
                        "link set lo up",
                        f"addr add {lan_router}/{lan.prefixlen} dev lan",
                        f"addr add {routed.gateway}/{routed.prefixlen} dev sub",
                        "link set lan up",
                        "link set sub up",
                    ],
                )
            )
        if tunnel:
            scanner += [
                "tuntap add dev tun0 mode tun",
                f"addr add {TUNNEL_LOCAL} peer {TUNNEL_PEER} dev tun0",
                "link set tun0 up",
                f"route add {tunnel.cidr} dev tun0",
            ]
            configs.append(
                (
                    self.tunnel_ns,
                    [
                        "link set lo up",
                        "tuntap add dev tun0 mode tun",
                        f"addr add {TUNNEL_PEER} peer {TUNNEL_LOCAL} dev tun0",
                        "link set tun0 up",
                        f"addr add {tunnel.gateway}/{tunnel.prefixlen} dev sub",
                        "link set sub up",
                        f"route add {lan.cidr} dev tun0",
                    ],
                )
            )
        configs.append((self.scanner_ns, scanner + self._policy_lines()))
        for host in self.hosts:
            segment = self.segments[host.segment]
            lines = ["link set lo up", f"addr add {host.address}/{segment.prefixlen} dev eth0", "link set eth0 up"]
            if segment.gateway:
                lines.append(f"route add default via {segment.gateway}")
            configs.append((host.netns, lines))
        if self.with_ipv6:
            self._add_ipv6(configs)
        self._parallel_batches(configs)

        # ICMP dropped where asked
        for host in self.hosts:
            if not host.icmp:
                rules = (
                    "table inet kslab {\n  chain input {\n    type filter hook input priority 0; policy accept;\n"
                    "    icmp type echo-request drop\n    icmpv6 type echo-request drop\n  }\n}\n"
                )
                self._nft(host.netns, rules)
        self._apply_switch()

        # the scanner's resolver: names for some hosts, no name server it could reach
        etc = ETC_NETNS / self.scanner_ns
        etc.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{address} {name}" for address, name in self.names.items()]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

        self._start_daemon()

    def _ipv6_in(self, netns: str) -> bool:
        """IPv6 is on in ``netns``: an IPv6 lab's scanner, router and hosts of the LAN and routed subnet."""
        if not self.with_ipv6 or netns in (self.bridge_ns, self.tunnel_ns):
            return False
        return netns in (self.scanner_ns, self.router_ns) or self.host_by_netns(netns).segment != "tunnel"

    def host_by_netns(self, netns: str) -> LabHost:
        return next(host for host in self.hosts if host.netns == netns)

    def _add_ipv6(self, configs: list[tuple[str, list[str]]]) -> None:
        """The IPv6 addresses and routes of each namespace's batch (an IPv6 lab)."""
        lan = self.segments["lan"]
        lan_router = self.address6(_addr(lan.broadcast - 1))
        extra: dict[str, list[str]] = {self.scanner_ns: [f"addr add {self.address6(self.scanner_address)}/64 dev eth0"]}
        routed = self.segments.get("routed")
        router6 = ""
        if routed:
            router6 = self.address6(str(routed.gateway))
            extra[self.scanner_ns].append(f"route add {ROUTED6}/64 via {lan_router} dev eth0")
            extra[self.router_ns] = [f"addr add {lan_router}/64 dev lan", f"addr add {router6}/64 dev sub"]
            with in_netns(self.router_ns):
                write_sysctl("net.ipv6.conf.all.forwarding", "1")
        for host in self.hosts:
            if host.segment in ("lan", "routed"):
                lines = [f"addr add {self.address6(host.address)}/64 dev eth0"]
                if host.segment == "routed":
                    lines.append(f"route add default via {router6}")
                extra[host.netns] = lines
        for netns, lines in configs:
            lines.extend(extra.get(netns, []))

    def _policy_lines(self) -> list[str]:
        """The scanner's second leg and the rule and table 100 that send the policy addresses out of it."""
        if not self.policy:
            return []
        routed = self.segments["routed"]
        lines = [
            f"addr add {SCANNER_LEG}/32 dev eth1",
            "link set eth1 up",
            f"route add {routed.cidr} via {routed.gateway} dev eth1 onlink table {POLICY_TABLE}",
        ]
        return lines + [f"rule add to {address} table {POLICY_TABLE}" for address in self.policy]

    def _parallel_batches(self, configs: Sequence[tuple[str, list[str]]], width: int = 24) -> None:
        running: list[tuple[str, subprocess.Popen[str]]] = []

        def reap(item: tuple[str, subprocess.Popen[str]]) -> None:
            name, process = item
            _, err = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"ip -batch in {name} failed: {err.strip()}")

        for name, lines in configs:
            process = subprocess.Popen(
                ["ip", "-n", name, "-batch", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert process.stdin is not None
            process.stdin.write("\n".join(lines) + "\n")
            process.stdin.close()
            process.stdin = None
            running.append((name, process))
            if len(running) >= width:
                reap(running.pop(0))
        for item in running:
            reap(item)

    def _nft(self, netns: str, rules: str) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=rules, text=True, capture_output=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft in {netns}: {done.stderr.strip()}")

    def _apply_switch(self) -> None:
        """The bridge namespace's nftables: the ARP switch and the loss rules, written anew.

        The switch hands each ARP request from the scanner's port straight to the port of the LAN
        host (or router) that owns the address (netdev ``fwd``); a request for an address nobody
        owns is flooded by the bridge as before. Loss drops ``percent`` of the frames entering and
        of those leaving the hosts' ports: in the bridge's forward hook, and for the forwarded ARP
        requests, which bypass it, on the scanner's port. The slow path's limit comes first on the
        scanner's port: what it drops reaches neither the switch nor the bridge.
        """
        for family, table in (("bridge", "kslab"), ("netdev", "kslab_switch")):
            subprocess.run(
                ["ip", "netns", "exec", self.bridge_ns, "nft", "delete", "table", family, table],
                capture_output=True,
                check=False,
            )
        per_mille = round(self.loss_percent * 10)
        drop = f"numgen random mod 1000 < {per_mille} drop" if per_mille > 0 else ""
        owners = {host.address: host.netns.rsplit("-", 1)[1] for host in self.hosts if host.segment == "lan"}
        owners.update({address: "rl0" for address in self.routers("lan")})
        elements = ", ".join(f'{address} : "{port}"' for address, port in owners.items())
        limit = f"    limit rate over {self.path_limit}/second burst 5 packets drop\n" if self.path_limit else ""
        rules = (
            "table netdev kslab_switch {\n"
            f"  map port_of {{ type ipv4_addr : iface_index;{f' elements = {{ {elements} }}' if elements else ''} }}\n"
            '  chain scanner_port {\n    type filter hook ingress device "scan0" priority 0; policy accept;\n'
            + limit
            + (f"    arp operation request arp daddr ip @port_of {drop}\n" if drop and self.switch else "")
            + ("    arp operation request fwd to arp daddr ip map @port_of\n" if self.switch else "")
            + "  }\n}\n"
        )
        if drop:
            rules += (
                "table bridge kslab {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
                f'    iifname "h*" {drop}\n    oifname "h*" {drop}\n  }}\n}}\n'
            )
        self._nft(self.bridge_ns, rules)

    def _start_daemon(self) -> None:
        spec: dict[str, Any] = {"relay": None, "listen": []}
        if "tunnel" in self.segments:
            spec["relay"] = [[self.scanner_ns, "tun0"], [self.tunnel_ns, "tun0"]]
        spec["listen"] = [[h.netns, h.address, list(h.ports)] for h in self.hosts if h.ports]
        if not spec["relay"] and not spec["listen"]:
            return
        assert self.workdir is not None
        spec_file = self.workdir / "daemon.json"
        spec_file.write_text(json.dumps(spec))
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.bridge_ns, sys.executable, "-m", "tests.lab", "daemon", str(spec_file)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=(self.workdir / "daemon.log").open("wb"),
        )
        self.processes.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            raise RuntimeError(f"the lab daemon did not start: {(self.workdir / 'daemon.log').read_text()}")

    def _save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        document = {
            "prefix": self.prefix,
            "scanner": {"netns": self.scanner_ns, "address": self.scanner_address, "mac": SCANNER_MAC},
            "segments": {name: segment.cidr for name, segment in self.segments.items()},
            "loss": self.loss_percent,
            "hosts": [asdict(host) for host in self.hosts],
        }
        (STATE_DIR / f"{self.prefix}.json").write_text(json.dumps(document, indent=1))

    def down(self) -> None:
        """Stops every process of the lab and removes every namespace, file and rule it made."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(3)
            if process.stdout:
                process.stdout.close()
        self.processes.clear()
        remove_namespaces(self.prefix)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.is_up = False

    def __enter__(self) -> Lab:
        return self.up() if not self.is_up else self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # running things ----------------------------------------------------------------------------

    def exec_in(
        self, netns: str, command: Sequence[str], timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", netns, *command],
            cwd=kwargs.pop("cwd", ROOT),
            capture_output=kwargs.pop("capture_output", True),
            text=True,
            timeout=timeout,
            check=kwargs.pop("check", False),
            **kwargs,
        )

    def run_in_scanner(
        self, command: Sequence[str], timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """``command`` inside the scanner's namespace (cwd: the checkout)."""
        return self.exec_in(self.scanner_ns, command, timeout=timeout, **kwargs)

    def python_in_scanner(self, code: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run_in_scanner([sys.executable, "-c", code], timeout=timeout, **kwargs)

    def popen_in(self, netns: str, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["ip", "netns", "exec", netns, *command], cwd=ROOT, **kwargs)
        self.processes.append(process)
        return process

    @contextlib.contextmanager
    def capture(self, interface: str = "scan0", bpf: str = "") -> Iterator[Path]:
        """tcpdump on a bridge port (``scan0``: everything the scanner sends and gets) into a pcap file."""
        assert self.workdir is not None
        path = self.workdir / f"capture-{interface}-{time.monotonic_ns()}.pcap"
        command = ["tcpdump", "-i", interface, "-n", "-U", "--immediate-mode", "-B", "8192", "-w", str(path)]
        process = self.popen_in(self.bridge_ns, [*command, *bpf.split()], stderr=subprocess.PIPE)
        assert process.stderr is not None
        ready, _, _ = select.select([process.stderr], [], [], 10)
        if not ready or b"listening" not in process.stderr.readline():
            process.kill()
            raise RuntimeError("tcpdump did not start")
        try:
            yield path
        finally:
            time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stderr.close()

    def start_sshd(
        self, host: LabHost | str, authorized_keys: str = "", extra: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """OpenSSH's sshd on port 22 of ``host`` with a fresh host key and a config in the lab's folder."""
        target = self.host(host) if isinstance(host, str) else host
        assert self.workdir is not None
        folder = self.workdir / f"sshd-{target.address}"
        folder.mkdir(parents=True, exist_ok=True)
        key = folder / "ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (folder / "authorized_keys").write_text(authorized_keys)
        config = [
            "Port 22",
            f"ListenAddress {target.address}",
            f"HostKey {key}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",  # "Server listening" is a VERBOSE message
            *extra,
        ]
        (folder / "sshd_config").write_text("\n".join(config) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        process = self.popen_in(
            target.netns, ["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.PIPE
        )
        assert process.stderr is not None
        end = time.monotonic() + 10
        said = b""
        while time.monotonic() < end:
            ready, _, _ = select.select([process.stderr], [], [], 0.2)
            if ready:
                line = process.stderr.readline()
                said += line
                if b"Server listening" in line:
                    return process
                if not line:
                    break
        process.kill()
        raise RuntimeError(f"sshd on {target.address} did not start: {said.decode(errors='replace').strip()}")

    def start_snmpd(self, host: LabHost | str, **kwargs: Any) -> Any:
        """net-snmp's snmpd on UDP 161 of ``host`` (tests.snmpdtools.Snmpd; stop it or leave it to down())."""
        from tests.snmpdtools import Snmpd

        target = self.host(host) if isinstance(host, str) else host
        assert self.workdir is not None
        folder = self.workdir / f"snmpd-{target.address}"
        agent = Snmpd(folder, address=target.address, port=161, prefix=["ip", "netns", "exec", target.netns], **kwargs)
        return agent.start()


# --- the lab daemon: tunnel relay and TCP listeners -------------------------------------------

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def _open_tun(netns: str, name: str) -> int:
    with in_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def daemon(spec_file: str) -> int:
    """Relays the tunnel's two tun devices and accepts (then closes) connections on the listeners."""
    spec = json.loads(Path(spec_file).read_text())
    pipes: dict[int, int] = {}
    if spec.get("relay"):
        (ns_a, dev_a), (ns_b, dev_b) = spec["relay"]
        fd_a, fd_b = _open_tun(ns_a, dev_a), _open_tun(ns_b, dev_b)
        pipes = {fd_a: fd_b, fd_b: fd_a}
    servers: dict[int, socket.socket] = {}
    for netns, address, ports in spec.get("listen", []):
        with in_netns(netns):
            for port in ports:
                server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                server.bind((address, port))
                server.listen(64)
                server.setblocking(False)
                servers[server.fileno()] = server
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    poller = select.poll()
    for fd in [*pipes, *servers]:
        poller.register(fd, select.POLLIN)
    while not stop:
        try:
            events = poller.poll(200)
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd in pipes:
                for _ in range(64):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    with contextlib.suppress(OSError):
                        os.write(pipes[fd], packet)
            elif fd in servers:
                try:
                    connection, _ = servers[fd].accept()
                    connection.close()
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.ECONNABORTED):
                        raise
    return 0


# --- command line ------------------------------------------------------------------------------


def demo() -> int:
    """A small lab (LAN, routed subnet with ICMP-dropping hosts, tunnel) scanned by ``ksocket scan``."""
    lab = (
        Lab(prefix="kslab-demo").flat(20).routed(8).tunnel(4).icmp_blocked(2, segment="routed").listen(3, segment="lan")
    )
    try:
        lab.up()
        print(f"lab up in {lab.setup_seconds:.1f} s: {len(lab.hosts)} hosts; scanning from {lab.scanner_ns}")
        targets = [lab.cidr(name) for name in ("lan", "routed", "tunnel")]
        command = [sys.executable, "-m", "ksocket.cli", "scan", *targets, "--rate", "2000"]
        print("$ ksocket scan " + " ".join(targets) + " --rate 2000")
        done = lab.run_in_scanner(command, capture_output=False)
        return done.returncode
    finally:
        lab.down()


def down(*, everything: bool) -> int:
    """``inv lab.down``: the labs ``up`` made (``kslab``, ``kslab-disco``) and those of test runs whose process
    is gone; a running test's lab is left alone unless ``everything`` says otherwise (it would fail that test)."""
    if everything:
        names = remove_namespaces("kslab", own=False)
    else:
        remove_stale()
        names = [*remove_namespaces("kslab"), *remove_namespaces("kslab-disco")]
    print(f"lab down: removed {len(names)} namespaces")
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the lab (namespaces kslab-*)")
    up.add_argument("--hosts", type=int, default=30, help="hosts on the flat LAN (up to 1024)")
    up.add_argument("--prefixlen", type=int, default=None, help="prefix length of the LAN (default: fits the hosts)")
    up.add_argument("--routed", type=int, default=10, help="hosts behind the router (0: no router)")
    up.add_argument("--tunnel", type=int, default=5, help="hosts behind the tun point-to-point link (0: none)")
    up.add_argument("--icmp-blocked", type=int, default=3, help="routed hosts that drop ICMP but listen on TCP")
    up.add_argument("--listen", type=int, default=3, help="LAN hosts that listen on TCP 22 and 80")
    up.add_argument("--loss", type=float, default=0.0, help="percent of frames dropped in each direction")
    up.add_argument("--seed", type=int, default=1)
    down_parser = sub.add_parser("down", help="remove the labs of `up` and of test runs that are gone")
    down_parser.add_argument("--all", action="store_true", help="every kslab-* lab, running test runs' included")
    sub.add_parser("demo", help="bring up a small lab, run `ksocket scan` on it in the scanner namespace, tear down")
    sub.add_parser("status", help="list the lab's namespaces and the hosts of the saved ground truth")
    daemon_parser = sub.add_parser("daemon", help=argparse.SUPPRESS)
    daemon_parser.add_argument("spec")
    args = parser.parse_args(list(argv[1:]))
    if args.command == "daemon":
        return daemon(args.spec)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 1
    if args.command == "down":
        return down(everything=args.all)
    if args.command == "demo":
        return demo()
    if args.command == "status":
        names = lab_namespaces("kslab", own=False)
        print(f"{len(names)} namespaces: {' '.join(names[:8])}{' …' if len(names) > 8 else ''}")
        for state in sorted(STATE_DIR.glob("kslab*.json")):
            document = json.loads(state.read_text())
            print(f"{state}: {len(document['hosts'])} hosts, segments {document['segments']}")
        return 0
    lab = Lab(seed=args.seed).flat(args.hosts, args.prefixlen)
    if args.routed:
        lab.routed(args.routed)
        if args.icmp_blocked:
            lab.icmp_blocked(min(args.icmp_blocked, args.routed), segment="routed")
    if args.tunnel:
        lab.tunnel(args.tunnel)
    if args.listen:
        lab.listen(min(args.listen, args.hosts), segment="lan")
    lab.loss(args.loss)
    lab.processes = []
    lab.up()
    # the daemon must outlive this command: forget it (down finds it by its namespace)
    for process in lab.processes:
        if process.stdout:
            process.stdout.close()
    lab.processes = []
    print(f"lab up in {lab.setup_seconds:.1f} s: {len(lab.hosts)} hosts")
    for name, segment in lab.segments.items():
        print(f"  {name:7} {segment.cidr:18} {len(lab.addresses(name))} hosts")
    print(f"  scanner {lab.scanner_address} in namespace {lab.scanner_ns}; ground truth in {STATE_DIR / 'kslab.json'}")
    print(f"  try: ip netns exec {lab.scanner_ns} ksocket scan {lab.cidr('lan')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
