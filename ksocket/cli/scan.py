"""``ksocket scan TARGET… [--exclude] [--methods] [--ports] [--rate] [--timeout] [--region] [--subscription] [--json]``.

The ``networks.scan`` operation run here, without a hub (in aws / azure mode TARGETs name VPCs /
VNETs, and the cloud's API lists their machines): a progress bar on standard error while it runs
(only when that is a terminal), then a table of the hosts (or the cloud's machines) found, or with
``--json`` the operation's result document. :func:`configure` adds the arguments and the handler to a
parser, :func:`run_scan` runs them; :mod:`ksocket.cli.render` draws the bar and the tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ksocket.cli import render
from ksocket.cli.common import load_settings
from ksocket.collectors import cloud, discovery
from ksocket.collectors.base import Environment, InvalidParams
from ksocket.config import Settings


class ScanProgress(render.ProgressBar):
    """The local scan's collector context: the progress bar, and an environment made from ``settings`` when
    first asked for (it loads asyncio: the inspectors')."""

    def __init__(self, stream: TextIO, settings: Settings) -> None:
        super().__init__(stream)
        self.settings = settings

    @functools.cached_property
    def environment(self) -> Environment:
        return Environment.from_settings(self.settings)


def _split(values: Sequence[str] | None) -> list[str]:
    return [part for value in values or () for part in value.replace(",", " ").split()]


NETWORK_PARAM = {"aws": "vpcs", "azure": "vnets"}  # what a TARGET names in each cloud mode
MODE_ONLY_OPTIONS = {  # dest: (flag, the modes it means something in); elsewhere it would be ignored
    "exclude": ("--exclude", ("intranet",)),
    "methods": ("--methods", ("intranet",)),
    "ports": ("--ports", ("intranet",)),
    "rate": ("--rate", ("intranet",)),
    "timeout": ("--timeout", ("intranet",)),
    "no_dns": ("--no-dns", ("intranet",)),
    "inspect": ("--inspect", ("intranet",)),
    "region": ("--region", ("aws",)),
    "subscriptions": ("--subscription", ("azure",)),
}


def params_from(args: argparse.Namespace, mode: str = "intranet") -> dict[str, Any]:
    """The operation's params in ``mode`` from the command line (what a hub would send)."""
    for dest, (flag, modes) in MODE_ONLY_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is not None and value is not False and mode not in modes:
            raise InvalidParams(f"{flag} applies to --mode {' or '.join(modes)} only, not {mode}")
    return _cloud_params(args, mode) if mode in NETWORK_PARAM else _intranet_params(args)


def _cloud_params(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.targets:
        params[NETWORK_PARAM[mode]] = _split(args.targets)
    if args.region:
        params["region"] = args.region
    if args.subscriptions:
        params["subscriptions"] = _split(args.subscriptions)
    return params


def _intranet_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.targets:
        params["targets"] = _split(args.targets)
    if args.exclude:
        params["exclude"] = _split(args.exclude)
    if args.methods:
        params["methods"] = _split([args.methods])
    if args.ports:
        params["ports"] = _split([args.ports])
    if args.rate is not None:
        params["rate"] = args.rate
    if args.timeout is not None:
        params["timeout"] = args.timeout
    if args.no_dns:
        params["dns"] = False
    return params


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=run)
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="CIDR, address, range (a.b.c.d-e.f.g.h or a.b.c.d-N); default: on-link networks; "
        "in aws mode VPC ids (vpc-…), in azure mode VNETs (resource id, RESOURCEGROUP/NAME or NAME); "
        "default: the agent's own",
    )
    parser.add_argument(
        "--exclude", action="append", metavar="TARGET", help="addresses to leave out (repeat or comma-separate)"
    )
    parser.add_argument("--methods", metavar="LIST", help="some of arp,icmp,tcp (default: all)")
    parser.add_argument(
        "--ports", metavar="LIST", help=f"TCP SYN ports (default: {','.join(map(str, discovery.DEFAULT_PORTS))})"
    )
    parser.add_argument(
        "--rate", type=float, metavar="PPS", help=f"packets per second (default: {discovery.DEFAULT_RATE:g})"
    )
    parser.add_argument(
        "--timeout", type=float, metavar="S", help=f"longest wait for a reply (default: {discovery.DEFAULT_TIMEOUT:g})"
    )
    parser.add_argument("--no-dns", action="store_true", help="no reverse DNS names")
    parser.add_argument(
        "--mode", choices=["intranet", "aws", "azure"], help="default: operations.networksScanMode of the settings"
    )
    parser.add_argument(
        "--region", metavar="REGION", help="aws mode: the region to ask (default: the one of ~/.aws/config)"
    )
    parser.add_argument(
        "--subscription",
        dest="subscriptions",
        action="append",
        metavar="ID",
        help="azure mode: subscription ids to search (repeat or comma-separate; default: every readable one)",
    )
    parser.add_argument(
        "--inspect", action="store_true", help="intranet mode: then inspect every host found (hosts.inspect)"
    )
    parser.add_argument("--json", action="store_true", help="print the operation's result document")


