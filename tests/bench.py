"""``inv bench``: every benchmark of the project, each printing its table against a reference tool."""

from __future__ import annotations

import sys


def main() -> int:
    print("no benchmark is defined yet: the link, pipeline and discovery issues add theirs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
