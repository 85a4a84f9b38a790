"""``ksocket config [NAME [VALUE]]``: every setting as ``name=value``, one value, or a value stored."""

from __future__ import annotations

import argparse

from ksocket import config, paths
from ksocket.cli.common import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a setting's name, e.g. connect.host")
    parser.add_argument("value", nargs="?", help="the new value to store in ksocket.toml")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.value is not None:
        config.check_name(args.name)
        config.load(paths.config_path())  # a broken file is reported, not rewritten
        config.set_value(args.name, args.value)
        return 0
    settings = load_settings(args)
    if args.name is not None:
        print(config.display(settings, args.name, reveal=True))
        return 0
    for name in config.NAMES:
        print(f"{name}={config.display(settings, name)}")
    return 0
