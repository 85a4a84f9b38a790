"""``ksocket config [NAME [VALUE]]``: every setting as ``name=value``, one value, or a value stored."""

from __future__ import annotations

import argparse
import sys

from ksocket import config, redact
from ksocket.cli.common import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a setting's name, e.g. connect.host")
    parser.add_argument("value", nargs="?", help="the new value to store in ksocket.toml")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.value is not None:
        store(args.name, args.value)
        return 0
    settings = load_settings(args)
    if args.name is not None:
        print(config.display(settings, args.name, reveal=True))
        return 0
    for name in config.NAMES:
        print(f"{name}={config.display(settings, name)}")
    return 0


def store(name: str, raw: str) -> None:
    """Stores the value even in a file that holds invalid ones, and says what the file still gets wrong."""
    stored = config.set_value(name, raw)
    if stored.backup is not None:
        print(f"ksocket: converted the YAML file to {stored.path}; it is kept as {stored.backup}", file=sys.stderr)
    for problem in stored.problems:
        print(f"ksocket: warning: {stored.path}: {redact.redact(problem)}", file=sys.stderr)
