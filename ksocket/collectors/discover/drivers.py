"""What the discovery loop does to the world, behind one small interface, and the loop run in-process.

:class:`Drivers` is the loop's only way out: :meth:`~Drivers.view` reads the agent's own tables
(its addresses, gateways, complete neighbour entries, connected networks), :meth:`~Drivers.sweep`
runs the ``networks.scan`` engine on exactly the addresses given, :meth:`~Drivers.inspect` runs
``hosts.inspect`` on one host: in scope ``full`` for a discovery with ``details``, ``learn``
without (:func:`inspection_scope`; what learning reads and nothing more), and without the
search's WARNING per host and protocol that no credential file serves (the loop counts them, and
:func:`unmatched_line` says it once at the end). :class:`LiveDrivers` is the real one; tests give
fakes. The pipeline's actors (:mod:`tasks.discover`) call the same three across messages;
:func:`run` drives the whole loop in one thread for ``ksocket discover``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ksocket.collectors import discovery
from ksocket.collectors.base import Context, Document
from ksocket.collectors.discover.loop import Discovery, Origin, Record
from ksocket.collectors.discover.params import Request
from ksocket.collectors.discovery.targets import to_str
from ksocket.collectors.discovery.vendor import format_mac

log = logging.getLogger("ksocket.discover")


@dataclass(frozen=True)
class View:
    """The agent's own position: its addresses, its candidates (gateways, neighbours), its networks."""

    own: tuple[str, ...]
    origins: tuple[Origin, ...]
    connected: tuple[str, ...]


class Drivers(Protocol):
    def view(self) -> View: ...

    def sweep(self, addresses: Sequence[str], request: Request, context: Context) -> list[Document]:
        """The hosts (``networks.scan`` host documents) among ``addresses``, which is never empty."""
        ...

    def inspect(self, address: str, request: Request, context: Context) -> Document:
        """``hosts.inspect``'s result for ``address`` with ``request.protocols``, in :func:`inspection_scope`."""
        ...


class LiveDrivers:
    """The kernel's tables, the discovery engine and the inspectors."""

    def view(self) -> View:
        from ksocket.collectors.discovery import routes

        table = routes.RoutingTable.from_kernel()
        gateways = {route.gateway for route in table.routes if route.gateway is not None}
        origins = [Origin(to_str(gateway), "gateway") for gateway in sorted(gateways)]
        origins += [
            Origin(to_str(address), "neighbour", format_mac(mac))
            for (_dev, address), mac in sorted(table.neighbours.items())
        ]
        return View(tuple(to_str(a) for a in sorted(table.local)), tuple(origins), tuple(table.onlink_networks()))

    def sweep(self, addresses: Sequence[str], request: Request, context: Context) -> list[Document]:
        if not addresses:
            return []  # an empty target list would be the on-link networks
        found = discovery.collect({**request.sweep, "targets": list(addresses)}, context)
        return list(found["hosts"])

    def inspect(self, address: str, request: Request, context: Context) -> Document:
        from ksocket.collectors.inspect import hosts

        inspection = hosts.HostInspection(context.environment, warn_unmatched=False)  # counted: unmatched_line
        params = {"address": address, "protocols": list(request.protocols), "scope": inspection_scope(request)}
        return inspection.collect(params, context)


def inspection_scope(request: Request) -> str:
    """``full`` when the discovery reports each host's details, else ``learn``: its one login collects
    what learning reads (tables, identity keys), no packages, hardware or details tables."""
    return "full" if request.details else "learn"


def emit(context: Context, records: Sequence[Record]) -> None:
    """The records on ``context``, each naming its ``key`` (a host's update has its first record's key)."""
    for record in records:
        context.record({"kind": record.kind, "key": record.key, **record.document}, key=record.journal_key)


def unmatched_line(summary: Document) -> str | None:
    """The discovery's one line for the hosts no credential file served (each protocol's count), or None."""
    counts = summary.get("noCredential") or {}
    if not counts:
        return None
    return "no credential file matched " + ", ".join(f"{n} hosts for {kind}" for kind, n in counts.items())


def run(
    request: Request,
    context: Context,
    drivers: Drivers,
    *,
    watch: Callable[[Discovery], None] = lambda discovery: None,
) -> Document:
    """The whole discovery in this thread: records on ``context``, the summary returned; ``watch``
    sees the state after every step (the live view)."""
    view = drivers.view()
    state = Discovery.start(request, view.own, view.origins, view.connected)
    emit(context, [Record("network", f"network:{cidr}", state.networks[cidr]) for cidr in state.networks])
    while not state.done:
        watch(state)
        context.check_cancelled()
        sweep = state.next_sweep()
        if sweep is not None:
            found = drivers.sweep(sweep.addresses, request, context) if sweep.addresses else []
            emit(context, state.swept(sweep, found))
        for address in state.waiting():
            watch(state)
            emit(context, state.learned(state.round, address, drivers.inspect(address, request, context)))
    watch(state)
    summary = state.summary()
    if (line := unmatched_line(summary)) is not None:
        log.warning("discovery: %s", line)
    return summary


__all__ = ["Drivers", "LiveDrivers", "View", "emit", "inspection_scope", "run"]
