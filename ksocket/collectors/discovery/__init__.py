"""``networks.scan`` in ``intranet`` mode: which hosts answer on the networks around the agent.

``collect(params, context)`` with params (all optional but the scan needs somewhere to look):

=========== ===================================================================================
``targets``  CIDRs, addresses, ranges (``a.b.c.d-e.f.g.h``, ``a.b.c.d-N``), globs, IPv6 addresses,
             prefixes and ranges; default: the IPv4 on-link networks of the agent's non-loopback
             interfaces. At most 65,536 addresses.
``exclude``  the same forms, taken out of ``targets``
``methods``  any of ``arp``, ``icmp``, ``tcp`` (default all three)
``ports``    TCP ports of the SYN probes (default 22, 80, 443, 3389, 5985, 135, 139, 445)
``rate``     packets per second, every probe and retry counted (default 1000)
``timeout``  the longest wait for one reply, seconds (default 1.0; the RTT estimate waits less)
``dns``      reverse DNS names of the hosts found, from the system resolver (default true)
=========== ===================================================================================

Each target goes where the kernel sends it (``ip route get``: policy rules and every table): on-link
targets behind a link layer get ARP requests (IPv6: a Neighbor Solicitation, and each link one echo
to all nodes), and the hosts that answer get the ICMP echo and TCP SYN probes too (for evidence and
open ports); targets behind a gateway or a link without a link layer get ICMP echo and TCP SYN
probes, sent through the kernel's own route. A host is up only on a reply from it that answers one
of our probes; its record names its family (``ipv4``/``ipv6``). Each path (an interface for ARP, a
gateway for routed probes) is sent no more than it carries (a congestion window, see :mod:`.timing`).
An interface that cannot be opened or fails during the scan ends only its own targets: they are
counted in ``skipped`` as ``interface-failed``, and ``stats.failedInterfaces`` gives the interface
and why (when none can be opened, the scan fails).

The modules: :mod:`.targets` (parsing, lazy expansion), :mod:`.routes` (interfaces and routes),
:mod:`.kernelroute` (the kernel's route to one address),
:mod:`.frames` (dpkt, no I/O), :mod:`.timing` (pacing, congestion windows, RTT, retries),
:mod:`.scheduler` (what to send next and when, no I/O), :mod:`.matcher` (which replies answer our
probes, no I/O), :mod:`.engine` (the pypcap loop around those two), :mod:`.vendor` (OUI registry).
"""

from __future__ import annotations

import concurrent.futures
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ksocket.collectors.base import Context, Document, InvalidParams
from ksocket.collectors.discovery import kernelroute, routes
from ksocket.collectors.discovery.engine import Engine
from ksocket.collectors.discovery.scheduler import Host, Settings
from ksocket.collectors.discovery.targets import TargetSet, family_name, parse_targets, to_str
from ksocket.collectors.discovery.vendor import format_mac, preload, vendor

__all__ = ["DEFAULT_PORTS", "DEFAULT_RATE", "DEFAULT_TIMEOUT", "METHODS", "Request", "collect", "scan", "validate"]

METHODS = ("arp", "icmp", "tcp")
DEFAULT_PORTS = (22, 80, 443, 3389, 5985, 135, 139, 445)
DEFAULT_RATE = 1000.0
MAX_RATE = 100_000.0
DEFAULT_TIMEOUT = 1.0
MAX_PORTS = 1024
DNS_WORKERS = 8
DNS_WAIT = 2.0  # the longest the scan waits for names after its last probe


@dataclass(frozen=True)
class Request:
    targets: TargetSet | None  # None: the on-link networks
    exclude: tuple[str, ...]
    methods: frozenset[str]
    ports: tuple[int, ...]
    rate: float
    timeout: float
    dns: bool


def _number(params: Document, name: str, default: float, low: float, high: float) -> float:
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParams(f"{name} must be a number")
    if not low <= float(value) <= high:
        raise InvalidParams(f"{name} must be between {low:g} and {high:g}")
    return float(value)


def _ports(value: Any) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_PORTS
    items: Sequence[Any] = value.replace(" ", "").split(",") if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, bytes):
        raise InvalidParams("ports must be a list of port numbers")
    ports: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise InvalidParams(f"port {item!r} is not a port number")
        if isinstance(item, str) and "-" in item:
            low, _, high = item.partition("-")
            if not (low.isdigit() and high.isdigit()) or not 1 <= int(low) <= int(high) <= 65535:
                raise InvalidParams(f"port range {item!r} is not within 1-65535")
            ports.extend(range(int(low), int(high) + 1))
            continue
        if isinstance(item, str) and item.isdigit():
            item = int(item)
        if not isinstance(item, int) or not 1 <= item <= 65535:
            raise InvalidParams(f"port {item!r} is not within 1-65535")
        ports.append(item)
    unique = tuple(dict.fromkeys(ports))
    if len(unique) > MAX_PORTS:
        raise InvalidParams(f"at most {MAX_PORTS} ports are probed")
    return unique


