"""Helpers of the web interface's tests: a small inventory, the pages served by a real hub on port 0, a plain
HTTP client.

:func:`small_world` writes two discoveries of a routed lab (a Cisco router that revealed two networks
and three hosts, a switch seen over LLDP, Debian hosts, one whose hostname is a ``<script>`` tag) to a
hub database, with an operator ``alice`` (:data:`PASSWORD`) and a slot ``lab``. :func:`hub_serving` runs
a :class:`~ksocket.hub.server.Hub` with the pages (as ``ksocket hub serve`` does) on an event loop in a
thread of its own, where the tests' agents (``tests.hubtools``' ``RawClient``) run too. :class:`Client`
speaks HTTP/1.1 (over TLS when told) with ``http.client``, keeps cookies and never follows a redirect, so
that a test sees each answer.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import ssl
import threading
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from argon2 import PasswordHasher

from ksocket.hub.inventorystore import InventoryStore
from ksocket.hub.server import Hub
from ksocket.hub.store import Store
from ksocket.hub.web import create_app, through_hub
from ksocket.hub.web.operators import Operators
from ksocket.hub.web.throttle import LoginThrottle
from tests.test_inventory import MID_A, MID_B, Feed, details, host, linux

T = TypeVar("T")

PASSWORD = "correct horse battery staple"
HOSTILE = "<script>alert(1)</script>"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
"""Still argon2id, cheaper than the default so that the tests that log in many times stay quick."""


def router(address: str, name: str) -> tuple[str, dict[str, Any]]:
    system = {"objectId": "1.3.6.1.4.1.9.1.1208", "services": 6, "name": name, "description": "Cisco IOS 15.2"}
    neighbours = [{"localPortId": "Gi0/2", "systemName": "access-sw", "chassisId": "00:11:22"}]
    return details(
        address,
        [("snmp-engine-id", f"80000009{name.encode().hex()}")],
        {"snmp": {"system": system, "lldpNeighbors": neighbours}},
    )


def small_world(path: Path, *, operator: bool = True, crowd: int = 0) -> None:
    """Two discoveries of the slot ``lab`` (seeds 198.18.0.0/24): the second moves a host, loses one, adds one;
    ``crowd`` more hosts (MACs alone, no edge) in both, for the node list's pages."""
    with Store(path) as store:
        store.add_slot("lab")
    if operator:
        with Operators(path, hasher=FAST_HASHER) as operators:
            operators.add("alice", PASSWORD)
    source = {"host": "198.18.0.1", "protocol": "snmp", "table": "ipNetToMedia"}
    routes = {"host": "198.18.0.1", "protocol": "snmp", "table": "ipRouteTable"}
    common = [
        host("198.18.0.1", "02:00:00:00:00:01", ports=(22, 161)),
        router("198.18.0.1", "core-rtr"),
        ("network", {"network": "198.18.4.0/24", "learnedFrom": [routes]}),
        ("network", {"network": "198.18.5.0/24", "learnedFrom": [routes]}),
        host("198.18.4.20", "02:00:00:00:04:20", ports=(22,), learned=[source]),
        details("198.18.4.20", [("machine-id", MID_A)], linux("db-1")),
        host("198.18.4.66", "02:00:00:00:04:66", ports=(22,), learned=[source]),
        details("198.18.4.66", [("machine-id", "ab" * 16)], linux(HOSTILE)),
        *(
            host(f"198.18.{8 + n // 250}.{1 + n % 250}", f"02:00:00:01:{n // 256:02x}:{n % 256:02x}")
            for n in range(crowd)
        ),
    ]
    feed = Feed()
    with InventoryStore(path) as inventory:
        first = [
            *common,
            host("198.18.4.30", "02:00:00:00:04:30", ports=(22,), learned=[source]),
            details("198.18.4.30", [("machine-id", MID_B)], linux("web-1", "Debian GNU/Linux 11 (bullseye)")),
            host("198.18.5.9", "02:00:00:00:05:09", ports=(9100,), learned=[source]),
        ]
        second = [
            *common,
            host("198.18.4.31", "02:00:00:00:04:30", ports=(22,), learned=[source]),
            details("198.18.4.31", [("machine-id", MID_B)], linux("web-1", "Debian GNU/Linux 12 (bookworm)")),
            host("198.18.5.10", "02:00:00:00:05:10", ports=(631,), learned=[source]),
        ]
        for documents in (first, second):
            discovery = feed.discovery(seeds=("198.18.0.0/24",))
            inventory.apply(discovery, feed.records(discovery, documents))


