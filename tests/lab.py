"""The network lab: ``python -m tests.lab up|down`` (``inv lab.up`` / ``inv lab.down``).

A stub until the discovery issue builds the namespaces; it says so instead of pretending.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[1:] not in (["up"], ["down"]):
        print("usage: python -m tests.lab up|down", file=sys.stderr)
        return 2
    print(f"lab {argv[1]}: no lab topology is defined yet (it comes with network discovery)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
