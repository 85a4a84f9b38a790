"""What the discovery loop learns from one host: a pure function of its ``hosts.inspect`` result.

:func:`learn` reads the tables one inspection collected (rows in, candidates and provenance out; no
I/O, no clock) and :func:`identity_keys` the stable keys that name the host. Both are total: any
JSON value in the place of a section, a row or a field is skipped, never an exception.

What becomes what (each with its :class:`Source`: the host inspected, the protocol, the table,
named as the result's section: ``ssh``'s ``neighbors``/``interfaces``/``routes``; ``snmp``'s
``arp`` (ipNetToPhysicalTable and ipNetToMediaTable), ``ipAddresses``, ``routes``,
``lldpNeighbors``; ``winrm``'s ``neighbors`` (MSFT_NetNeighbor), ``ipAddresses``
(MSFT_NetIPAddress), ``routes`` (MSFT_NetRoute), ``networkAdapters``):

- a neighbour becomes a candidate only when the entry is complete: a unicast MAC that is not all
  zeros, and no ``incomplete``/``failed``/``unreachable`` state (such a row is a question the
  host asked, not an answer); LLDP's remote management addresses are candidates as they are (the
  neighbour announced them);
- the host's own addresses are candidates (one host entry per live address: a router answering on
  three addresses is three entries, merged by the hub through their identity keys), and their
  networks are :class:`Network` entries of kind ``interface``;
- a route's destination is a :class:`Network` of kind ``route``, its next hop a candidate; a
  default route gives only its next hop; an ``unreachable``/``blackhole``/``reject``/``prohibit``
  route gives nothing;
- a network is ``expandable`` when it holds at most ``expand_limit`` addresses
  (:data:`DEFAULT_EXPAND_LIMIT`); larger ones are only reported. :func:`expand` lists an
  expandable network's addresses.

Fence: addresses and networks that cannot name another host from anywhere (unspecified, loopback,
multicast, link-local, reserved, IPv4 limited broadcast) are not candidates here; they are listed
in ``skipped`` with the reason (at most :data:`MAX_SKIPPED`). Everything else (private or not,
inside the scan's scope or not) is the loop's one fence predicate to decide. IPv4-mapped IPv6
addresses are folded to IPv4 (:mod:`ksocket.addresses`).

Bounds: at most :data:`MAX_CANDIDATES` candidates and :data:`MAX_NETWORKS` networks per host,
:data:`MAX_SOURCES` sources per entry; what is left out is counted in ``notes``. Nothing is
enumerated here, so a table revealing a /8 (or 10⁶ rows) costs its rows, not its addresses. Loops
of routers pointing at each other are the loop's business: learning is per host.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ksocket.addresses import fold_mapped

DEFAULT_EXPAND_LIMIT = 4096  # addresses in a network the loop may probe one by one
MAX_CANDIDATES = 16_384  # addresses learnt from one host
MAX_NETWORKS = 4096  # networks learnt from one host
MAX_SOURCES = 8  # sources kept per candidate or network
MAX_SKIPPED = 256  # fenced entries listed (the others are counted)
MAX_ROWS = 1_000_000  # rows of one table looked at (the inspectors keep far fewer)

INCOMPLETE_STATES = frozenset({"incomplete", "failed", "unreachable", "none"})
DEAD_ROUTES = frozenset({"unreachable", "blackhole", "reject", "prohibit", "throw", "invalid"})

Document = dict[str, Any]
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class Source:
    """Where an entry was learnt: the host inspected, the protocol, the table (the result's section)."""

    host: str
    protocol: str
    table: str

    def as_document(self) -> Document:
        return {"host": self.host, "protocol": self.protocol, "table": self.table}


@dataclass(frozen=True)
class Candidate:
    address: str
    mac: str | None
    sources: tuple[Source, ...]

    def as_document(self) -> Document:
        return {"address": self.address, "mac": self.mac, "sources": [s.as_document() for s in self.sources]}


@dataclass(frozen=True)
class Network:
    network: str
    kind: str  # "interface" or "route"
    size: int  # addresses in it
    expandable: bool
    sources: tuple[Source, ...]

    def as_document(self) -> Document:
        return {
            "network": self.network,
            "kind": self.kind,
            "size": self.size,
            "expandable": self.expandable,
            "sources": [s.as_document() for s in self.sources],
        }


@dataclass(frozen=True)
class Skipped:
    value: str
    reason: str
    source: Source

    def as_document(self) -> Document:
        return {"value": self.value, "reason": self.reason, "source": self.source.as_document()}


@dataclass(frozen=True)
class Learned:
    address: str
    candidates: tuple[Candidate, ...]
    networks: tuple[Network, ...]
    skipped: tuple[Skipped, ...]
    notes: tuple[str, ...]

    def as_document(self) -> Document:
        return {
            "address": self.address,
            "candidates": [c.as_document() for c in self.candidates],
            "networks": [n.as_document() for n in self.networks],
            "skipped": [s.as_document() for s in self.skipped],
            "notes": list(self.notes),
        }


# --- reading a result defensively --------------------------------------------------------------


def _rows(section: object, key: str) -> Iterator[Mapping[str, Any]]:
    value = section.get(key) if isinstance(section, Mapping) else None
    if isinstance(value, list):
        for row in itertools.islice(value, MAX_ROWS):
            if isinstance(row, Mapping):
                yield row


def _text(row: object, key: str) -> str:
    value = row.get(key) if isinstance(row, Mapping) else None
    return value.strip()[:256] if isinstance(value, str) else ""


def _ip(text: object) -> IP | None:
    if not isinstance(text, str) or not text or len(text) > 64:
        return None
    try:
        return ipaddress.ip_address(fold_mapped(text.split("%", 1)[0].strip()))
    except ValueError:
        return None


def _network(text: str, prefix: object = None) -> Net | None:
    """``text`` as a network: a CIDR, or an address with ``prefix``; ``default`` is ``0.0.0.0/0``."""
    if text == "default":
        text = "0.0.0.0/0"
    address, _, length = text.partition("/")
    ip = _ip(address)
    length = length or ("" if prefix is None or isinstance(prefix, bool) else str(prefix))
    if ip is None or not length.isdigit() or len(length) > 3:
        return None
    try:
        return ipaddress.ip_network(f"{ip}/{length}", strict=False)
    except ValueError:
        return None


def _index(row: Mapping[str, Any], key: str) -> int | None:
    value = row.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mac(value: object) -> str | None:
    """A unicast MAC that is not all zeros, in lower case with colons; else None."""
    text = value.strip().lower().replace("-", ":") if isinstance(value, str) else ""
    if not _MAC.match(text) or not text.strip("0:") or int(text[:2], 16) & 1:
        return None
    return text


def _fence(ip: IP) -> str | None:
    """Why ``ip`` cannot name another host, or None."""
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("multicast", ip.is_multicast),
        ("link-local", ip.is_link_local),
        ("reserved", ip.is_reserved),
        ("broadcast", ip == ipaddress.IPv4Address("255.255.255.255")),
    )
    return next((reason for reason, hit in checks if hit), None)


