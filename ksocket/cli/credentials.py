"""``ksocket credentials explain ADDRESS [--kind ssh|winrm|snmp]``: which credential files apply, and why."""

from __future__ import annotations

import argparse

from ksocket.cli.common import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["explain"])
    parser.add_argument("address")
    parser.add_argument("--kind", choices=["ssh", "winrm", "snmp"], action="append")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ksocket.credentials import models, search

    settings = load_settings(args)
    models.parse_address(args.address)
    for kind in args.kind or ["ssh", "winrm", "snmp"]:
        print(f"[{kind}]")
        considered = search.explain(kind, args.address, settings.credentials_path)
        for item in considered:
            print(f"  {item.verdict:8} {item.path}  ({item.reason})")
        if not any(item.verdict == "match" for item in considered):
            print(f"  none: no {kind} credential file matches {args.address}")
    return 0