def validate(params: Document) -> Request:
    """The checked request; :class:`InvalidParams` for anything wrong. Touches no network."""
    if not isinstance(params, dict):
        raise InvalidParams("params must be an object")
    mode = params.get("mode", "intranet")
    if mode != "intranet":
        raise InvalidParams(f"mode {mode!r} is not the intranet scan")
    exclude = params.get("exclude")
    targets_param = params.get("targets")
    targets = parse_targets(targets_param, exclude) if targets_param not in (None, [], "") else None
    if exclude is not None and not isinstance(exclude, str | list):
        raise InvalidParams("exclude must be a list of strings")
    excludes = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
    parse_targets([], excludes)  # checks the exclude specs even without targets
    methods_param = params.get("methods")
    if methods_param is None:
        methods = frozenset(METHODS)
    else:
        items = methods_param.split(",") if isinstance(methods_param, str) else methods_param
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
            raise InvalidParams("methods must be a list of strings")
        methods = frozenset(item.strip().lower() for item in items if item.strip())
        unknown = sorted(methods - set(METHODS))
        if unknown or not methods:
            raise InvalidParams(f"methods must be some of {', '.join(METHODS)} (got {', '.join(unknown) or 'none'})")
    ports = _ports(params.get("ports"))
    if "tcp" in methods and not ports:
        raise InvalidParams("the tcp method needs at least one port")
    rate = _number(params, "rate", DEFAULT_RATE, 1, MAX_RATE)
    timeout = _number(params, "timeout", DEFAULT_TIMEOUT, 0.01, 60)
    dns = params.get("dns", True)
    if not isinstance(dns, bool):
        raise InvalidParams("dns must be true or false")
    return Request(targets, excludes, methods, ports, rate, timeout, dns)


class Resolver:
    """Reverse DNS through the system resolver, a few lookups at a time, started as hosts are found.

    The lookups run on daemon threads: a resolver that hangs holds the scan no longer than
    ``DNS_WAIT`` and never holds the process at exit (an executor's threads are joined then).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.futures: dict[int, concurrent.futures.Future[str | None]] = {}
        self._queue: queue.SimpleQueue[tuple[int, concurrent.futures.Future[str | None]] | None] = queue.SimpleQueue()
        self._workers = 0

    @staticmethod
    def _lookup(address: str) -> str | None:
        try:
            name, _, _ = socket.gethostbyaddr(address)
        except (OSError, UnicodeError):
            return None
        return name or None

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            address, future = item
            if future.set_running_or_notify_cancel():
                future.set_result(self._lookup(to_str(address)))

    def submit(self, address: int) -> None:
        if not self.enabled or address in self.futures:
            return
        future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self.futures[address] = future
        self._queue.put((address, future))
        if self._workers < DNS_WORKERS:
            threading.Thread(target=self._work, name="ksocket-dns", daemon=True).start()
            self._workers += 1

    def finish(self, context: Context, wait: float = DNS_WAIT) -> dict[int, str | None]:
        end = time.monotonic() + wait
        pending = set(self.futures.values())
        while pending and time.monotonic() < end:
            context.check_cancelled()
            _, pending = concurrent.futures.wait(pending, timeout=min(0.1, max(0.0, end - time.monotonic())))
        return {
            address: future.result() if future.done() and not future.cancelled() else None
            for address, future in self.futures.items()
        }

    def close(self) -> None:
        """Lets the workers end once their lookup is done; lookups not yet started are dropped."""
        for future in self.futures.values():
            future.cancel()
        for _ in range(self._workers):
            self._queue.put(None)


_EVIDENCE_ORDER = {"arp": 0, "ndp": 0, "icmp": 1, "icmp-unreachable": 2}


def _evidence_key(item: str) -> tuple[int, int]:
    if item.startswith("tcp/"):
        return (3, int(item[4:]))
    return (_EVIDENCE_ORDER.get(item, 9), 0)


def host_document(host: Host, name: str | None) -> Document:
    return {
        "address": to_str(host.address),
        "family": family_name(host.address),
        "mac": format_mac(host.mac),
        "vendor": vendor(host.mac),
        "rtt": round(host.rtt * 1000, 3) if host.rtt is not None else None,
        "evidence": sorted(host.evidence, key=_evidence_key),
        "openPorts": sorted(host.open),
        "closedPorts": sorted(host.closed),
        "name": name,
        "interface": host.interface,
        "via": to_str(host.via) if host.via is not None else None,
    }


def scan(request: Request, context: Context, *, capture_device: str | None = None) -> Document:
    """Runs the scan ``request`` describes (``capture_device``: capture elsewhere, for tests)."""
    with kernelroute.RouteLookup() as lookup:
        return _scan(request, context, routes.RoutingTable.from_kernel(lookup.get), capture_device)


def _scan(request: Request, context: Context, table: routes.RoutingTable, capture_device: str | None) -> Document:
    targets = request.targets
    if targets is None:
        networks = table.onlink_networks()
        if not networks:
            raise InvalidParams("no targets given and no interface has an on-link IPv4 network")
        try:
            targets = parse_targets(networks, list(request.exclude))
        except InvalidParams as exc:
            raise InvalidParams(f"no targets given; the on-link networks {', '.join(networks)}: {exc}") from None
    settings = Settings(methods=request.methods, ports=request.ports, rate=request.rate, timeout=request.timeout)
    preload()
    resolver = Resolver(request.dns)
    engine = Engine(targets, table, settings, context, on_found=resolver.submit, capture_device=capture_device)
    try:
        engine.run()
        names = resolver.finish(context)
    finally:
        resolver.close()
    hosts = [host_document(engine.hosts[address], names.get(address)) for address in sorted(engine.hosts)]
    return {
        "mode": "intranet",
        "targets": targets.cidrs() if len(targets.intervals) <= 64 else [f"{len(targets.intervals)} ranges"],
        "addresses": targets.size,
        "skipped": dict(engine.skipped),
        "methods": [method for method in ("arp", "icmp", "tcp") if method in request.methods],
        "ports": list(request.ports),
        "rate": request.rate,
        "hostsUp": len(hosts),
        "hosts": hosts,
        "stats": engine.summary(),
    }


def collect(params: Document, context: Context) -> Document:
    """The ``networks.scan`` operation (intranet mode)."""
    return scan(validate(params), context)
