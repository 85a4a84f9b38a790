"""The discovery loop's coordinator: a pure core, events in, decisions out (no I/O, no clock).

One :class:`Discovery` holds a whole discovery's state: the candidates waiting for the next sweep
(each with where it came from), the addresses handled (swept or dropped), the live hosts, the
networks learnt, the round, and the round's hosts still to learn from. Its drivers (the pipeline's
``discover`` actors, ``ksocket discover``) move bytes and call it:

1. :meth:`Discovery.start` with the agent's own sources (gateways, neighbours, connected networks,
   its own addresses) and the seeds;
2. :meth:`Discovery.next_sweep`: the round's addresses, fenced again just before they leave;
3. :meth:`Discovery.swept` with the hosts the engine confirmed: host records, and the round's
   hosts to learn from (a non-answering address seen in a complete neighbour entry counts);
4. :meth:`Discovery.learned`, once per host, with its ``hosts.inspect`` result: its new
   candidates and networks (:func:`~ksocket.collectors.discover.learn.learn`), details and
   network records; the last one of a round opens the next round, or ends the discovery when
   nothing new is pending;
5. :meth:`Discovery.summary` once :attr:`Discovery.done` (with ``noCredential``: per protocol, the
   hosts no credential file served, which the drivers say in one line rather than one per host).

A host is recorded as soon as it is confirmed (its sweep, or the table that names it silent). What
is learnt about it later — its identity keys from its own learn, sources and a MAC from tables read
after its sweep (another host's table naming it; a host's own tables never count as its source) —
goes out as an *update*: the same key, the full current host, its ``version`` one higher. Updates
are made when a round closes, for the hosts that changed in it: at most one per host and round.

Every event names its round and is idempotent: a sweep or a learn applied twice (a message
redelivered after a crash) changes nothing. Every candidate passes the one fence
(:mod:`~ksocket.collectors.discover.fence`) on arrival and again in :meth:`next_sweep`. Bounds:
:data:`MAX_CANDIDATES` addresses accepted in all, :data:`MAX_SWEEP` per round, :data:`MAX_ROUNDS`
rounds, :data:`MAX_HOSTS` live hosts, :data:`MAX_NETWORKS` networks; each one hit leaves a note.
The handled set stops routers that point at each other. The state is JSON (:meth:`to_json`), so it
can live in Redis between messages.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ksocket.collectors.base import Document
from ksocket.collectors.discover.fence import Fence, canonical
from ksocket.collectors.discover.learn import MAX_SOURCES, Network, expand, identity_keys, learn
from ksocket.collectors.discover.params import Request
from ksocket.protocol import ErrorCode

MAX_CANDIDATES: Final = 262_144
MAX_SWEEP: Final = 65_536  # the engine's most addresses in one scan
MAX_ROUNDS: Final = 32
MAX_HOSTS: Final = 16_384
MAX_NETWORKS: Final = 16_384
NEIGHBOUR_EVIDENCE: Final = "neighbour-table"
NEIGHBOUR_TABLES: Final = frozenset({"neighbors", "arp"})  # learn.py's names of complete-entry tables
LOGIN_PROTOCOLS: Final = ("ssh", "winrm", "snmp")
NO_CREDENTIAL: Final = str(ErrorCode.NO_CREDENTIAL)


@dataclass(frozen=True)
class Origin:
    """A candidate from the agent's own tables or the seeds: ``source`` is ``seed``, ``gateway``,
    ``neighbour`` or ``connected``."""

    address: str
    source: str
    mac: str | None = None


@dataclass(frozen=True)
class Record:
    """One record for the hub: ``kind`` ``host``, ``network`` or ``details``; ``key`` names what it is
    about (unique per discovery); ``version`` counts a host's updates (1: its first record)."""

    kind: str
    key: str
    document: Document
    version: int = 1

    @property
    def journal_key(self) -> str:
        """The key the operation records it under: each version of a key once."""
        return self.key if self.version == 1 else f"{self.key}#{self.version}"


@dataclass(frozen=True)
class Sweep:
    round: int
    addresses: tuple[str, ...]


