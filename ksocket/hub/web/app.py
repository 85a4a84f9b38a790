"""The operators' web interface as a Starlette app: :func:`create_app`.

The hub's listener hands it every request that is not the agents' WebSocket endpoint. Pages render
on the server (Jinja2, autoescaped: a hostname or sysDescr from a scanned host is text, never
markup); endpoints that read the database are plain functions, which Starlette runs in its thread
pool, each thread with connections of its own (:class:`Connections`), so SQLite never blocks the
event loop the agents share. The routes are :mod:`ksocket.hub.web.pages`'s, the log-in and sessions
:mod:`ksocket.hub.web.auth`'s, the headers :mod:`ksocket.hub.web.security`'s.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from ksocket.hub.inventorystore import InventoryStore
from ksocket.hub.store import Store
from ksocket.hub.web.operators import Operators
from ksocket.hub.web.security import SecurityHeaders
from ksocket.hub.web.throttle import LoginThrottle
from ksocket.protocol import JSONObject

HERE: Final = Path(__file__).parent
STATIC: Final = HERE / "static"
TEMPLATES: Final = HERE / "templates"

QueueDiscovery = Callable[[str, JSONObject], str]
"""(slot, params) -> the id of the ``networks.discover`` operation queued; called in the thread pool."""
Submit = Callable[[str, str, JSONObject], Coroutine[Any, Any, str]]
"""A running hub's :meth:`~ksocket.hub.server.Hub.submit`: (slot, operation name, params) -> its id."""
DISCOVER: Final = "networks.discover"


def through_hub(submit: Submit, loop: asyncio.AbstractEventLoop) -> QueueDiscovery:
    """The ``queue_discovery`` of pages served by a hub: ``submit`` run on the hub's event loop ``loop`` (the
    pages' endpoints run in a thread pool), so that the hub sends it at once, as any operation submitted to it,
    and a connected agent gets the discovery without waiting for the poll interval."""

    def queue(slot: str, params: JSONObject) -> str:
        return asyncio.run_coroutine_threadsafe(submit(slot, DISCOVER, params), loop).result()

    return queue


class Connections(threading.local):
    """The database connections of one thread of the pool, opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inventory: InventoryStore | None = None
        self._store: Store | None = None
        self._operators: Operators | None = None

    @property
    def inventory(self) -> InventoryStore:
        if self._inventory is None:
            self._inventory = InventoryStore(self.path)
        return self._inventory

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.path)
        return self._store

    @property
    def operators(self) -> Operators:
        if self._operators is None:
            self._operators = Operators(self.path)
        return self._operators


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: object) -> str:
    """A field's value in a table: a list joined by commas, nothing as ``-``."""
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "-"
    return "-" if value in ("", None) else str(value)


@dataclass
class Web:
    """What every endpoint shares (``request.app.state.web``)."""

    db_path: Path
    secure_cookies: bool
    queue_discovery: QueueDiscovery | None
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    log_ins: threading.Lock = field(default_factory=threading.Lock)
    """Log-ins are checked one at a time, so that parallel guesses cannot all pass the throttle at once."""
    templates: Environment = field(init=False)
    connections: Connections = field(init=False)

    def __post_init__(self) -> None:
        self.templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
        self.templates.filters["when"] = _when
        self.templates.filters["cell"] = _cell
        self.connections = Connections(self.db_path)

    def render(self, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        return HTMLResponse(self.templates.get_template(template).render(**values), status_code=status_code)

    def queue(self, slot: str, params: JSONObject) -> str:
        if self.queue_discovery is not None:
            return self.queue_discovery(slot, params)
        return self.connections.store.add_operation(slot, DISCOVER, params)


def web(request: Request) -> Web:
    found: Web = request.app.state.web
    return found


def create_app(
    db_path: str | os.PathLike[str],
    *,
    secure_cookies: bool,
    queue_discovery: QueueDiscovery | None = None,
    throttle: LoginThrottle | None = None,
) -> Starlette:
    """The operators' pages over the hub's database at ``db_path``.

    ``secure_cookies``: the hub serves TLS, so the session cookie is ``Secure`` (and HSTS is sent).
    ``queue_discovery``: how the one write queues a ``networks.discover``: :func:`through_hub` for pages the
    hub serves (sent at once); by default the store's ``add_operation``, as ``ksocket hub run`` does (a
    hub sends it within its poll interval).
    """
    from ksocket.hub.web import auth, pages

    path = Path(db_path)
    state = Web(path, secure_cookies, queue_discovery, throttle or LoginThrottle())
    Operators(path).close()  # every table exists before the first request
    InventoryStore(path).close()
    routes = [
        *auth.routes(),
        *pages.routes(),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders, hsts=secure_cookies)])
    app.state.web = state
    return app