# --------------------------------------------------------------------------- serving


@dataclass
class Served:
    """A running hub with the operators' pages, on the event loop of a thread of its own."""

    hub: Hub
    loop: asyncio.AbstractEventLoop
    base: str
    """``http[s]://127.0.0.1:PORT``: the pages, on the port where ``hub.url`` takes agents."""

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Runs ``coro`` on the hub's loop and returns what it returns (``timeout`` bounds a failure)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def hub_serving(
    db: Path,
    *,
    ssl_context: ssl.SSLContext | None = None,
    poll_interval: float = 0.05,
    throttle: LoginThrottle | None = None,
) -> Iterator[Served]:
    """A ``Hub(db, web_app=create_app(db, …))`` on loopback port 0, wired as ``ksocket hub serve`` wires it
    (secure cookies under TLS, the one write queued through the hub), stopped on the way out.

    The hub runs inside ``run_until_complete`` as under ``asyncio.run``: that task is the one anyio keeps
    the pages' thread pool for (with the loop merely running, each request's task was the pool's, so every
    request had a new thread, and its new connections: 120 ms of argon2 for the operators' dummy hash)."""
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    started: Future[None] = Future()
    hub: Hub
    app = create_app(
        db,
        secure_cookies=ssl_context is not None,
        queue_discovery=through_hub(lambda slot, name, params: hub.submit(slot, name, params), loop),
        throttle=throttle,
    )
    hub = Hub(db, ssl_context=ssl_context, poll_interval=poll_interval, web_app=app)

    async def run() -> None:
        try:
            await hub.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            await stopping.wait()
        finally:
            await hub.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), name="hub", daemon=True)
    thread.start()
    try:
        started.result(60)
        yield Served(hub, loop, f"{'https' if ssl_context else 'http'}://127.0.0.1:{hub.port}")
    finally:
        loop.call_soon_threadsafe(stopping.set)
        thread.join()
        loop.close()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str

    @property
    def location(self) -> str | None:
        return self.headers.get("location")


@dataclass
class Client:
    """Plain HTTP/1.1 with a cookie jar and no redirects followed; ``origin`` goes in every POST unless told."""

    base: str
    tls: ssl.SSLContext | None = None
    """What checks the hub's certificate when ``base`` is ``https://…``."""
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] = {}) -> Answer:
        connection: http.client.HTTPConnection
        if self.base.startswith("https://"):
            connection = http.client.HTTPSConnection(self.base.removeprefix("https://"), timeout=60, context=self.tls)
        else:
            connection = http.client.HTTPConnection(self.base.removeprefix("http://"), timeout=60)
        sent = dict(headers)
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            answer = Answer(response.status, response.headers, response.read().decode())
        finally:
            connection.close()
        for header in answer.headers.get_all("set-cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return answer

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, form: Mapping[str, str], *, origin: str | None = "same") -> Answer:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if origin is not None:
            headers["Origin"] = self.base if origin == "same" else origin
        return self.request("POST", path, urlencode(form).encode(), headers)

    def log_in(self, name: str = "alice", password: str = PASSWORD) -> Answer:
        return self.post("/login", {"name": name, "password": password})

    def csrf(self, path: str = "/nodes") -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.get(path).body)
        assert found is not None, "no CSRF token on the page"
        return found.group(1)
