"""The learned topology of one snapshot as a graph for the page's cytoscape.js: a pure function.

:func:`graph` takes what :meth:`~ksocket.hub.inventorystore.InventoryStore.topology` read (the one query
of a snapshot's topology, also ``hub topology --json``'s): the snapshot's members (node id ->
:class:`~ksocket.hub.inventory.Fields`) and its :class:`~ksocket.hub.inventory.Edge` list (host A's table
revealed host or network B; LLDP neighbours) and returns cytoscape's elements: one vertex per inventory
node that reveals or is revealed, per network learnt, per neighbour or address that is no node; every
router, switch and firewall of the snapshot even when alone; one arrow per (revealer, revealed) labelled
with the protocols and tables that revealed it. Past :data:`MAX_VERTICES` the rest is left out and said.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ksocket.hub.inventory import Edge, Fields

MAX_VERTICES: Final = 2_000
NETWORK_GEAR: Final = frozenset({"router", "switch", "firewall"})


@dataclass
class _Graph:
    vertices: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrows: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    left_out: int = 0

    def vertex(self, key: str, data: dict[str, Any]) -> bool:
        if key in self.vertices:
            return True
        if len(self.vertices) >= MAX_VERTICES:
            self.left_out += 1
            return False
        self.vertices[key] = {"id": key, **data}
        return True


def _node_data(node_id: int, fields: Fields) -> dict[str, Any]:
    label = (fields.names or fields.addresses or (f"node {node_id}",))[0]
    return {"label": label, "kind": fields.kind, "node": node_id, "href": f"/nodes/{node_id}"}


class _Resolver:
    """Finds the vertex of an edge's end: an inventory node by address (or, for LLDP, by name), else its own."""

    def __init__(self, members: Mapping[int, Fields]) -> None:
        self.members = members
        self.by_address = {address: node for node, fields in members.items() for address in fields.addresses}
        self.by_name = {name: node for node, fields in members.items() for name in fields.names}

    def end(self, text: str, kind: str) -> tuple[str, dict[str, Any]]:
        node = self.by_address.get(text)
        if node is None and kind == "lldp":
            node = self.by_name.get(text)
        if node is not None:
            return f"n{node}", _node_data(node, self.members[node])
        if kind == "network":
            return f"net:{text}", {"label": text, "kind": "network"}
        return f"x:{text}", {"label": text, "kind": "neighbour" if kind == "lldp" else "address"}


def graph(members: Mapping[int, Fields], edges: Iterable[Edge]) -> dict[str, Any]:
    """``{"nodes": [{"data"}], "edges": [{"data"}], "leftOut": N}`` for cytoscape."""
    resolver = _Resolver(members)
    drawn = _Graph()
    for node_id, fields in sorted(members.items()):
        if fields.kind in NETWORK_GEAR:
            drawn.vertex(f"n{node_id}", _node_data(node_id, fields))
    for edge in edges:
        source, source_data = resolver.end(edge.source, "host")
        target, target_data = resolver.end(edge.target, edge.kind)
        if source == target or not (drawn.vertex(source, source_data) and drawn.vertex(target, target_data)):
            continue
        how = " ".join(part for part in (edge.protocol, edge.table) if part) or edge.kind
        drawn.arrows.setdefault((source, target), set()).add(how)
    return {
        "nodes": [{"data": data} for data in drawn.vertices.values()],
        "edges": [
            {"data": {"id": f"e{number}", "source": source, "target": target, "label": ", ".join(sorted(how))}}
            for number, ((source, target), how) in enumerate(drawn.arrows.items())
        ],
        "leftOut": drawn.left_out,
    }
