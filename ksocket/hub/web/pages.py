"""The operators' pages: agents, snapshots (with running discoveries' progress), nodes, a node, a diff,
the topology, and the one write, the "start a discovery" form.

Each read is a sync endpoint (run in Starlette's thread pool) over the thread's own connections;
the node list is searched, filtered, sorted and paged by SQL (:meth:`InventoryStore.node_page`).
Two JSON endpoints feed the pages' static scripts: ``/api/progress`` (records so far of each
running discovery, polled by ``progress.js``) and ``/api/topology/ID`` (the graph ``topology.js``
draws with cytoscape.js).
"""

from __future__ import annotations

import json
import math
from typing import Final
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ksocket.hub.errors import HubError
from ksocket.hub.inventory import PROTOCOLS
from ksocket.hub.inventorystore import NODE_SORTS, NODE_STATES, NodeQuery, SnapshotRow
from ksocket.hub.web.app import web
from ksocket.hub.web.auth import MAX_FORM, form_of, operator_page, refused
from ksocket.hub.web.forms import FORM_FIELDS, DiscoveryForm, discovery_params
from ksocket.hub.web.operators import Session
from ksocket.hub.web.topology import graph

PAGE_SIZE: Final = 50
MAX_ID: Final = 2**63 - 1
KINDS: Final = ("router", "switch", "firewall", "printer", "hypervisor", "host", "unknown")


def agents(request: Request, session: Session) -> Response:
    state = web(request)
    return state.render("agents.html", session=session, agents=state.connections.store.agents())


def snapshots(request: Request, session: Session) -> Response:
    inventory = web(request).connections.inventory
    return web(request).render(
        "snapshots.html",
        session=session,
        snapshots=list(reversed(inventory.snapshots())),
        running=inventory.running_discoveries(),
    )


def progress(request: Request, session: Session) -> Response:
    running = web(request).connections.inventory.running_discoveries()
    return JSONResponse(
        [{"id": p.operation_id, "state": p.state, "records": p.records, "hosts": p.hosts} for p in running]
    )


def _whole(text: str | None, default: int) -> int:
    return int(text) if text is not None and text.isdigit() and len(text) < 10 else default


def node_query(arguments: dict[str, str]) -> NodeQuery:
    """The node list's query string (q, kind, network, state, sort, order, page) as a :class:`NodeQuery`."""
    page = max(_whole(arguments.get("page"), 1), 1)
    return NodeQuery(
        search=arguments.get("q", "")[:256],
        kind=arguments.get("kind", "") if arguments.get("kind") in KINDS else "",
        network=arguments.get("network", "")[:4096],
        state=arguments.get("state", "") if arguments.get("state") in NODE_STATES else "",
        sort=arguments.get("sort", "id") if arguments.get("sort") in NODE_SORTS else "id",
        descending=arguments.get("order") == "desc",
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )


def nodes(request: Request, session: Session) -> Response:
    arguments = dict(request.query_params)
    query = node_query(arguments)
    inventory = web(request).connections.inventory
    rows, total = inventory.node_page(query)
    page = query.offset // PAGE_SIZE + 1

    def link(**changes: object) -> str:
        return "/nodes?" + urlencode({**arguments, **{k: str(v) for k, v in changes.items()}})

    return web(request).render(
        "nodes.html",
        session=session,
        rows=rows,
        total=total,
        page=page,
        pages=max(math.ceil(total / PAGE_SIZE), 1),
        query=query,
        kinds=KINDS,
        states=NODE_STATES,
        networks=inventory.networks(),
        sorts=NODE_SORTS,
        link=link,
    )


