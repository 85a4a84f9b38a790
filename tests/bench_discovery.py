"""``inv bench discovery``: ``ksocket scan`` beside ``nmap -sn -n`` and ``arp-scan`` on the lab's flat /22.

One lab (999 live hosts in 198.18.0.0/22, each a namespace of its own behind one bridge), the same
scanner namespace for every tool, two conditions: clean, then 10% of the frames dropped in each
direction at the bridge. Five runs per tool and condition: median wall time, recall against the
lab's ground truth (worst run and mean), false positives (any address reported up that is not a lab
host; the scanner's own address, which nmap lists, does not count), peak RSS (``/usr/bin/time -v``).

ksocket runs as ``ksocket scan TARGET --methods arp --no-dns --json`` with its default rate:
``--methods arp`` makes it the same job as ``nmap -sn`` on a LAN (ARP only) and arp-scan, and
``--no-dns`` the same as nmap's ``-n``. The lab's switch hands each ARP request to its host's port
(tests/lab.py), so every tool is timed on its own pacing rather than on the bridge's flooding.

``python -m tests.bench_discovery [--runs N] [--hosts N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab import Lab

TARGET = "198.18.0.0/22"
TIME = "/usr/bin/time"
KSOCKET = str(Path(sys.executable).with_name("ksocket"))


@dataclass
class Result:
    tool: str
    condition: str
    walls: list[float] = field(default_factory=list)
    recalls: list[float] = field(default_factory=list)
    false_positives: list[int] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls) if self.walls else float("nan")


def _ksocket(output: str) -> set[str]:
    return {host["address"] for host in json.loads(output)["hosts"]}


def _nmap(output: str) -> set[str]:
    return set(re.findall(r"^Host: (\S+) .*Status: Up", output, re.M))


def _arp_scan(output: str) -> set[str]:
    return {line.split("\t")[0] for line in output.splitlines() if re.match(r"^\d+\.\d+\.\d+\.\d+\t", line)}


def tools() -> list[tuple[str, list[str], Callable[[str], set[str]]]]:
    return [
        ("ksocket scan", [KSOCKET, "scan", TARGET, "--methods", "arp", "--no-dns", "--json"], _ksocket),
        ("nmap -sn -n", [shutil.which("nmap") or "/usr/bin/nmap", "-sn", "-n", TARGET, "-oG", "-"], _nmap),
        ("arp-scan", [shutil.which("arp-scan") or "/usr/sbin/arp-scan", "-I", "eth0", "-q", "-x", TARGET], _arp_scan),
    ]


def run_once(lab: Lab, command: Sequence[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stdout) of one run inside the scanner namespace."""
    started = time.monotonic()
    done = lab.run_in_scanner([TIME, "-f", "%e %M", "-o", "/dev/stderr", *command], timeout=300)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    match = re.search(r"^(\d+\.\d+) (\d+)\s*$", done.stderr, re.M)
    if match is None:
        raise RuntimeError(f"no peak RSS from {TIME} (apt-get install time)")
    return wall, int(match.group(2)), done.stdout


def measure(lab: Lab, condition: str, runs: int) -> list[Result]:
    truth = set(lab.truth())
    results = []
    for name, command, parse in tools():
        result = Result(name, condition)
        for _ in range(runs):
            wall, rss, output = run_once(lab, command)
            found = parse(output) - {lab.scanner_address}
            result.walls.append(wall)
            result.rss_kb.append(rss)
            result.recalls.append(len(found & truth) / len(truth))
            result.false_positives.append(len(found - truth))
            time.sleep(0.5)  # let the hosts' neighbour entries settle between runs
        results.append(result)
    return results


def table(results: list[Result]) -> str:
    lines = [
        f"{'condition':10} {'tool':14} {'median s':>9} {'min..max s':>13} {'recall min':>10} {'recall mean':>11} "
        f"{'false pos':>9} {'peak RSS MB':>11} {'time vs nmap':>12} {'vs arp-scan':>11}"
    ]
    for condition in dict.fromkeys(result.condition for result in results):
        group = [result for result in results if result.condition == condition]
        nmap = next(result for result in group if result.tool.startswith("nmap"))
        arp = next(result for result in group if result.tool.startswith("arp-scan"))
        for result in group:
            lines.append(
                f"{condition:10} {result.tool:14} {result.wall:9.2f} "
                f"{min(result.walls):6.2f}..{max(result.walls):<6.2f}"
                f"{min(result.recalls) * 100:9.2f}% {statistics.mean(result.recalls) * 100:10.2f}% "
                f"{max(result.false_positives):9d} {max(result.rss_kb) / 1024:11.1f} "
                f"{result.wall / nmap.wall:12.2f} {result.wall / arp.wall:11.2f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_discovery")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=999)
    parser.add_argument("--loss", type=float, default=10.0)
    args = parser.parse_args(list(argv) if argv is not None else [])
    if os.geteuid() != 0:
        print("bench discovery: needs root (network namespaces); skipped")
        return 0
    lab = Lab(prefix="kslab-bench").flat(args.hosts, prefixlen=22)
    try:
        lab.up()
        print(
            f"discovery: lab of {len(lab.hosts)} hosts in {TARGET} up in {lab.setup_seconds:.1f} s;"
            f" {args.runs} runs each"
        )
        results = measure(lab, "clean", args.runs)
        lab.loss(args.loss)
        results += measure(lab, f"loss {args.loss:g}%", args.runs)
    finally:
        lab.down()
    print(table(results))

    def row(tool: str, condition: str) -> Result:
        return next(r for r in results if r.tool.startswith(tool) and r.condition.startswith(condition))

    ours, nmap, arp = row("ksocket", "clean"), row("nmap", "clean"), row("arp-scan", "clean")
    lossy = row("ksocket", "loss")
    clean_goals = [
        ("100% recall", min(ours.recalls) == 1.0),
        ("no false positive", max(ours.false_positives) == 0),
        (f"<= 1/4 of nmap's time ({nmap.wall / 4:.2f} s)", ours.wall <= nmap.wall / 4),
        (f"<= 1/2 of arp-scan's time ({arp.wall / 2:.2f} s)", ours.wall <= arp.wall / 2),
    ]
    for goal, met in [*clean_goals, (f">= 99.9% recall with {args.loss:g}% loss", min(lossy.recalls) >= 0.999)]:
        print(f"goal: {goal:45} {'met' if met else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
