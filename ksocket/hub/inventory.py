"""The hub's inventory, as a pure core: machines (nodes) across discoveries, snapshots, their differences.

No SQLite, no clock: :class:`Inventory` is fed one discovery at a time (:meth:`Inventory.apply`,
with the discovery's :class:`ScanRecord` list and its :class:`Discovery` header) and returns an
:class:`Applied`, what changed, for :mod:`ksocket.hub.inventorystore` to write.

Matching
    A discovery's ``host`` and ``details`` records of one address are one :class:`Sighting`. Its
    identity keys (:data:`KEY_ORDER`, strongest first: machine-id, SMBIOS UUID, MachineGuid,
    snmpEngineID, chassis serial, MAC) find its node: the strongest key that names a node wins. A
    MAC is weak: when it names a node whose stronger keys contradict the sighting's (a MAC moved to
    another machine, a re-used virtual MAC), it is taken from that node, not followed. Two nodes
    that the sighting's keys both name are one machine: they merge into the older (lower) id and the
    :class:`Merge` is recorded. A sighting with no key at all (a routed host seen by its address
    alone) is the node that last held the address on the same slot, else a new node.
Fields
    Each node keeps its keys, addresses, MACs, open ports (as the last discovery saw them), names,
    OS, device kind and vendor (from the latest details of each protocol, :func:`classify`), first
    and last seen. A field that a discovery changes is a :class:`Change` (old, new).
Snapshots
    Every discovery is a :class:`Snapshot`: its header and the fields of each node it saw
    (:class:`Member`). :func:`diff` compares two: nodes new, gone, back (seen before the first one,
    not in it) and changed (field, old, new). The topology the discovery learnt is its edges
    (:class:`Edge`: host A's table revealed host or network B; LLDP neighbours).
Idempotence
    Records are taken once per (slot, agent, seq), and a record updated under its ``key`` (a host whose
    learn or a later table added keys or sources) in its newest version alone; applying a discovery
    again, or after a resumed agent re-sent records, gives the same fields, hence no change, no merge
    and the same snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

KEY_ORDER: Final = ("machine-id", "smbios-uuid", "machine-guid", "snmp-engine-id", "chassis-serial", "mac")
"""Identity key kinds, strongest first."""
WEAK_KEYS: Final = frozenset({"mac"})
PROTOCOLS: Final = ("ssh", "winrm", "snmp")
FIELDS: Final = ("addresses", "macs", "names", "ports", "os", "os_family", "kind", "vendor")
"""The fields of a node that snapshots keep and diffs compare."""

UNKNOWN: Final = "unknown"

ENTERPRISES: Final[Mapping[int, tuple[str, str]]] = {
    9: ("Cisco", "router"),
    11: ("HP", "switch"),
    43: ("3Com", "switch"),
    311: ("Microsoft", "host"),
    674: ("Dell", "host"),
    1916: ("Extreme", "switch"),
    2011: ("Huawei", "router"),
    2636: ("Juniper", "router"),
    4526: ("Netgear", "switch"),
    6876: ("VMware", "hypervisor"),
    8072: ("Net-SNMP", "host"),
    11863: ("TP-Link", "switch"),
    12356: ("Fortinet", "firewall"),
    14988: ("MikroTik", "router"),
    25461: ("Palo Alto Networks", "firewall"),
    30065: ("Arista", "switch"),
    41112: ("Ubiquiti", "router"),
}
"""SNMP enterprise number (sysObjectID 1.3.6.1.4.1.N…) -> (vendor, the kind its devices usually are)."""
_ENTERPRISE_PREFIX: Final = "1.3.6.1.4.1."

PRINTER_PORTS: Final = frozenset({515, 631, 9100})
WINDOWS_PORTS: Final = frozenset({135, 445, 3389, 5985, 5986})


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ScanRecord:
    """One record of a discovery as the hub stored it (the records table's row)."""

    operation_id: str
    slot: str
    agent: str
    seq: int
    received: float
    kind: str
    document: Mapping[str, Any]


@dataclass(frozen=True)
class Discovery:
    """A discovery operation's header: which operation, slot and agent, its params, its summary, when it ended."""

    operation_id: str
    slot: str
    agent: str
    params: Mapping[str, Any]
    summary: Mapping[str, Any]
    taken: float

    @property
    def network(self) -> str:
        """What the discovery looked at: its seeds, or ``connected`` (the agent's own networks)."""
        seeds = self.params.get("seeds")
        if isinstance(seeds, list) and seeds:
            return ",".join(sorted(str(seed) for seed in seeds))
        return "connected"


Key = tuple[str, str]
"""(kind, value) of an identity key."""


def key_order(key: Key) -> tuple[int, str]:
    """Sorts keys strongest first (a kind this hub does not know last)."""
    return (KEY_ORDER.index(key[0]) if key[0] in KEY_ORDER else len(KEY_ORDER), key[1])


# --------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Classification:
    kind: str
    vendor: str
    os_family: str


def _enterprise(object_id: object) -> int | None:
    text = str(object_id or "").lstrip(".")
    if not text.startswith(_ENTERPRISE_PREFIX):
        return None
    number = text[len(_ENTERPRISE_PREFIX) :].split(".", 1)[0]
    return int(number) if number.isdigit() else None


def _by_services(services: object) -> str | None:
    """sysServices (RFC 1213): 2 datalink (bridge), 4 internet (router), 8 end-to-end, 64 applications."""
    if not isinstance(services, int) or services <= 0:
        return None
    if services & 4 and not services & 64:
        return "router"
    if services & 2 and not services & 4:
        return "switch"
    if services & (8 | 64):
        return "host"
    return None


def _by_ports(ports: Iterable[int], os_family: str) -> str | None:
    open_ports = set(ports)
    if open_ports & PRINTER_PORTS and not os_family:
        return "printer"
    if os_family or open_ports & WINDOWS_PORTS or 22 in open_ports:
        return "host"
    return None


def classify(details: Mapping[str, Mapping[str, Any]], ports: Iterable[int] = ()) -> Classification:
    """The device kind (router, switch, firewall, printer, hypervisor, host or unknown), vendor and OS family.

    OS family from the SSH or WinRM details (a machine one logs in to is a host); then SNMP's
    sysServices bits, then its sysObjectID's enterprise; then the open ports.
    """
    ssh_os = _section(details.get("ssh"), "os")
    os_family = str(ssh_os.get("family") or "") or ("windows" if details.get("winrm") else "")
    system = _section(details.get("snmp"), "system")
    vendor, enterprise_kind = ENTERPRISES.get(_enterprise(system.get("objectId")) or -1, ("", None))
    kind = (
        ("host" if os_family else None)
        or (enterprise_kind if enterprise_kind in ("firewall", "hypervisor") else None)
        or _by_services(system.get("services"))
        or enterprise_kind
        or _by_ports(ports, os_family)
        or UNKNOWN
    )
    return Classification(kind=kind, vendor=vendor, os_family=os_family)


def _section(document: object, name: str) -> Mapping[str, Any]:
    value = document.get(name) if isinstance(document, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _os_name(details: Mapping[str, Mapping[str, Any]]) -> str:
    ssh_os = _section(details.get("ssh"), "os")
    if ssh_os.get("pretty_name") or ssh_os.get("name"):
        return str(ssh_os.get("pretty_name") or ssh_os.get("name"))
    winrm_os = _section(details.get("winrm"), "os")
    if winrm_os.get("name"):
        return " ".join(str(part) for part in (winrm_os["name"], winrm_os.get("version") or "") if part)
    description = str(_section(details.get("snmp"), "system").get("description") or "")
    return description.splitlines()[0] if description else ""


def _names(details: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    computer = _section(details.get("winrm"), "computerSystem")
    candidates = (
        _section(details, "ssh").get("hostname"),
        computer.get("dnsHostName"),
        computer.get("name"),
        _section(details.get("snmp"), "system").get("name"),
    )
    return tuple(sorted({str(name) for name in candidates if isinstance(name, str) and name}))


# --------------------------------------------------------------------------- sightings


@dataclass
class Sighting:
    """What one discovery saw at one address: its host and details records together."""

    address: str
    mac: str = ""
    keys: list[Key] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)
    details: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def add_keys(self, identity: object) -> None:
        for item in identity if isinstance(identity, list) else []:
            kind, value = (item.get("kind"), item.get("value")) if isinstance(item, Mapping) else (None, None)
            if kind in KEY_ORDER and isinstance(value, str) and value and (kind, value.lower()) not in self.keys:
                self.keys.append((kind, value.lower()))
        self.keys.sort(key=lambda key: KEY_ORDER.index(key[0]))


def _ports(evidence: object) -> set[int]:
    items = evidence if isinstance(evidence, list) else []
    return {int(item[4:]) for item in items if isinstance(item, str) and item.startswith("tcp/") and item[4:].isdigit()}


def sightings(records: Iterable[ScanRecord]) -> list[Sighting]:
    """The discovery's ``host`` and ``details`` records grouped by address, in address order."""
    by_address: dict[str, Sighting] = {}
    for record in records:
        address = record.document.get("address")
        if record.kind not in ("host", "details") or not isinstance(address, str) or not address:
            continue
        sighting = by_address.setdefault(address, Sighting(address))
        sighting.add_keys(record.document.get("identity"))
        if record.kind == "host":
            sighting.mac = str(record.document.get("mac") or "").lower()
            sighting.ports |= _ports(record.document.get("evidence"))
            continue
        inspection = record.document.get("inspection")
        for protocol in PROTOCOLS:
            section = inspection.get(protocol) if isinstance(inspection, Mapping) else None
            if isinstance(section, Mapping) and "error" not in section:
                sighting.details[protocol] = section
    return [by_address[address] for address in sorted(by_address)]


def unique(records: Iterable[ScanRecord]) -> list[ScanRecord]:
    """``records`` taken once per (slot, agent, seq), in seq order: a resumed agent sends some again. Of the
    records of one operation with one ``key`` (a host's record and its updates), the newest alone."""
    seen: dict[tuple[str, str, int], ScanRecord] = {}
    for record in records:
        seen.setdefault((record.slot, record.agent, record.seq), record)
    newest: dict[tuple[object, ...], ScanRecord] = {}
    for position, record in sorted(seen.items(), key=lambda item: item[0]):
        key = record.document.get("key")
        newest[(record.operation_id, key) if isinstance(key, str) else position] = record
    return sorted(newest.values(), key=lambda record: (record.slot, record.agent, record.seq))


# --------------------------------------------------------------------------- topology


@dataclass(frozen=True, order=True)
class Edge:
    """``source``'s ``table`` (over ``protocol``) revealed ``target``: a host, a network or an LLDP neighbour."""

    source: str
    target: str
    kind: str
    protocol: str
    table: str


def _learnt(source_kind: str, target: str, learned_from: object) -> Iterable[Edge]:
    for origin in learned_from if isinstance(learned_from, list) else []:
        if isinstance(origin, Mapping) and isinstance(origin.get("host"), str):
            yield Edge(
                origin["host"], target, source_kind, str(origin.get("protocol", "")), str(origin.get("table", ""))
            )


def _lldp(address: str, inspection: object) -> Iterable[Edge]:
    neighbours = _section(inspection, "snmp").get("lldpNeighbors")
    for row in neighbours if isinstance(neighbours, list) else []:
        if not isinstance(row, Mapping):
            continue
        managed = row.get("managementAddresses")
        target = row.get("systemName") or (
            managed[0] if isinstance(managed, list) and managed else row.get("chassisId")
        )
        if target:
            yield Edge(address, str(target), "lldp", "snmp", str(row.get("localPortId") or row.get("localPort") or ""))


def edges(records: Iterable[ScanRecord]) -> list[Edge]:
    """The topology a discovery learnt, sorted, each edge once."""
    found: set[Edge] = set()
    for record in records:
        document = record.document
        if record.kind == "host" and isinstance(document.get("address"), str):
            found.update(_learnt("host", document["address"], document.get("learnedFrom")))
        elif record.kind == "network" and isinstance(document.get("network"), str):
            found.update(_learnt("network", document["network"], document.get("learnedFrom")))
        elif record.kind == "details" and isinstance(document.get("address"), str):
            found.update(_lldp(document["address"], document.get("inspection")))
    return sorted(found)


# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Fields:
    """A node's fields as a snapshot keeps them (lists sorted)."""

    addresses: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    os: str = ""
    os_family: str = ""
    kind: str = UNKNOWN
    vendor: str = ""

    def as_document(self) -> dict[str, Any]:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in self._items()}

    def _items(self) -> Iterable[tuple[str, Any]]:
        return ((name, getattr(self, name)) for name in FIELDS)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Fields:
        return cls(
            addresses=tuple(document.get("addresses", ())),
            macs=tuple(document.get("macs", ())),
            names=tuple(document.get("names", ())),
            ports=tuple(document.get("ports", ())),
            os=str(document.get("os", "")),
            os_family=str(document.get("os_family", "")),
            kind=str(document.get("kind", UNKNOWN)),
            vendor=str(document.get("vendor", "")),
        )


@dataclass
class Node:
    id: int
    first_seen: float
    last_seen: float
    keys: list[Key] = field(default_factory=list)
    fields: Fields = field(default_factory=Fields)
    details: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    """The latest section of each protocol that answered."""


@dataclass(frozen=True)
class Change:
    node: int
    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Merge:
    """Node ``merged`` was found to be node ``kept`` (older) by ``key``."""

    kept: int
    merged: int
    key: Key


@dataclass(frozen=True)
class Snapshot:
    discovery: Discovery
    members: Mapping[int, Fields]
    edges: Sequence[Edge]


@dataclass
class Applied:
    """What one :meth:`Inventory.apply` changed: the store writes exactly this."""

    snapshot: Snapshot
    nodes: list[Node]
    """The nodes the discovery saw (merged ones: their keepers), as they are now. A node it did not see
    may have lost a key to one of these: the key is written with its new holder."""
    removed: list[int]
    """Nodes merged into others (each has its :class:`Merge`)."""
    changes: list[Change]
    merges: list[Merge]


class Inventory:
    """Nodes by id with their key and address indexes; fed one discovery at a time."""

    def __init__(
        self, nodes: Iterable[Node] = (), addresses: Mapping[tuple[str, str], int] | None = None, next_id: int = 1
    ) -> None:
        """``next_id``: above every id ever given, merged ones included (an id is never given twice)."""
        self.nodes: dict[int, Node] = {}
        self.key_index: dict[Key, int] = {}
        self.address_index: dict[tuple[str, str], int] = dict(addresses or {})
        """(slot, address) -> the node that last held it."""
        for node in nodes:
            self.nodes[node.id] = node
            self.key_index.update((key, node.id) for key in node.keys)
        self.next_id = max(next_id, max(self.nodes, default=0) + 1)

    def apply(self, discovery: Discovery, records: Iterable[ScanRecord]) -> Applied:
        """Takes one discovery's records (all of them so far; a repeated seq counts once)."""
        taken = unique(record for record in records if record.operation_id == discovery.operation_id)
        touched: dict[int, list[Sighting]] = {}
        merges: list[Merge] = []
        for sighting in sightings(taken):
            node_id = self._resolve(discovery, sighting, merges)
            touched.setdefault(node_id, []).append(sighting)
        by_node: dict[int, list[Sighting]] = {}
        for node_id, seen in touched.items():
            by_node.setdefault(self._kept(node_id, merges), []).extend(seen)
        changes: list[Change] = []
        members: dict[int, Fields] = {}
        for node_id, seen in sorted(by_node.items()):
            changes.extend(self._observe(self.nodes[node_id], seen, discovery.taken))
            members[node_id] = self.nodes[node_id].fields
        return Applied(
            snapshot=Snapshot(discovery, members, edges(taken)),
            nodes=[self.nodes[node_id] for node_id in sorted(by_node)],
            removed=sorted(merge.merged for merge in merges),
            changes=changes,
            merges=merges,
        )

    # ----------------------------------------------------------------------- matching

    def _resolve(self, discovery: Discovery, sighting: Sighting, merges: list[Merge]) -> int:
        node_id: int | None = None
        for key in sighting.keys:
            candidate = self.key_index.get(key)
            if candidate is None or candidate == node_id or self._moved(key, candidate, sighting.keys):
                continue
            node_id = candidate if node_id is None else self._merge(node_id, candidate, key, merges)
        if node_id is None and not sighting.keys:
            node_id = self.address_index.get((discovery.slot, sighting.address))
        if node_id is None or node_id not in self.nodes:
            node_id = self._new(discovery.taken)
        for key in sighting.keys:
            self._claim(key, node_id)
        self.address_index[(discovery.slot, sighting.address)] = node_id
        return node_id

    def _moved(self, key: Key, node_id: int, keys: Sequence[Key]) -> bool:
        """A weak key naming a node that the sighting's stronger keys say is another machine."""
        if key[0] not in WEAK_KEYS:
            return False
        held = self.nodes[node_id].keys
        for kind, value in keys:
            if kind not in WEAK_KEYS and (kind, value) not in held and any(k == kind for k, _ in held):
                return True
        return False

    def _claim(self, key: Key, node_id: int) -> None:
        holder = self.key_index.get(key)
        if holder == node_id:
            return
        if holder is not None:
            self.nodes[holder].keys.remove(key)
        self.key_index[key] = node_id
        self.nodes[node_id].keys.append(key)
        self.nodes[node_id].keys.sort(key=key_order)

    def _merge(self, first: int, second: int, key: Key, merges: list[Merge]) -> int:
        kept, merged = sorted((first, second))
        keeper, gone = self.nodes[kept], self.nodes.pop(merged)
        for held in gone.keys:
            self.key_index[held] = kept
        keeper.keys = sorted(set(keeper.keys) | set(gone.keys), key=key_order)
        newer, older = (gone, keeper) if gone.last_seen > keeper.last_seen else (keeper, gone)
        keeper.details = {**older.details, **newer.details}
        keeper.first_seen = min(keeper.first_seen, gone.first_seen)
        keeper.last_seen = max(keeper.last_seen, gone.last_seen)
        for address, holder in self.address_index.items():
            if holder == merged:
                self.address_index[address] = kept
        merges.append(Merge(kept=kept, merged=merged, key=key))
        return kept

    @staticmethod
    def _kept(node_id: int, merges: Sequence[Merge]) -> int:
        for merge in merges:
            if merge.merged == node_id:
                node_id = merge.kept
        return node_id

    def _new(self, when: float) -> int:
        node = Node(id=self.next_id, first_seen=when, last_seen=when)
        self.nodes[node.id] = node
        self.next_id += 1
        return node.id

    # ----------------------------------------------------------------------- fields

    def _observe(self, node: Node, seen: Sequence[Sighting], when: float) -> list[Change]:
        """Updates ``node`` from this discovery's sightings of it; the changes of fields it had before."""
        before = node.fields
        for sighting in seen:
            node.details.update(sighting.details)
        ports = tuple(sorted({port for sighting in seen for port in sighting.ports}))
        macs = tuple(sorted({sighting.mac for sighting in seen if sighting.mac}))
        classified = classify(node.details, ports)
        node.fields = Fields(
            addresses=tuple(sorted({sighting.address for sighting in seen})) or before.addresses,
            macs=macs or before.macs,
            names=_names(node.details) or before.names,
            ports=ports,
            os=_os_name(node.details) or before.os,
            os_family=classified.os_family or before.os_family,
            kind=classified.kind,
            vendor=classified.vendor or before.vendor,
        )
        node.first_seen = min(node.first_seen, when)
        node.last_seen = max(node.last_seen, when)
        # a node this discovery created had no fields to change
        return field_changes(node.id, before, node.fields) if before.addresses else []


def field_changes(node_id: int, old: Fields, new: Fields) -> list[Change]:
    """The fields that differ between ``old`` and ``new``, in :data:`FIELDS` order."""
    changes = []
    for name in FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            changes.append(Change(node_id, name, _plain(before), _plain(after)))
    return changes


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class Diff:
    """From snapshot A to snapshot B of the same network."""

    new: list[int]
    """In B, in no snapshot of the network before B."""
    gone: list[int]
    """In A, not in B."""
    back: list[int]
    """In B, not in A, but in an earlier snapshot."""
    changed: list[Change]
    """In both, with fields that differ (A's value, B's value)."""
    fields: Mapping[int, Fields]
    """The fields of each new and back node in B, of each gone node in A."""


def diff(first: Mapping[int, Fields], second: Mapping[int, Fields], seen_before: Iterable[int]) -> Diff:
    """``first`` and ``second``: the members of A and B; ``seen_before``: the nodes of the network's
    snapshots before B (A's among them)."""
    earlier = set(seen_before)
    arrived = sorted(second.keys() - first.keys())
    gone = sorted(first.keys() - second.keys())
    changed: list[Change] = []
    for node_id in sorted(first.keys() & second.keys()):
        if first[node_id] != second[node_id]:
            changed.extend(field_changes(node_id, first[node_id], second[node_id]))
    return Diff(
        new=[node_id for node_id in arrived if node_id not in earlier],
        gone=gone,
        back=[node_id for node_id in arrived if node_id in earlier],
        changed=changed,
        fields={**{node_id: second[node_id] for node_id in arrived}, **{node_id: first[node_id] for node_id in gone}},
    )