@dataclass
class Discovery:
    """The coordinator's state; see the module docstring for the events."""

    fence: Fence
    expand_limit: int
    details: bool
    round: int = 0
    phase: str = "sweep"  # "sweep", "learn" or "done"
    pending: dict[str, Document] = field(default_factory=dict)
    """address -> {"mac", "learnedFrom": [...]}: waiting for the next sweep."""
    handled: set[str] = field(default_factory=set)
    hosts: dict[str, Document] = field(default_factory=dict)
    networks: dict[str, Document] = field(default_factory=dict)
    learning: list[str] = field(default_factory=list)
    learned_now: set[str] = field(default_factory=set)
    dropped: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    """Hosts recorded already whose document changed since: updated when the round closes."""

    # --- events -------------------------------------------------------------------------------

    @classmethod
    def start(
        cls, request: Request, own: Iterable[str], origins: Iterable[Origin], connected: Iterable[str]
    ) -> Discovery:
        """A discovery of ``request`` from an agent with addresses ``own``, candidates ``origins``
        (its gateways and neighbours) and ``connected`` networks (CIDRs)."""
        connected = list(connected)
        fence = Fence.of(request.allow, request.deny, own, [*connected, *request.seed_networks])
        discovery = cls(fence, request.expand_limit, request.details)
        for origin in origins:
            discovery._candidate(origin.address, origin.mac, {"source": origin.source})  # no hosts yet
        for network in connected:
            discovery._network(network, {"type": "connected", "learnedFrom": [{"source": "connected"}]})
        for seed in request.seeds:
            discovery._candidate(seed, None, {"source": "seed"})
        return discovery

    def next_sweep(self) -> Sweep | None:
        """The round's addresses to sweep (fenced once more), or None outside a sweep phase."""
        if self.phase != "sweep":
            return None
        addresses = [address for address in self.pending if self.fence.refusal(address, self.handled) is None]
        return Sweep(self.round, tuple(addresses[:MAX_SWEEP]))

    def swept(self, sweep: Sweep, found: Iterable[Mapping[str, Any]]) -> list[Record]:
        """The engine's hosts (``networks.scan`` host documents) for ``sweep``: host records; the round
        then waits for :meth:`learned` of each live host. Ignored unless it is this round's sweep."""
        if self.phase != "sweep" or sweep.round != self.round:
            return []
        swept = set(sweep.addresses)
        answered = {str(host.get("address")): host for host in found if host.get("address") in swept}
        records = []
        for address in sweep.addresses:
            entry = self.pending.pop(address, None)
            self.handled.add(address)
            if entry is None:
                continue
            host = answered.get(address)
            if host is None and not _in_neighbour_table(entry):
                continue
            record = self._host(address, entry, host)
            if record is not None:
                records.append(record)
        self._dropped_from_pending()
        self._count("swept", len(sweep.addresses))
        self.phase = "learn"
        self.learning = [record.document["address"] for record in records if record.document["address"] in answered]
        self.learned_now = set()
        return records + self._advance_when_learnt()

    def learned(self, round: int, address: str, inspection: Mapping[str, Any]) -> list[Record]:
        """What host ``address`` revealed (its ``hosts.inspect`` result) in ``round``: network and
        details records. Ignored unless the host waits to be learnt from in this round."""
        if self.phase != "learn" or round != self.round or address not in self.learning:
            return []
        if address in self.learned_now:
            return []
        self.learned_now.add(address)
        for protocol in unmatched(inspection):
            self._count(f"{NO_CREDENTIAL}:{protocol}", 1)
        found = learn(address, inspection, expand_limit=self.expand_limit)
        records: list[Record] = []
        for network in found.networks:
            records.extend(self._network(network.network, self._learnt_network(network)))
        for candidate in found.candidates:
            for source in candidate.sources:
                records.extend(self._candidate(candidate.address, candidate.mac, source.as_document()))
        if answered_login(inspection):
            keys = self._identify(address, inspection)
            if self.details:
                self._count("detailed", 1)
                document = {"address": address, "identity": keys, "inspection": dict(inspection)}
                records.append(Record("details", f"details:{address}", document))
        self.notes.extend(note for note in found.notes if note not in self.notes)
        return records + self._advance_when_learnt()

    # --- reading it ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def waiting(self) -> list[str]:
        """The round's hosts not learnt from yet (the messages a driver must have sent)."""
        return (
            [address for address in self.learning if address not in self.learned_now] if self.phase == "learn" else []
        )

    def summary(self) -> Document:
        return {
            "rounds": self.round + 1,
            "hosts": len(self.hosts),
            "networks": len(self.networks),
            "swept": self.counts.get("swept", 0),
            "detailed": self.counts.get("detailed", 0),
            "learnedPerSource": self._per_source(),
            "noCredential": {
                protocol: count
                for protocol in LOGIN_PROTOCOLS
                if (count := self.counts.get(f"{NO_CREDENTIAL}:{protocol}"))
            },
            "dropped": dict(sorted(self.dropped.items())),
            "notes": list(self.notes),
        }

    # --- inside -------------------------------------------------------------------------------

    def _candidate(self, address: str, mac: str | None, origin: Document) -> list[Record]:
        """Adds a candidate; a host record when it names a silent address already swept from a
        complete neighbour entry (its only evidence)."""
        text = canonical(address)
        if text is not None and text in self.pending:
            entry = self.pending[text]
            entry["mac"] = entry["mac"] or mac
            if origin not in entry["learnedFrom"] and len(entry["learnedFrom"]) < MAX_SOURCES:
                entry["learnedFrom"].append(origin)
            return []
        if text is not None and text in self.hosts:
            self._named_again(text, mac, origin)
            return []
        reason = self.fence.refusal(address, self.handled)
        entry = {"mac": mac, "learnedFrom": [origin]}
        if reason == "handled" and _in_neighbour_table(entry):
            record = self._host(str(text), entry, None)
            return [record] if record is not None else []
        if reason is not None:
            self._drop(reason)
        elif len(self.pending) + len(self.handled) >= MAX_CANDIDATES:
            self._drop("capped")
            self._note(f"more than {MAX_CANDIDATES} candidates: the others are left out")
        else:
            self.pending[str(text)] = entry
        return []

    def _network(self, cidr: str, document: Document) -> list[Record]:
        if cidr in self.networks:
            return []
        if len(self.networks) >= MAX_NETWORKS:
            self._note(f"more than {MAX_NETWORKS} networks: the others are left out")
            return []
        network = Network(cidr, "", _size(cidr), False, ())
        expandable = network.size <= self.expand_limit
        self.networks[cidr] = document = {"network": cidr, "size": network.size, "expanded": expandable, **document}
        self.fence = self.fence.with_subnets([cidr])
        records = [Record("network", f"network:{cidr}", document)]
        origin = {"source": "connected", "network": cidr} if document["type"] == "connected" else {"network": cidr}
        if expandable:
            for address in expand(network, self.expand_limit):
                records.extend(self._candidate(address, None, origin))
        return records

    @staticmethod
    def _learnt_network(network: Network) -> Document:
        return {"type": network.kind, "learnedFrom": [source.as_document() for source in network.sources]}

    def _named_again(self, address: str, mac: str | None, origin: Document) -> None:
        """A table names a host recorded already: its MAC and the source join it (not a host's own table)."""
        host = self.hosts[address]  # its fields are replaced, never changed in place: records sent keep theirs
        if mac is not None and host["mac"] is None:
            host["mac"] = mac
            host["identity"] = [key for key in host["identity"] if key["kind"] != "mac"] + identity_keys({}, mac)
            self.changed.add(address)
        sources = host["learnedFrom"]
        if origin.get("host") != address and origin not in sources and len(sources) < MAX_SOURCES:
            host["learnedFrom"] = [*sources, origin]
            self.changed.add(address)

    def _identify(self, address: str, inspection: Mapping[str, Any]) -> list[dict[str, str]]:
        """The identity keys a host's login revealed, now on its host document too."""
        host = self.hosts.get(address, {})
        keys = identity_keys(inspection, host.get("mac"))
        if address in self.hosts and host["identity"] != keys:
            host["identity"] = keys
            self.changed.add(address)
        return keys

    def _updates(self) -> list[Record]:
        """The changed hosts' documents as they are now, each one version higher."""
        records = []
        for address in sorted(self.changed):
            host = self.hosts[address]
            host["version"] = host.get("version", 1) + 1
            records.append(Record("host", f"host:{address}", dict(host), host["version"]))
        self.changed = set()
        return records

    def _host(self, address: str, entry: Document, host: Mapping[str, Any] | None) -> Record | None:
        if len(self.hosts) >= MAX_HOSTS:
            self._note(f"more than {MAX_HOSTS} live hosts: the others are not reported")
            return None
        mac = (host or {}).get("mac") or entry.get("mac")
        document = {
            "address": address,
            "mac": mac,
            "evidence": list((host or {}).get("evidence") or [NEIGHBOUR_EVIDENCE]),
            "learnedFrom": entry["learnedFrom"],
            "identity": identity_keys({}, mac),  # the stronger ones come with its learn, as an update
            "round": self.round,
            "version": 1,
        }
        self.hosts[address] = document
        return Record("host", f"host:{address}", dict(document))

    def _dropped_from_pending(self) -> None:
        """Pending addresses the fence now refuses (a subnet edge learnt after they came) are dropped."""
        refused = {address: self.fence.refusal(address, self.handled) for address in self.pending}
        for address, reason in refused.items():
            if reason is not None:
                del self.pending[address]
                self.handled.add(address)
                self._drop(reason)

    def _advance_when_learnt(self) -> list[Record]:
        """Closes the round once every host of it was learnt from: the round's host updates."""
        if self.waiting():
            return []
        if not self.pending:
            self.phase = "done"
        elif self.round + 1 >= MAX_ROUNDS:
            self._note(f"stopped after {MAX_ROUNDS} rounds with {len(self.pending)} candidates left")
            self.phase = "done"
        else:
            self.round += 1
            self.phase = "sweep"
        self.learning, self.learned_now = [], set()
        return self._updates()

    def _per_source(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for host in self.hosts.values():
            for origin in host["learnedFrom"]:
                name = origin.get("source") or origin.get("table") or ("network" if "network" in origin else "?")
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _count(self, what: str, amount: int) -> None:
        self.counts[what] = self.counts.get(what, 0) + amount

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    # --- as JSON ------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "fence": {
                    "allow": [str(cidr) for cidr in self.fence.allow.iter_cidrs()],
                    "deny": [str(cidr) for cidr in self.fence.deny.iter_cidrs()],
                    "own": sorted(self.fence.own),
                    "edges": sorted(self.fence.edges),
                },
                "expandLimit": self.expand_limit,
                "details": self.details,
                "round": self.round,
                "phase": self.phase,
                "pending": self.pending,
                "handled": sorted(self.handled),
                "hosts": self.hosts,
                "networks": self.networks,
                "learning": self.learning,
                "learnedNow": sorted(self.learned_now),
                "dropped": self.dropped,
                "counts": self.counts,
                "notes": self.notes,
                "changed": sorted(self.changed),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Discovery:
        state = json.loads(text)
        fence = state["fence"]
        return cls(
            dataclasses.replace(Fence.of(fence["allow"], fence["deny"], fence["own"]), edges=frozenset(fence["edges"])),
            state["expandLimit"],
            state["details"],
            state["round"],
            state["phase"],
            state["pending"],
            set(state["handled"]),
            state["hosts"],
            state["networks"],
            state["learning"],
            set(state["learnedNow"]),
            state["dropped"],
            state["counts"],
            state["notes"],
            set(state.get("changed", ())),  # a state stored by a version without updates has none
        )


def answered_login(inspection: Mapping[str, Any]) -> bool:
    """True when a protocol of the inspection logged in (its section is not an error)."""
    return any(
        isinstance(section := inspection.get(protocol), Mapping) and "error" not in section
        for protocol in LOGIN_PROTOCOLS
    )


def unmatched(inspection: Mapping[str, Any]) -> list[str]:
    """The protocols of the inspection that no credential file served."""
    return [
        protocol
        for protocol in LOGIN_PROTOCOLS
        if isinstance(section := inspection.get(protocol), Mapping)
        and isinstance(error := section.get("error"), Mapping)
        and error.get("code") == NO_CREDENTIAL
    ]


def _in_neighbour_table(entry: Mapping[str, Any]) -> bool:
    """True when a complete neighbour entry (the agent's, or a live host's ARP table) names the address."""
    return entry.get("mac") is not None and any(
        origin.get("source") == "neighbour" or origin.get("table") in NEIGHBOUR_TABLES
        for origin in entry["learnedFrom"]
    )


def _size(cidr: str) -> int:
    return ipaddress.ip_network(cidr, strict=False).num_addresses


__all__ = ["Discovery", "Origin", "Record", "Sweep", "answered_login"]
