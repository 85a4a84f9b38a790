"""``ksocket version``: the version alone."""

from __future__ import annotations

import argparse

from ksocket import __version__


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print(__version__)
    return 0