def run(args: argparse.Namespace) -> int:
    return run_scan(args, load_settings(args))


HEADERS = ("ADDRESS", "MAC", "VENDOR", "RTT ms", "OPEN PORTS", "EVIDENCE", "NAME")
CLOUD_HEADERS = {
    "aws": ("ID", "NAME", "STATE", "TYPE", "PRIVATE", "PUBLIC", "SUBNET"),
    "azure": ("NAME", "RESOURCE GROUP", "STATE", "SIZE", "PRIVATE", "PUBLIC", "SUBNET"),
}
CLOUD_FIRST_FIELDS = {"aws": ("id", "name", "state", "type"), "azure": ("name", "resourceGroup", "state", "size")}


def print_hosts(result: dict[str, Any], out: TextIO) -> None:
    """An intranet scan's result: a table of the hosts found, then a summary line."""
    render.table(HEADERS, host_rows(result), out)
    out.write(f"\n{summary(result)}\n")


def print_machines(result: dict[str, Any], out: TextIO) -> None:
    """A cloud scan's result (either mode): a table of the machines, then a summary line."""
    rows = machine_rows(result)
    render.table(CLOUD_HEADERS[result["mode"]], rows, out)
    out.write(f"\n{machines_summary(result, len(rows))}\n")


def machine_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per machine, under the mode's :data:`CLOUD_HEADERS`."""
    first = CLOUD_FIRST_FIELDS[result["mode"]]
    return [
        [
            *(str(item.get(field) or "-") for field in first),
            ",".join(address["address"] for address in item.get("privateAddresses", [])) or "-",
            ",".join(address["address"] for address in item.get("publicAddresses", [])) or "-",
            str(item.get("subnet") or "-").rsplit("/", 1)[-1],
        ]
        for item in result.get("instances", [])
    ]


def machines_summary(result: dict[str, Any], count: int) -> str:
    aws = result["mode"] == "aws"
    networks = result.get("vpcs" if aws else "vnets") or []
    names = ", ".join(str(network["id"] if aws else network["name"]) for network in networks)
    where = result.get("region") if aws else ", ".join(result.get("subscriptions", []))
    return f"{count} {result['mode']} machines in {names} ({where})"


def host_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per host found, under :data:`HEADERS`."""
    return [
        [
            host["address"],
            host["mac"] or "-",
            (host["vendor"] or "-")[:28],
            f"{host['rtt']:.2f}" if host["rtt"] is not None else "-",
            ",".join(str(port) for port in host["openPorts"]) or "-",
            _evidence(host["evidence"]),
            host["name"] or "-",
        ]
        for host in result["hosts"]
    ]


def summary(result: dict[str, Any]) -> str:
    """The line under the table: hosts up, addresses, time, packets, and what was skipped."""
    stats = result["stats"]
    skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(result["skipped"].items()))
    return (
        f"{result['hostsUp']} hosts up among {result['addresses']} addresses in {stats['elapsed']:.2f} s "
        f"({stats['packetsSent']} packets, {stats['sendRate']:.0f}/s, up to {stats['tries']} tries)"
        + (f"; skipped: {skipped}" if skipped else "")
    )


def _evidence(items: list[str]) -> str:
    tcp = [item[4:] for item in items if item.startswith("tcp/")]
    other = [item for item in items if not item.startswith("tcp/")]
    return ",".join(other + ([f"tcp({len(tcp)})"] if tcp else []))


def run_scan(
    args: argparse.Namespace,
    settings: Settings | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Runs the scan the arguments describe; 0 when it ran (whether or not hosts were found)."""
    out = out or sys.stdout
    err = err or sys.stderr
    settings = settings or Settings()
    mode = args.mode or settings.networks_scan_mode
    if mode != "intranet":
        result = cloud.run(mode, params_from(args, mode))
        if args.json:
            json.dump(result, out, indent=1)
            out.write("\n")
        else:
            print_machines(result, out)
        return 0
    request = discovery.validate(params_from(args))
    context = ScanProgress(err, settings)
    try:
        result = discovery.scan(request, context)
    except KeyboardInterrupt:
        context.close()
        print("ksocket: scan interrupted", file=err)
        return 130
    finally:
        context.close()
    if args.inspect:
        addresses = [host["address"] for host in result["hosts"]]
        import asyncio  # like the inspectors, loaded only when --inspect asks for them

        from ksocket.collectors.inspect import hosts

        inspection = hosts.HostInspection(context.environment)
        result["inspections"] = asyncio.run(inspection.inspect_hosts(addresses))
    if args.json:
        json.dump(result, out, indent=1)
        out.write("\n")
        return 0
    print_hosts(result, out)
    if args.inspect:
        from ksocket.cli import inspect

        for inspection in result["inspections"]:
            out.write("\n")
            inspect.print_summary(inspection, out)
    return 0
