"""The discovery loop's lab: a routed topology whose routers and hosts reveal networks the agent does
not route to, and fences that count every packet (``python -m tests.discoverylab up|down``,
``inv lab.up --discovery``).

It is a :class:`~tests.lab.Lab` (namespaces ``PREFIX-*``, one bridge per segment in the bridge
namespace, the agent in the scanner namespace; ``up``, ``down``, ``exec_in``, ``run_in_scanner``,
``capture`` on ``scan0``) with a topology of its own (:data:`NODES`), all in 198.18.0.0/15::

    agent (PREFIX-s) 198.18.0.1 ── A lan 198.18.0.0/24 ── .254 R1 (PREFIX-r1, snmpd v3 authPriv)
        R1 .1 ── B 198.18.1.0/24 ── arp1..3 .11-.13 (answer ARP only)
        R1 .1 ── transit 198.18.2.0/24 ── .2 R2 (PREFIX-r2, no SNMP)
        R2 .1 ── C 198.18.3.0/24 ── .10 H (PREFIX-linux, sshd) .1 ── E 198.18.5.0/24 ── edge1, edge2 .10-.11
        R2 .1 ── D 198.18.4.0/24 ── denied .10     (the fence's deny: counters)
        R2 .1 ── F 198.19.6.0/24 ── outside .10    (outside the fence's allow: counters)

What the agent knows: its own segment A and a default route via R1, nothing else (no route names B..F);
its neighbour table holds R1 (``up`` returns once the agent has talked to it and its interface says it
runs, so that its view has segment A at once).
What the tables reveal:

- R1 (SNMP, the credential file ``snmp/10-discovery-r1.toml``): its ARP table holds B's hosts and R2
  (R1 talked to each of them while the lab was built, so the entries are complete; pinned, see
  :meth:`DiscoveryLab.talk`, so that they last however long a test waits), its routing
  table has C, D and F via R2 (and a default via R2, which reaches E without naming it), its own
  addresses name A, B and the transit network;
- H (SSH as the test account ``kstest`` with a key, ``ssh/10-discovery-h.toml``): ``ip route``
  shows E (connected), ``ip neigh`` E's hosts and its gateway R2 (H talked to them at build time);
- R2 reveals nothing (no SNMP, no login); the hosts of B drop every IP packet (an nftables input
  policy, with a counter of what they dropped) and answer ARP only.

Fences: D is covered by :data:`FENCE_DENY` and F is outside :data:`FENCE_ALLOW`. Their hosts' namespaces
count what arrives: a netdev ingress counter on ``eth0`` (every frame, ARP included, and ARP alone) and
inet ``input`` and ``forward`` counters (:meth:`DiscoveryLab.fence_counters`); they are loaded before
any address is configured, so they read zero after the build unless something reached the host. The
bridge namespace sends nothing of its own (an nftables output policy): a bridge port that is up sends
IGMP reports to the host at its other end otherwise, which a fence would count.

Ground truth (:meth:`DiscoveryLab.expected_addresses`, :meth:`DiscoveryLab.expected_networks`, the
credentials written) is also saved in ``/run/kslab/PREFIX.json`` under ``discovery``. The credential
files and the SSH key are written mode 0600 under ``HOME/etc/ksocket/`` (``home``: a ``KSOCKET_HOME``
given by the caller, or ``home`` in the lab's work folder), so ``KSOCKET_HOME=HOME ip netns exec
PREFIX-s ksocket inspect 198.18.0.254`` inspects R1 as the agent would.

``python -m tests.discoverylab down`` removes this lab alone (prefix ``kslab-disco``); ``inv lab.down``
removes every lab named ``kslab-*``, test runs' included.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import (
    ETC_NETNS,
    SCANNER_MAC,
    STATE_DIR,
    Lab,
    LabHost,
    Segment,
    in_netns,
    ip_batch,
    lab_namespaces,
    remove_namespaces,
    write_sysctl,
)
from tests.timing import scaled

SEGMENTS = {  # name -> network; "lan" is the agent's segment A
    "lan": "198.18.0.0/24",
    "b": "198.18.1.0/24",
    "transit": "198.18.2.0/24",
    "c": "198.18.3.0/24",
    "d": "198.18.4.0/24",
    "e": "198.18.5.0/24",
    "f": "198.19.6.0/24",
}
FENCE_ALLOW = ("198.18.0.0/16",)
FENCE_DENY = (SEGMENTS["d"],)
SNMP_USER = ("ksdiscovery", "SHA", "disco-auth-7Rq2x", "AES", "disco-priv-9Lm4w")  # name, auth, key, priv, key
SNMP_COMMUNITY = "v2c-is-not-what-the-agent-uses-3f9a"  # snmpd always has one; the agent's file is v3
NEIGHBOUR_WAIT = scaled(10.0)  # seconds for the kernel to resolve a neighbour that answers ARP (it does at once)
TALK_AGAIN = 1.0  # seconds before a datagram goes again to an address not resolved yet


@dataclass(frozen=True)
class Provenance:
    """Where the discovery loop learns an entry: the host inspected, the protocol, the table (the
    ``hosts.inspect`` result's section, as :mod:`ksocket.collectors.discover.learn` names it)."""

    host: str
    protocol: str
    table: str


@dataclass(frozen=True)
class Node:
    """One namespace of the topology: its legs (segment, host number) as ``eth0``, ``eth1`` …, its
    routes, whether it forwards, and the addresses it talks to while the lab is built."""

    name: str  # the namespace is PREFIX-name
    role: str  # agent, snmp-router, router, linux, arp-only, edge, denied, outside
    legs: tuple[tuple[str, int], ...]
    routes: tuple[str, ...] = ()
    forwards: bool = False
    talks_to: tuple[str, ...] = ()  # addresses whose neighbour entries it must hold

    def address(self, leg: int = 0) -> str:
        segment, number = self.legs[leg]
        return str(ipaddress.ip_network(SEGMENTS[segment])[number])


R1_LAN, R1_TRANSIT, R2_TRANSIT, H_C, H_E = "198.18.0.254", "198.18.2.1", "198.18.2.2", "198.18.3.10", "198.18.5.1"
R2_C = "198.18.3.1"
ARP_ONLY = ("198.18.1.11", "198.18.1.12", "198.18.1.13")
EDGE = ("198.18.5.10", "198.18.5.11")

NODES = (
    Node("s", "agent", (("lan", 1),), (f"default via {R1_LAN}",), talks_to=(R1_LAN,)),
    Node(
        "r1",
        "snmp-router",
        (("lan", 254), ("b", 1), ("transit", 1)),
        (*(f"{SEGMENTS[name]} via {R2_TRANSIT}" for name in "cdf"), f"default via {R2_TRANSIT}"),
        forwards=True,
        talks_to=(*ARP_ONLY, R2_TRANSIT),
    ),
    Node(
        "r2",
        "router",
        (("transit", 2), ("c", 1), ("d", 1), ("f", 1)),
        (f"{SEGMENTS['lan']} via {R1_TRANSIT}", f"{SEGMENTS['b']} via {R1_TRANSIT}", f"{SEGMENTS['e']} via {H_C}"),
        forwards=True,
    ),
    Node(
        "linux",
        "linux",
        (("c", 10), ("e", 1)),
        (f"default via {R2_C}",),
        forwards=True,
        talks_to=(*EDGE, R2_C),  # R2: H answers the agent through it, so H's table holds it anyway
    ),
    *(Node(f"arp{n}", "arp-only", (("b", 10 + n),), ("default via 198.18.1.1",)) for n in (1, 2, 3)),
    *(Node(f"edge{n}", "edge", (("e", 9 + n),), (f"default via {H_E}",)) for n in (1, 2)),
    Node("denied", "denied", (("d", 10),), ("default via 198.18.4.1",)),
    Node("outside", "outside", (("f", 10),), ("default via 198.19.6.1",)),
)
ROUTERS = ("r1", "r2")
INSPECTED = {"r1": "snmp", "linux": "ssh"}  # node -> the protocol its credential file serves
TABLES = {  # protocol -> (neighbours, own addresses, routes), as hosts.inspect names them
    "snmp": ("arp", "ipAddresses", "routes"),
    "ssh": ("neighbors", "interfaces", "routes"),
}

SILENT_RULES = """table inet kslab_silent {
  counter dropped {}
  chain input { type filter hook input priority 0; policy drop; counter name "dropped"; }
}
"""
MUTE_RULES = """table inet kslab_mute {
  chain output { type filter hook output priority 0; policy drop; }
}
"""
FENCE_RULES = """table netdev kslab_fence {
  counter frames {}
  counter arp_frames {}
  chain ingress {
    type filter hook ingress device "eth0" priority 0; policy accept;
    counter name "frames"
    meta protocol arp counter name "arp_frames"
  }
}
table inet kslab_fence {
  counter input {}
  counter forward {}
  chain input { type filter hook input priority 0; policy accept; counter name "input"; }
  chain forward { type filter hook forward priority 0; policy accept; counter name "forward"; }
}
"""


def fence_reason(address: str) -> str | None:
    """Why the scan's fence keeps ``address`` (or a network's first address) out, or None."""
    ip = ipaddress.ip_address(address)
    if any(ip in ipaddress.ip_network(network) for network in FENCE_DENY):
        return "deny"
    if not any(ip in ipaddress.ip_network(network) for network in FENCE_ALLOW):
        return "outside-allow"
    return None


def node(name: str) -> Node:
    return next(item for item in NODES if item.name == name)


@dataclass(frozen=True)
class ExpectedAddress:
    """An address of the topology: who has it, whether it answers, what fences it, which tables name it
    (empty: none; the loop finds it by probing its network)."""

    address: str
    mac: str
    node: str
    role: str
    network: str
    answers: str  # "all" or "arp-only"
    fenced: str | None
    revealed_by: tuple[Provenance, ...]


@dataclass(frozen=True)
class ExpectedNetwork:
    network: str
    segment: str
    kind: str  # what the first table names it as: "interface" (connected) or "route"
    fenced: str | None
    revealed_by: tuple[Provenance, ...]


def _revealers(address: str) -> tuple[Provenance, ...]:
    """The tables of the inspected nodes that name ``address`` (neighbour, own address, next hop); not
    those of the host inspected at ``address`` itself (it has to be found before it names itself)."""
    found = []
    for name, protocol in INSPECTED.items():
        inspected = node(name)
        host = inspected.address()
        if host == address:
            continue
        neighbours, own, routes = TABLES[protocol]
        if address in inspected.talks_to:
            found.append(Provenance(host, protocol, neighbours))
        if address in {inspected.address(leg) for leg in range(len(inspected.legs))}:
            found.append(Provenance(host, protocol, own))
        if any(route.endswith(f"via {address}") for route in inspected.routes):
            found.append(Provenance(host, protocol, routes))
    return tuple(found)


def _network_revealers(segment: str) -> tuple[tuple[Provenance, ...], str]:
    """The tables of the inspected nodes that name the segment's network, and the kind the first names."""
    network = SEGMENTS[segment]
    found, kinds = [], []
    for name, protocol in INSPECTED.items():
        inspected = node(name)
        host = inspected.address()
        _, own, routes = TABLES[protocol]
        if any(leg == segment for leg, _ in inspected.legs):
            found += [Provenance(host, protocol, own), Provenance(host, protocol, routes)]  # connected route too
            kinds.append("interface")
        elif any(route.startswith(f"{network} ") for route in inspected.routes):
            found.append(Provenance(host, protocol, routes))
            kinds.append("route")
    return tuple(found), (kinds[0] if kinds else "")


def _resolved(row: dict[str, Any] | None) -> bool:
    """A complete neighbour entry: a MAC, and a state that is not a question still open."""
    states = set(row.get("state", ["NONE"])) if row else {"NONE"}
    return row is not None and "lladdr" in row and not states & {"INCOMPLETE", "FAILED", "NONE"}


def _mac(position: int, leg: int) -> str:
    return SCANNER_MAC if position == 0 else f"02:6b:64:{position:02x}:00:{leg:02x}"


@dataclass
class DiscoveryLab(Lab):
    """The topology of the module's docstring: ``DiscoveryLab(prefix=...).up()``, then ``down()``."""

    prefix: str = "kslab-disco"
    home: Path | None = None  # the agent's KSOCKET_HOME: credentials go to HOME/etc/ksocket
    snmpd: Any = None  # R1's tests.snmpdtools.Snmpd
    sshd: Any = None  # H's tests.sshdtools.Sshd
    credentials: dict[str, str] = field(default_factory=dict)  # "snmp", "ssh", "sshKey" -> path

    def __post_init__(self) -> None:
        for name, network in SEGMENTS.items():
            net = ipaddress.ip_network(network)
            hosts = sum(1 for item in NODES if item.legs[0][0] == name and item.name not in (*ROUTERS, "s"))
            self.segments[name] = Segment(name, int(net.network_address), net.prefixlen, hosts)

    # names ---------------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        """The namespace of the node ``name`` (``r1``, ``linux``, ``denied`` …)."""
        return self.scanner_ns if name == "s" else f"{self.prefix}-{name}"

    @property
    def r1(self) -> str:
        return R1_LAN

    @property
    def linux(self) -> str:
        return H_C

    @property
    def credentials_root(self) -> Path:
        assert self.home is not None
        return self.home / "etc" / "ksocket" / "credentials"

    @staticmethod
    def _port(item: Node, leg: int) -> str:
        return "scan0" if item.name == "s" else f"{item.name}-{leg}"

    # ground truth --------------------------------------------------------------------------------

    def routers(self, segment: str | None = None) -> dict[str, str]:
        """R1's and R2's addresses: address -> segment."""
        found = {item.address(leg): name for item in map(node, ROUTERS) for leg, (name, _) in enumerate(item.legs)}
        return {address: name for address, name in found.items() if segment is None or name == segment}

    def expected_addresses(self) -> list[ExpectedAddress]:
        """Every address of the topology but the agent's, with what names it and what fences it."""
        expected = []
        for position, item in enumerate(NODES[1:], start=1):
            for leg, (segment, _) in enumerate(item.legs):
                address = item.address(leg)
                expected.append(
                    ExpectedAddress(
                        address,
                        _mac(position, leg),
                        item.name,
                        item.role,
                        SEGMENTS[segment],
                        "arp-only" if item.role == "arp-only" else "all",
                        fence_reason(address),
                        _revealers(address),
                    )
                )
        return expected

    def expected_networks(self) -> list[ExpectedNetwork]:
        """Every segment's network with the tables that name it (the agent's own A is connected)."""
        networks = []
        for segment, network in SEGMENTS.items():
            revealed_by, kind = _network_revealers(segment)
            first = str(ipaddress.ip_network(network).network_address)
            networks.append(ExpectedNetwork(network, segment, kind, fence_reason(first), revealed_by))
        return networks

    def _plan(self) -> None:
        self.hosts = [
            LabHost(self.ns(item.name), item.address(), _mac(position, 0), item.legs[0][0], item.role != "arp-only")
            for position, item in enumerate(NODES)
            if item.name not in (*ROUTERS, "s")
        ]

    # building ------------------------------------------------------------------------------------

    def _build(self) -> None:
        assert self.workdir is not None
        if self.home is None:
            self.home = self.workdir / "home"
        names = [self.bridge_ns, *(self.ns(item.name) for item in NODES)]
        ip_batch([f"netns add {name}" for name in names])
        for name in names:
            with in_netns(name):  # no IPv6 anywhere: no solicitations, MLD or DAD reach a fence
                write_sysctl("net.ipv6.conf.default.disable_ipv6", "1")
                write_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        for item in NODES:
            if item.forwards:
                with in_netns(self.ns(item.name)):
                    write_sysctl("net.ipv4.ip_forward", "1")
        # the bridge namespace sends nothing of its own: its ports would give the hosts IGMP reports
        self._nft(self.bridge_ns, MUTE_RULES)
        self._link()
        for item in NODES:
            if item.role == "arp-only":
                self._nft(self.ns(item.name), SILENT_RULES)
            elif item.role in ("denied", "outside"):
                self._nft(self.ns(item.name), FENCE_RULES)
        self._address()
        etc = ETC_NETNS / self.scanner_ns  # the agent's resolver: no name server it could reach
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        for item in NODES:
            if item.talks_to:
                self.talk(self.ns(item.name), item.talks_to)
        self.wait_until_running(self.scanner_ns)
        self._write_credentials()
        self._start_services()

    def _link(self) -> None:
        """A bridge per segment in the bridge namespace, a veth per leg (``ethN`` ⇄ port ``NAME-N``)."""
        links: list[str] = []
        bridge = [line for name in SEGMENTS for line in (f"link add br-{name} type bridge", f"link set br-{name} up")]
        for position, item in enumerate(NODES):
            for leg, (segment, _) in enumerate(item.legs):
                port = self._port(item, leg)
                links.append(
                    f"link add eth{leg} netns {self.ns(item.name)} address {_mac(position, leg)} type veth"
                    f" peer name {port} netns {self.bridge_ns}"
                )
                bridge.append(f"link set {port} master br-{segment} up")
        ip_batch(links)
        ip_batch(bridge, self.bridge_ns)

    def _address(self) -> None:
        configs = []
        for item in NODES:
            lines = ["link set lo up"]
            for leg, (segment, _) in enumerate(item.legs):
                prefixlen = ipaddress.ip_network(SEGMENTS[segment]).prefixlen
                lines += [f"addr add {item.address(leg)}/{prefixlen} dev eth{leg}", f"link set eth{leg} up"]
            lines += [f"route add {route}" for route in item.routes]
            configs.append((self.ns(item.name), lines))
        self._parallel_batches(configs)

    def talk(self, netns: str, addresses: Sequence[str]) -> None:
        """Sends a datagram from ``netns`` to each address (discard port), waits until the kernel holds a
        complete neighbour entry for each (what a router has after talking to a host: the route and the
        link work, the host answered ARP), then pins each entry as resolved (``PERMANENT``).

        Pinned, because the kernel's neighbour table is one for every namespace of the machine: once it
        holds ``gc_thresh1`` (128) entries — other labs up at the same time — its garbage collector drops
        an entry a minute after its last use, and a table the discovery reads later would miss it."""
        end = time.monotonic() + NEIGHBOUR_WAIT
        pending, sent = list(addresses), float("-inf")
        while True:
            if time.monotonic() - sent >= TALK_AGAIN:  # a link not up yet lost the first datagrams' ARP
                with in_netns(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    for address in pending:
                        sock.sendto(b"kslab", (address, 9))
                sent = time.monotonic()
            rows = {row["dst"]: row for row in self.neighbour_rows(netns)}
            pending = [a for a in addresses if not _resolved(rows.get(a))]
            if not pending:
                break
            if time.monotonic() > end:
                raise RuntimeError(f"{netns} did not resolve {pending}: {self.neighbours(netns)}")
            time.sleep(0.05)
        pins = [f"neigh replace {a} lladdr {rows[a]['lladdr']} dev {rows[a]['dev']} nud permanent" for a in addresses]
        ip_batch(pins, netns)

    def wait_until_running(self, netns: str) -> None:
        """Waits until every interface of ``netns`` that is up says it runs (``NO-CARRIER`` gone). The
        kernel sets that a moment after the link works (its link watch, at most once a second): until
        then the agent's view has no on-link network, and a discovery would start without its own
        segment."""
        end = time.monotonic() + NEIGHBOUR_WAIT
        while True:
            done = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "up"], capture_output=True, text=True)
            flags = {row["ifname"]: row.get("flags", []) for row in json.loads(done.stdout or "[]")}
            waiting = [name for name, link in flags.items() if "NO-CARRIER" in link]
            if done.returncode == 0 and not waiting:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"{netns}: {waiting} not running after {NEIGHBOUR_WAIT:g} s")
            time.sleep(0.05)

    def neighbour_rows(self, netns: str) -> list[dict[str, Any]]:
        """The kernel's neighbour table in ``netns`` as ``ip -j neigh`` gives it (``dst``, ``dev``, ``lladdr``,
        ``state``)."""
        done = subprocess.run(["ip", "-n", netns, "-j", "neigh", "show"], capture_output=True, text=True, check=True)
        rows: list[dict[str, Any]] = json.loads(done.stdout or "[]")
        return rows

    def neighbours(self, netns: str) -> dict[str, str]:
        """The kernel's neighbour table in ``netns``: address -> state (``REACHABLE``, ``FAILED`` …)."""
        return {row["dst"]: ",".join(row.get("state", ["NONE"])) for row in self.neighbour_rows(netns)}

    def _write_credentials(self) -> None:
        from tests.conftest import write_private
        from tests.sshdtools import USER, credential_file, make_key

        name, auth, auth_key, priv, priv_key = SNMP_USER
        snmp = write_private(
            self.credentials_root / "snmp" / "10-discovery-r1.toml",
            f'includes = ["{R1_LAN}"]\ntimeout = 2.0\n\n[authData]\nusername = "{name}"\n'
            f'authProtocol = "usmHMAC{auth}AuthProtocol"\nauthKey = "{auth_key}"\n'
            f'privProtocol = "usm{"AesCfb128" if priv == "AES" else priv}Protocol"\nprivKey = "{priv_key}"\n',
        )
        keys = self.credentials_root.parent / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        key = make_key(keys / "discovery_ed25519")
        ssh = credential_file(
            self.credentials_root, "10-discovery-h.toml", [SEGMENTS["c"]], username=USER, keys=[(key, "")]
        )
        self.credentials = {"snmp": str(snmp), "ssh": str(ssh), "sshKey": str(key)}

    def _start_services(self) -> None:
        """snmpd on R1, sshd on H: each logs to a file and holds no pipe of ours (``up`` may exit)."""
        from tests.snmpdtools import Snmpd, User
        from tests.sshdtools import Sshd, ensure_user

        assert self.workdir is not None
        name, auth, auth_key, priv, priv_key = SNMP_USER
        self.snmpd = Snmpd(
            self.workdir / "snmpd-r1",
            address=R1_LAN,
            port=161,
            community=SNMP_COMMUNITY,
            users=[User(name, auth, auth_key, priv, priv_key)],
            sys_name="r1.discovery.lab",
            prefix=["ip", "netns", "exec", self.ns("r1")],
        ).start()
        ensure_user()
        self.workdir.chmod(0o711)  # sshd reads the authorized keys as the test user
        public_key = Path(f"{self.credentials['sshKey']}.pub").read_text().strip()
        self.sshd = Sshd(self.workdir, H_C, 22, netns=self.ns("linux"), authorized_keys=[public_key]).start()

    # reading the fences ----------------------------------------------------------------------------

    def fence_counters(self, name: str) -> dict[str, int]:
        """The packets counted in the fenced node ``name`` (``denied``, ``outside``) or dropped by an
        ARP-only one: ``frames`` and ``arp_frames`` at eth0's ingress, ``input``, ``forward`` (``dropped``)."""
        done = self.exec_in(self.ns(name), ["nft", "-j", "list", "counters"], check=True, timeout=30)
        counters = [item["counter"] for item in json.loads(done.stdout)["nftables"] if "counter" in item]
        return {counter["name"]: int(counter["packets"]) for counter in counters}

    def _save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        document = {
            "prefix": self.prefix,
            "scanner": {"netns": self.scanner_ns, "address": self.scanner_address, "mac": SCANNER_MAC},
            "segments": dict(SEGMENTS),
            "loss": 0.0,
            "hosts": [asdict(host) for host in self.hosts],
            "discovery": {
                "agent": {"netns": self.scanner_ns, "address": self.scanner_address, "gateway": R1_LAN},
                "fence": {"allow": list(FENCE_ALLOW), "deny": list(FENCE_DENY)},
                "home": str(self.home),
                "credentials": self.credentials,
                "namespaces": {item.name: self.ns(item.name) for item in NODES},
                "addresses": [asdict(item) for item in self.expected_addresses()],
                "networks": [asdict(item) for item in self.expected_networks()],
            },
        }
        (STATE_DIR / f"{self.prefix}.json").write_text(json.dumps(document, indent=1))


