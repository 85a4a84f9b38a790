"""The hub's web interface for operators: read-only pages over the inventory, and one write.

``app``        :func:`~ksocket.hub.web.app.create_app`, the Starlette app the hub's listener serves
               beside the agents' WebSocket endpoint; the connections each thread of the pool holds;
               :func:`~ksocket.hub.web.app.through_hub`, the one write queued through the serving hub.
``auth``       log-in, log-out, the session every page asks for, the CSRF-checked forms.
``operators``  operators' accounts (argon2id) and server-side sessions, in the hub's SQLite file.
``throttle``   the pure login throttle (per name and per peer; injectable clock).
``security``   security headers (CSP without inline scripts, no framing, no-store) and the origin check.
``pages``      agents, snapshots and running discoveries, nodes, a node, a diff, the topology, "start a discovery".
``forms``      the "start a discovery" form to checked ``networks.discover`` params (pure).
``topology``   a snapshot's learned edges to cytoscape.js elements (pure).

Templates are in ``templates/`` (Jinja2, autoescaped), the scripts, the stylesheet and the vendored
cytoscape.js in ``static/`` (served by the hub itself: hubs run in closed networks). docs/web.md
describes the pages and the security model.
"""

from ksocket.hub.web.app import create_app, through_hub

__all__ = ["create_app", "through_hub"]