def _sections(inspection: object) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The protocol sections that collected something (an ``error`` section has no tables)."""
    if not isinstance(inspection, Mapping):
        return
    for protocol in ("ssh", "snmp", "winrm"):
        section = inspection.get(protocol)
        if isinstance(section, Mapping) and "error" not in section:
            yield protocol, section


# --- the collector -----------------------------------------------------------------------------


@dataclass
class _Entry:
    mac: str | None
    sources: list[Source]


@dataclass
class _Learning:
    """Collects one host's entries: dedupes, fences, caps; the readers below feed it."""

    host: str
    expand_limit: int
    candidates: dict[str, _Entry] = field(default_factory=dict)
    networks: dict[tuple[str, str], list[Source]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=lambda: {"candidates": 0, "networks": 0, "skipped": 0})

    def source(self, protocol: str, table: str) -> Source:
        return Source(self.host, protocol, table)

    def skip(self, value: str, reason: str, source: Source) -> None:
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped.append(Skipped(value, reason, source))
        else:
            self.dropped["skipped"] += 1

    def address(self, ip: IP | None, mac: str | None, source: Source) -> None:
        if ip is None:
            return
        reason = _fence(ip)
        if reason is not None:
            self.skip(str(ip), reason, source)
            return
        key = str(ip)
        entry = self.candidates.get(key)
        if entry is None:
            if len(self.candidates) >= MAX_CANDIDATES:
                self.dropped["candidates"] += 1
                return
            entry = self.candidates[key] = _Entry(mac, [])
        entry.mac = entry.mac or mac
        if source not in entry.sources and len(entry.sources) < MAX_SOURCES:
            entry.sources.append(source)

    def network(self, network: Net | None, kind: str, source: Source) -> None:
        if network is None:
            return
        if network.prefixlen == 0:
            self.skip(str(network), "default route", source)
            return
        reason = _fence(network.network_address)
        if reason is not None:
            self.skip(str(network), reason, source)
            return
        key = (str(network), kind)
        sources = self.networks.get(key)
        if sources is None:
            if len(self.networks) >= MAX_NETWORKS:
                self.dropped["networks"] += 1
                return
            sources = self.networks[key] = []
        if source not in sources and len(sources) < MAX_SOURCES:
            sources.append(source)

    def route(self, destination: str, gateway: str, kind: str, source: Source) -> None:
        if kind.lower() in DEAD_ROUTES:
            self.skip(destination or gateway, f"{kind.lower()} route", source)
            return
        self.network(_network(destination), "route", source)
        self.address(_ip(gateway), None, source)

    def result(self) -> Learned:
        networks = tuple(
            Network(name, kind, size, size <= self.expand_limit, tuple(sources))
            for (name, kind), sources in self.networks.items()
            for size in [ipaddress.ip_network(name).num_addresses]
        )
        notes = [
            f"{count} more {what} left out: at most {limit} per host"
            for what, limit in (("candidates", MAX_CANDIDATES), ("networks", MAX_NETWORKS), ("skipped", MAX_SKIPPED))
            if (count := self.dropped[what])
        ]
        return Learned(
            self.host,
            tuple(Candidate(address, entry.mac, tuple(entry.sources)) for address, entry in self.candidates.items()),
            networks,
            tuple(self.skipped),
            tuple(notes),
        )


