"""``inv bench discovery``: ``ksocket scan`` beside ``nmap -sn -n`` and ``arp-scan`` on the lab's flat /22.

One lab (999 live hosts in 198.18.0.0/22, each a namespace of its own behind one bridge), the same
scanner namespace for every tool, three conditions: clean; the slow path (the scanner's port carries
150 frames a second and drops the rest, as a router or firewall that rate-limits ARP would:
``Lab.slow_path``); 10% of the frames dropped in each direction at the bridge. Five runs per tool and
condition: median wall time, recall against the lab's ground truth (worst run and mean), false
positives (any address reported up that is not a lab host; the scanner's own address, which nmap
lists, does not count), peak RSS (``/usr/bin/time``), the ratio to nmap's time, and the path's limit:
the addresses probed divided by the smaller of ksocket's ``rate`` and what the path carries, plus
one RTT (the least time any tool that sends each address one probe can take), with the ratio to it.
ksocket's own column ``scan s`` is the scan without the process's start (the ``elapsed`` it reports).

ksocket runs as ``ksocket scan TARGET --methods arp --no-dns --json`` with its default rate:
``--methods arp`` makes it the same job as ``nmap -sn`` on a LAN (ARP only) and arp-scan, and
``--no-dns`` the same as nmap's ``-n``. The lab's switch hands each ARP request to its host's port
(tests/lab.py), so every tool is timed on its own pacing rather than on the bridge's flooding.

``python -m tests.bench_discovery [--runs N] [--hosts N] [--loss PERCENT] [--path-rate N]``.
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
PROBED = 1024 - 3  # the /22 but its network and broadcast addresses and the scanner's own
RATE = 1000.0  # ksocket's default rate
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
    scans: list[float] = field(default_factory=list)  # ksocket: the scan's own elapsed time
    rtts: list[float] = field(default_factory=list)  # ksocket: the path's smoothed RTT, seconds

    @property
    def wall(self) -> float:
        return statistics.median(self.walls) if self.walls else float("nan")


def _ksocket(output: str) -> set[str]:
    return {host["address"] for host in json.loads(output)["hosts"]}


def _ksocket_stats(output: str, result: Result) -> None:
    stats = json.loads(output)["stats"]
    result.scans.append(float(stats["elapsed"]))
    result.rtts.extend(path["srtt"] / 1000 for path in stats["paths"] if path["srtt"] is not None)


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
            if name.startswith("ksocket"):
                _ksocket_stats(output, result)
            time.sleep(0.5)  # let the hosts' neighbour entries settle between runs
        results.append(result)
    return results


def path_limit(results: list[Result], capacity: float) -> float:
    """The least time to send every address one probe at the smaller of the rate and what the path
    carries, and hear the last answer (ksocket's measured RTT)."""
    rtts = [rtt for result in results for rtt in result.rtts]
    return PROBED / min(RATE, capacity) + (statistics.median(rtts) if rtts else 0.0)


def table(results: list[Result], capacities: dict[str, float]) -> str:
    lines = [
        f"{'condition':10} {'tool':14} {'median s':>9} {'min..max s':>13} {'scan s':>7} {'recall min':>10} "
        f"{'recall mean':>11} {'false pos':>9} {'peak RSS MB':>11} {'vs nmap':>7} {'limit s':>7} {'vs limit':>8}"
    ]
    for condition in dict.fromkeys(result.condition for result in results):
        group = [result for result in results if result.condition == condition]
        nmap = next(result for result in group if result.tool.startswith("nmap"))
        limit = path_limit(group, capacities[condition])
        for result in group:
            scan = f"{statistics.median(result.scans):7.2f}" if result.scans else f"{'-':>7}"
            lines.append(
                f"{condition:10} {result.tool:14} {result.wall:9.2f} "
                f"{min(result.walls):6.2f}..{max(result.walls):<6.2f}{scan} "
                f"{min(result.recalls) * 100:9.2f}% {statistics.mean(result.recalls) * 100:10.2f}% "
                f"{max(result.false_positives):9d} {max(result.rss_kb) / 1024:11.1f} "
                f"{result.wall / nmap.wall:7.2f} {limit:7.2f} {result.wall / limit:8.2f}"
            )
    return "\n".join(lines)


def goals(results: list[Result], capacities: dict[str, float]) -> list[tuple[str, bool]]:
    """The issue's goals for ksocket on every condition."""
    met = []
    for condition, capacity in capacities.items():
        group = [result for result in results if result.condition == condition]
        ours = next(result for result in group if result.tool.startswith("ksocket"))
        nmap = next(result for result in group if result.tool.startswith("nmap"))
        limit = path_limit(group, capacity)
        recall = 0.999 if condition.startswith("loss") else 1.0
        met += [
            (f"{condition}: recall >= {recall:.1%}", min(ours.recalls) >= recall),
            (f"{condition}: no false positive", max(ours.false_positives) == 0),
            (f"{condition}: wall <= nmap's ({nmap.wall:.2f} s)", ours.wall <= nmap.wall),
            (f"{condition}: wall <= 1.2x the path's limit ({limit:.2f} s)", ours.wall <= 1.2 * limit),
            (f"{condition}: scan <= 1.2x the path's limit", statistics.median(ours.scans) <= 1.2 * limit),
        ]
    return met


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_discovery")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=999)
    parser.add_argument("--loss", type=float, default=10.0)
    parser.add_argument("--path-rate", type=int, default=150, help="frames a second the slow path carries")
    args = parser.parse_args(list(argv) if argv is not None else [])
    if os.geteuid() != 0:
        print("bench discovery: needs root (network namespaces); skipped")
        return 0
    lab = Lab(prefix=f"kslab-{os.getpid()}-0").flat(args.hosts, prefixlen=22)  # unique: other runs leave it be
    try:
        lab.up()
        print(
            f"discovery: lab of {len(lab.hosts)} hosts in {TARGET} up in {lab.setup_seconds:.1f} s;"
            f" {args.runs} runs each"
        )
        slow, lossy = f"slow {args.path_rate}/s", f"loss {args.loss:g}%"
        capacities = {"clean": float("inf"), slow: float(args.path_rate), lossy: float("inf")}
        results = measure(lab, "clean", args.runs)
        lab.slow_path(args.path_rate)
        results += measure(lab, slow, args.runs)
        lab.slow_path(0).loss(args.loss)
        results += measure(lab, lossy, args.runs)
    finally:
        lab.down()
    print(table(results, capacities))
    for goal, met in goals(results, capacities):
        print(f"goal: {goal:55} {'met' if met else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
