"""Helpers of the web interface's tests: a small inventory, the app under uvicorn on port 0, a plain HTTP client.

:func:`small_world` writes two discoveries of a routed lab (a Cisco router that revealed two networks
and three hosts, a switch seen over LLDP, Debian hosts, one whose hostname is a ``<script>`` tag) to a
hub database, with an operator ``alice`` (:data:`PASSWORD`) and a slot ``lab``. :func:`serving` runs an
ASGI app under uvicorn in a thread on a loopback port of its own; :class:`Client` speaks HTTP/1.1
with ``http.client``, keeps cookies and never follows a redirect, so that a test sees each answer.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn
from argon2 import PasswordHasher

from ksocket.hub.inventorystore import InventoryStore
from ksocket.hub.store import Store
from ksocket.hub.web.operators import Operators
from tests.test_inventory import MID_A, MID_B, Feed, details, host, linux

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


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of ``app`` under uvicorn, stopped on the way out."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:  # it binds within milliseconds; the test's timeout bounds a failure
            if not thread.is_alive():
                raise RuntimeError("uvicorn stopped before it started")
            thread.join(0.01)
        (listener,) = server.servers
        port = listener.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


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
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] = {}) -> Answer:
        host = self.base.removeprefix("http://")
        connection = http.client.HTTPConnection(host, timeout=60)
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