# --- one reader per protocol -------------------------------------------------------------------


def _complete(state: str, mac: str | None) -> bool:
    states = {part.strip().lower() for part in state.split(",")}
    return mac is not None and not states & INCOMPLETE_STATES


def _learn_ssh(learning: _Learning, section: Mapping[str, Any]) -> None:
    neighbours = learning.source("ssh", "neighbors")
    for row in _rows(section, "neighbors"):
        mac = _mac(row.get("mac"))
        if _complete(_text(row, "state"), mac):
            learning.address(_ip(row.get("address")), mac, neighbours)
    interfaces = learning.source("ssh", "interfaces")
    for interface in _rows(section, "interfaces"):
        mac = _mac(interface.get("mac"))
        for row in _rows(interface, "addresses"):
            address = _text(row, "address")
            learning.address(_ip(address), mac, interfaces)
            learning.network(_network(address, row.get("prefixlen")), "interface", interfaces)
    routes = learning.source("ssh", "routes")
    for row in _rows(section, "routes"):
        learning.route(_text(row, "destination"), _text(row, "gateway"), _text(row, "type"), routes)


def _learn_snmp(learning: _Learning, section: Mapping[str, Any]) -> None:
    arp = learning.source("snmp", "arp")
    for row in _rows(section, "arp"):
        mac = _mac(row.get("mac"))
        if mac is not None and _text(row, "type") != "invalid":
            learning.address(_ip(row.get("ipAddress")), mac, arp)
    macs = {_index(row, "index"): _mac(row.get("mac")) for row in _rows(section, "interfaces")}
    own = learning.source("snmp", "ipAddresses")
    for row in _rows(section, "ipAddresses"):
        address = _text(row, "address")
        learning.address(_ip(address), macs.get(_index(row, "ifIndex")), own)
        learning.network(_network(address, row.get("prefixLength")), "interface", own)
    routes = learning.source("snmp", "routes")
    for row in _rows(section, "routes"):
        learning.route(_text(row, "destination"), _text(row, "nextHop"), _text(row, "type"), routes)
    lldp = learning.source("snmp", "lldpNeighbors")
    for neighbour in _rows(section, "lldpNeighbors"):
        addresses = neighbour.get("managementAddresses")
        for address in itertools.islice(addresses if isinstance(addresses, list) else [], MAX_SOURCES):
            learning.address(_ip(address), None, lldp)


def _learn_winrm(learning: _Learning, section: Mapping[str, Any]) -> None:
    neighbours = learning.source("winrm", "neighbors")
    for row in _rows(section, "neighbors"):
        mac = _mac(row.get("mac"))
        if _complete(_text(row, "state"), mac):
            learning.address(_ip(row.get("address")), mac, neighbours)
    own = learning.source("winrm", "ipAddresses")
    for row in _rows(section, "ipAddresses"):
        address = _text(row, "address")
        learning.address(_ip(address), None, own)
        learning.network(_network(address, row.get("prefixLength")), "interface", own)
    adapters = learning.source("winrm", "networkAdapters")  # the only tables before Windows 8 / 2012
    for adapter in _rows(section, "networkAdapters"):
        mac = _mac(adapter.get("mac"))
        for cidr in _strings(adapter, "addresses"):
            learning.address(_ip(cidr.partition("/")[0]), mac, adapters)
            learning.network(_network(cidr) if "/" in cidr else None, "interface", adapters)
        for gateway in _strings(adapter, "gateways"):
            learning.address(_ip(gateway), None, adapters)
    routes = learning.source("winrm", "routes")
    for row in _rows(section, "routes"):
        learning.route(_text(row, "destination"), _text(row, "nextHop"), "", routes)


def _strings(row: Mapping[str, Any], key: str) -> list[str]:
    value = row.get(key)
    return [item for item in value[: MAX_SOURCES * 32] if isinstance(item, str)] if isinstance(value, list) else []


