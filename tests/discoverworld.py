"""A fake world for the discovery loop's tests: the agent's view, live hosts, and what each host reveals.

The agent is 198.18.0.1 on 198.18.0.0/29 with the router 198.18.0.6 as its gateway. The router
answers on 198.18.0.6 and 198.18.1.1 (its link 198.18.1.0/30 to 198.18.1.2); its ARP table holds
198.18.1.2 and 198.18.0.5, a host that drops every probe. 198.18.1.2 routes 198.18.2.0/30 through
itself and the agent's network back through the router (routers pointing at each other), and
logs nobody in. Sweeps, inspections and every address that was sent anything are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ksocket.collectors.base import Context, Document
from ksocket.collectors.discover.drivers import View
from ksocket.collectors.discover.loop import Origin
from ksocket.collectors.discover.params import Request

ROUTER_MAC = "02:00:00:00:00:06"


def router() -> Document:
    return {
        "address": "198.18.0.6",
        "ssh": {
            "machine_id": "0123456789abcdef0123456789abcdef",
            "neighbors": [
                {"address": "198.18.1.2", "mac": "02:00:00:00:01:02", "state": "REACHABLE"},
                {"address": "198.18.0.5", "mac": "02:00:00:00:00:05", "state": "STALE"},
                {"address": "198.18.0.4", "mac": None, "state": "INCOMPLETE"},
            ],
            "interfaces": [
                {"mac": ROUTER_MAC, "addresses": [{"address": "198.18.0.6", "prefixlen": 29}]},
                {"mac": "02:00:00:00:01:01", "addresses": [{"address": "198.18.1.1", "prefixlen": 30}]},
            ],
            "routes": [{"destination": "10.0.0.0/8", "gateway": "198.18.1.2", "type": "unicast"}],
        },
    }


def far_router() -> Document:
    return {
        "address": "198.18.1.2",
        "ssh": {
            "routes": [
                {"destination": "198.18.2.0/30", "gateway": "", "type": "unicast"},
                {"destination": "198.18.0.0/29", "gateway": "198.18.1.1", "type": "unicast"},
            ]
        },
    }


@dataclass
class World:
    live: set[str] = field(
        default_factory=lambda: {"198.18.0.2", "198.18.0.6", "198.18.1.1", "198.18.1.2", "198.18.2.1"}
    )
    tables: dict[str, Document] = field(default_factory=lambda: {"198.18.0.6": router(), "198.18.1.2": far_router()})
    sweeps: list[tuple[str, ...]] = field(default_factory=list)
    inspected: list[str] = field(default_factory=list)

    def view(self) -> View:
        return View(
            own=("198.18.0.1",),
            origins=(Origin("198.18.0.6", "gateway"),),
            connected=("198.18.0.0/29",),
        )

    def sweep(self, addresses: Sequence[str], request: Request, context: Context) -> list[Document]:
        assert addresses, "an empty sweep would scan the on-link networks"
        self.sweeps.append(tuple(addresses))
        return [
            {"address": address, "mac": ROUTER_MAC if address == "198.18.0.6" else None, "evidence": ["icmp"]}
            for address in addresses
            if address in self.live
        ]

    def inspect(self, address: str, request: Request, context: Context) -> Document:
        self.inspected.append(address)
        return self.tables.get(address, {"address": address, "ssh": {"error": {"code": "auth-failed"}}})

    def touched(self) -> set[str]:
        return {address for sweep in self.sweeps for address in sweep} | set(self.inspected)