def node(request: Request, session: Session) -> Response:
    node_id = int(request.path_params["node_id"])
    inventory = web(request).connections.inventory
    view = inventory.node(node_id) if node_id <= MAX_ID else None
    if view is None:
        kept = inventory.merged_into(node_id) if node_id <= MAX_ID else None
        if kept is not None:
            return RedirectResponse(f"/nodes/{kept}", status_code=303)
        return web(request).render("missing.html", 404, session=session, what=f"node {node_id}")
    details = {
        protocol: json.dumps(view.details[protocol], indent=2, ensure_ascii=False, sort_keys=True)
        for protocol in (*PROTOCOLS, *sorted(set(view.details) - set(PROTOCOLS)))
        if protocol in view.details
    }
    return web(request).render("node.html", session=session, view=view, details=details)


def _pair(request: Request) -> tuple[SnapshotRow, SnapshotRow]:
    inventory = web(request).connections.inventory
    first, second = request.query_params.get("a"), request.query_params.get("b")
    if first and second:
        return inventory.snapshot(first[:64]), inventory.snapshot(second[:64])
    return inventory.latest_pair()


def diff(request: Request, session: Session) -> Response:
    state = web(request)
    inventory = state.connections.inventory
    every = list(reversed(inventory.snapshots()))
    try:
        first, second = _pair(request)
    except HubError as exc:
        return state.render("diff.html", session=session, snapshots=every, error=str(exc), first=None, second=None)
    difference = inventory.diff(first, second)
    return state.render(
        "diff.html", session=session, snapshots=every, error="", first=first, second=second, diff=difference
    )


def topology(request: Request, session: Session) -> Response:
    state = web(request)
    every = list(reversed(state.connections.inventory.snapshots()))
    chosen = _whole(request.query_params.get("snapshot"), every[0].id if every else 0)
    return state.render("topology.html", session=session, snapshots=every, chosen=chosen)


def topology_data(request: Request, session: Session) -> Response:
    """The graph of :meth:`InventoryStore.topology` (what ``hub topology --json`` prints); none of a snapshot
    that is not there."""
    inventory = web(request).connections.inventory
    try:
        drawn = inventory.topology(inventory.snapshot(min(int(request.path_params["snapshot"]), MAX_ID)))
    except HubError:
        return JSONResponse(graph({}, []))
    return JSONResponse(graph({node.id: node.fields for node in drawn.nodes}, drawn.edges))


def discover_form(request: Request, session: Session) -> Response:
    return _discover_page(request, session, DiscoveryForm("", {}), {name: "" for name in FORM_FIELDS})


def _discover_page(
    request: Request, session: Session, form: DiscoveryForm, values: dict[str, str], status_code: int = 200
) -> Response:
    slots = [slot.name for slot in web(request).connections.store.slots() if slot.revoked is None]
    return web(request).render(
        "discover.html", status_code, session=session, slots=slots, form=form, values=values, queued=""
    )


async def discover(request: Request) -> Response:
    """The one write: queues a ``networks.discover`` on a slot, then shows the snapshots page."""
    session, posted = await form_of(request)
    if session is None or posted is None:
        return refused("not this session's form")
    values = {name: str(posted.get(name, "")) for name in FORM_FIELDS}
    form = discovery_params(values)
    if form.errors:
        return await run_in_threadpool(_discover_page, request, session, form, values, 400)
    try:
        await run_in_threadpool(web(request).queue, form.slot, form.params)
    except HubError as exc:
        form.errors["slot"] = str(exc)
        return await run_in_threadpool(_discover_page, request, session, form, values, 400)
    return RedirectResponse("/snapshots", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/agents", operator_page(agents), name="agents"),
        Route("/snapshots", operator_page(snapshots), name="snapshots"),
        Route("/nodes", operator_page(nodes), name="nodes"),
        Route("/nodes/{node_id:int}", operator_page(node), name="node"),
        Route("/diff", operator_page(diff), name="diff"),
        Route("/topology", operator_page(topology), name="topology"),
        Route("/discover", operator_page(discover_form), name="discover_form"),
        Route("/discover", discover, methods=["POST"], name="discover", max_body_size=MAX_FORM),
        Route("/api/progress", operator_page(progress), name="progress"),
        Route("/api/topology/{snapshot:int}", operator_page(topology_data), name="topology_data"),
    ]
