"""Hub inventory benchmark: ``hub nodes`` and ``hub diff`` on 10,000 nodes x 20 snapshots, server-side.

A generated inventory (every discovery of one slot and network sees about 10,000 machines: some
change address or OS, some leave, some come back, some are new; half log in over SSH with a
machine id, the others are MACs alone) is applied through the core and written by
:class:`~ksocket.hub.inventorystore.InventoryStore` into a temporary hub database. Then the
queries the commands make are timed (the store and core calls, not the terminal): the first page
of nodes (100), every node, and the diff of the last two snapshots, each the median of
:data:`RUNS`, against the 300 ms goal. Then the operators' web pages, served by a hub (uvicorn) on a
loopback port and asked by a logged-in plain HTTP client: the node list's first page, a searched,
filtered and sorted page deep in the list, the diff page of the last two snapshots and the
topology's JSON; each time is the whole request (query, render, HTTP on loopback), an upper
bound of the server's share.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ksocket.hub.inventory import Discovery, Inventory, ScanRecord
from ksocket.hub.inventorystore import InventoryStore

NODES = 10_000
SNAPSHOTS = 20
RUNS = 7
PAGE = 100
GOAL_MS = 300.0


class Generator:
    """Machines that come, go, move and upgrade, and the records of each discovery of them."""

    def __init__(self, seed: int = 1) -> None:
        self.random = random.Random(seed)
        self.next_machine = 0
        self.present: dict[int, int] = {}  # machine -> its host number in 198.18.0.0/15
        self.os: dict[int, str] = {}
        self.away: list[int] = []
        self.seq = 0
        for _ in range(NODES):
            self._arrive()

    def _arrive(self) -> None:
        machine = self.next_machine
        self.next_machine += 1
        self.present[machine] = machine + 10
        self.os[machine] = "Debian GNU/Linux 11"

    def step(self) -> None:
        """Between two discoveries: 1 % move, 1 % upgrade, 1 % leave, some come back, 0.5 % are new."""
        machines = list(self.present)
        for machine in self.random.sample(machines, NODES // 100):
            self.present[machine] = 100_000 + machine  # a new address
        for machine in self.random.sample(machines, NODES // 100):
            self.os[machine] = "Debian GNU/Linux 12"
        for machine in self.random.sample(machines, NODES // 100):
            del self.present[machine]
            self.away.append(machine)
        for _ in range(min(len(self.away), NODES // 200)):
            machine = self.away.pop(0)
            self.present[machine] = machine + 10
        for _ in range(NODES // 200):
            self._arrive()

    def discovery(self, number: int) -> tuple[Discovery, list[ScanRecord]]:
        operation = f"discover-{number}"
        discovery = Discovery(operation, "bench", "agent", {"seeds": ["198.18.0.0/15"]}, {}, 1_000_000.0 + number)
        records = []
        for machine, host_number in self.present.items():
            address = f"198.{18 + host_number // 65536}.{host_number // 256 % 256}.{host_number % 256}"
            mac = "02:00:" + ":".join(f"{machine >> shift & 255:02x}" for shift in (24, 16, 8, 0))
            for kind, document in self._documents(machine, address, mac):
                self.seq += 1
                records.append(ScanRecord(operation, "bench", "agent", self.seq, discovery.taken, kind, document))
        return discovery, records

    def _documents(self, machine: int, address: str, mac: str) -> list[tuple[str, dict[str, Any]]]:
        keys = [{"kind": "mac", "value": mac}]
        documents: list[tuple[str, dict[str, Any]]] = [
            ("host", {"address": address, "mac": mac, "evidence": ["arp", "tcp/22"], "identity": keys})
        ]
        if machine % 2 == 0:
            inspection = {
                "ssh": {"hostname": f"host-{machine}", "os": {"family": "debian", "pretty_name": self.os[machine]}}
            }
            identity = [{"kind": "machine-id", "value": f"{machine:032x}"}, *keys]
            documents.append(("details", {"address": address, "identity": identity, "inspection": inspection}))
        return documents


def median_ms(call: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def build(path: Path) -> tuple[float, int]:
    """Applies :data:`SNAPSHOTS` discoveries; returns the mean seconds per discovery and the nodes."""
    generator = Generator()
    inventory = Inventory()
    spent = []
    with InventoryStore(path) as store:
        for number in range(1, SNAPSHOTS + 1):
            if number > 1:
                generator.step()
            discovery, records = generator.discovery(number)
            start = time.perf_counter()
            store.apply(discovery, records, inventory)
            spent.append(time.perf_counter() - start)
    return statistics.fmean(spent), len(inventory.nodes)


def web_pages(path: Path, last: int) -> list[tuple[str, float]]:
    """The web pages' times, served by a hub (uvicorn) over HTTP on loopback, logged in."""
    from ksocket.hub.web.operators import Operators
    from tests.webtools import FAST_HASHER, PASSWORD, Client, hub_serving

    with Operators(path, hasher=FAST_HASHER) as operators:
        operators.add("bench", PASSWORD)
    with hub_serving(path) as served:
        client = Client(served.base)
        assert client.log_in("bench").status == 303

        def get(url: str) -> None:
            answer = client.get(url)
            assert answer.status == 200, (url, answer.status)

        deep = "/nodes?q=198.18&kind=host&network=198.18.0.0%2F15&state=present&sort=name&order=desc&page=40"
        return [
            ("web: node list, first page (50)", median_ms(lambda: get("/nodes"))),
            ("web: node list, searched, filtered, sorted, page 40", median_ms(lambda: get(deep))),
            ("web: node list, sorted by last seen, page 210", median_ms(lambda: get("/nodes?sort=last_seen&page=210"))),
            ("web: node list, sorted by address, page 210", median_ms(lambda: get("/nodes?sort=address&page=210"))),
            ("web: diff page, the last two snapshots", median_ms(lambda: get("/diff"))),
            ("web: node page", median_ms(lambda: get("/nodes/2"))),
            (f"web: topology JSON of snapshot {last}", median_ms(lambda: get(f"/api/topology/{last}"))),
        ]


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hub.db"
        per_discovery, nodes = build(path)
        with InventoryStore(path) as store:
            first, second = store.latest_pair()
            difference = store.diff(first, second)
            rows = [
                (f"hub nodes, first page ({PAGE})", median_ms(lambda: store.nodes(limit=PAGE))),
                (f"hub nodes, all ({nodes:,})", median_ms(store.nodes)),
                ("hub nodes --json, all (with keys)", median_ms(lambda: (store.nodes(), store.node_keys()))),
                ("hub diff, the last two snapshots", median_ms(lambda: store.diff(*store.latest_pair()))),
            ]
        rows += web_pages(path, second.id)
    print(f"\nHub inventory: {nodes:,} nodes x {SNAPSHOTS} snapshots, server-side (store and core), median of {RUNS}")
    print(
        f"diff {first.id} -> {second.id}: {len(difference.new)} new, {len(difference.gone)} gone,"
        f" {len(difference.back)} back, {len(difference.changed)} changed fields;"
        f" applying one discovery took {per_discovery:.2f} s"
    )
    print(f"{'query':52} {'ms':>8} {'goal ms':>8}")
    status = 0
    for name, spent in rows:
        verdict = "" if spent < GOAL_MS else "  over the goal"
        status |= spent >= GOAL_MS
        print(f"{name:52} {spent:8.1f} {GOAL_MS:8.0f}{verdict}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