# --- command line ------------------------------------------------------------------------------


def demo() -> int:
    """The product's main job on this lab: ``ksocket discover`` from the agent's segment, learning the rest,
    then the fences' counters (nothing may reach D or F); the lab is removed after."""
    with tempfile.TemporaryDirectory(prefix="kslab-disco-home-") as home:
        lab = DiscoveryLab(home=Path(home))
        try:
            lab.up()
            command = ["discover", "--seed", SEGMENTS["lan"], *(f"--allow={c}" for c in FENCE_ALLOW)]
            command += [f"--deny={c}" for c in FENCE_DENY]
            print(f"discovery lab up in {lab.setup_seconds:.1f} s; from {lab.scanner_ns}:")
            print("$ ksocket " + " ".join(command))
            done = lab.run_in_scanner(
                [sys.executable, "-m", "ksocket.cli", *command],
                env={**os.environ, "KSOCKET_HOME": str(lab.home)},
                capture_output=False,
                timeout=300,
            )
            for name in ("denied", "outside"):
                print(f"fence, the {name} segment's host: {lab.fence_counters(name)}")
            return done.returncode
        finally:
            lab.down()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.discoverylab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the discovery lab (namespaces kslab-disco-*)")
    up.add_argument("--home", type=Path, help="the KSOCKET_HOME to write the credential files to")
    sub.add_parser("down", help="remove the discovery lab")
    sub.add_parser("demo", help="bring the lab up, run ksocket discover in it, show the fences, remove it")
    args = parser.parse_args(list(argv[1:]))
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 1
    if args.command == "demo":
        return demo()
    if args.command == "down":
        names = remove_namespaces(DiscoveryLab.prefix)
        print(f"discovery lab down: removed {len(names)} namespaces")
        return 0
    lab = DiscoveryLab(home=args.home.resolve() if args.home else None)
    lab.up()
    lab.processes = []  # sshd and snmpd must outlive this command: down finds them by their namespace
    print(f"discovery lab up in {lab.setup_seconds:.1f} s: {len(lab_namespaces(lab.prefix))} namespaces")
    for item in lab.expected_networks():
        print(f"  {item.segment:8} {item.network:16} {item.fenced or ''}")
    print(f"  agent {lab.scanner_address} in {lab.scanner_ns}, default via {R1_LAN}; ground truth in {STATE_DIR}")
    print(f"  try: KSOCKET_HOME={lab.home} ip netns exec {lab.scanner_ns} ksocket inspect {R1_LAN} --protocols snmp")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