READERS = {"ssh": _learn_ssh, "snmp": _learn_snmp, "winrm": _learn_winrm}


def learn(address: str, inspection: object, *, expand_limit: int = DEFAULT_EXPAND_LIMIT) -> Learned:
    """What the host at ``address`` revealed in ``inspection`` (its ``hosts.inspect`` result)."""
    host = str(_ip(address) or address)
    learning = _Learning(host, expand_limit)
    for protocol, section in _sections(inspection):
        READERS[protocol](learning, section)
    return learning.result()


def expand(network: Network, limit: int = DEFAULT_EXPAND_LIMIT) -> Iterator[str]:
    """The addresses of ``network`` the loop may probe when it holds at most ``limit`` addresses
    (``ipaddress``'s ``hosts()``: an IPv4 network without its network and broadcast addresses, a
    /31 or /32 whole); nothing for a larger one."""
    if network.size > limit:
        return
    for ip in ipaddress.ip_network(network.network).hosts():
        yield str(ip)


# --- identity ----------------------------------------------------------------------------------

PLACEHOLDER_UUIDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "03000200-0400-0500-0006-000700080009",  # boards that left the field at its sample value
    }
)
PLACEHOLDER_SERIALS = frozenset(
    {
        "",
        "0",
        "none",
        "n/a",
        "na",
        "unknown",
        "not specified",
        "not available",
        "default string",
        "to be filled by o.e.m.",
        "system serial number",
        "0123456789",
        "chassis serial number",
    }
)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _uuid(value: str) -> str:
    text = value.strip().strip("{}").lower()
    return text if _UUID.match(text) and text not in PLACEHOLDER_UUIDS else ""


def _hex(value: str, digits: int) -> str:
    text = value.strip().lower()
    return text if re.fullmatch(rf"[0-9a-f]{{{digits}}}", text) and text.strip("0") else ""


def _engine_id(value: str) -> str:
    """An snmpEngineID in hex: 5 to 32 octets (SNMP-FRAMEWORK-MIB), not all zeros or all ones."""
    text = value.strip().lower()
    if not re.fullmatch(r"(?:[0-9a-f]{2}){5,32}", text) or not text.strip("0") or not text.strip("f"):
        return ""
    return text


def _serial(value: str) -> str:
    return value if value.lower() not in PLACEHOLDER_SERIALS else ""


def _own_mac(inspection: Mapping[str, Any]) -> str | None:
    """The MAC of the interface holding the inspected address, as any protocol saw it."""
    address = str(_ip(inspection.get("address")) or "")
    for protocol, section in _sections(inspection):
        if protocol == "ssh":
            for interface in _rows(section, "interfaces"):
                if any(_text(row, "address") == address for row in _rows(interface, "addresses")):
                    return _mac(interface.get("mac"))
        else:
            key = "interfaces" if protocol == "snmp" else "networkAdapters"
            for interface in _rows(section, key):
                if any(cidr.partition("/")[0] == address for cidr in _strings(interface, "addresses")):
                    return _mac(interface.get("mac"))
    return None


def identity_keys(inspection: object, mac: str | None = None) -> list[dict[str, str]]:
    """The host's stable identity keys, strongest first: ``machine-id``, ``smbios-uuid``,
    ``machine-guid``, ``snmp-engine-id``, ``chassis-serial``, then ``mac`` (``mac`` given, else the
    MAC of the interface holding the inspected address). Placeholders (an all-zero UUID, "To be
    filled by O.E.M.") are no keys. Everything was read from the host, nothing written to it."""
    if not isinstance(inspection, Mapping):
        inspection = {}
    sections = dict(_sections(inspection))
    ssh, winrm, snmp = (sections.get(name, {}) for name in ("ssh", "winrm", "snmp"))
    dmi = ssh.get("dmi") if isinstance(ssh.get("dmi"), Mapping) else {}
    candidates = [
        ("machine-id", _hex(_text(ssh, "machine_id"), 32)),
        ("smbios-uuid", _uuid(_text(dmi, "product_uuid"))),
        ("smbios-uuid", _uuid(_text(winrm.get("computerSystemProduct"), "uuid"))),
        ("machine-guid", _uuid(_text(winrm.get("cryptography"), "machineGuid"))),
        ("snmp-engine-id", _engine_id(_text(snmp, "snmpEngineId"))),
        ("chassis-serial", _serial(_text(snmp, "chassisSerial"))),
        ("mac", _mac(mac) or _own_mac(inspection) or ""),
    ]
    keys: list[dict[str, str]] = []
    for kind, value in candidates:
        if value and {"kind": kind, "value": value} not in keys:
            keys.append({"kind": kind, "value": value})
    return keys
