"""``inv bench``: every benchmark of the project, each printing its table against a reference tool.

``python -m tests.bench [NAME…] [--OPTION …]`` runs the named ones (link, pipeline, discovery, discover,
inspect, hostile, hub); all by default. Options after the names go to each benchmark named (``discovery --runs
1`` for a quick check).
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["link", "pipeline", "discovery", "discover", "inspect", "hostile", "hub"]


def main(argv: list[str]) -> int:
    split = next((index for index, arg in enumerate(argv) if arg.startswith("--")), len(argv))
    names, options = argv[:split] or BENCHMARKS, argv[split:]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"no benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        module = importlib.import_module(f"tests.bench_{name}")
        status |= module.main(options) if options else module.main()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
