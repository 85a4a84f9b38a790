"""``ksocket discover [--seed …] [--allow …] [--deny …] [--expand-limit N] [--no-details] [--json]``.

``networks.discover`` run here, without a hub or a broker: the loop's pure core, the discovery engine
and the inspectors in this process (:func:`ksocket.collectors.discover.drivers.run`). At a terminal,
a live panel on standard error (round, candidates, live hosts, hosts per source, hosts detailed);
then a table of the hosts, or with ``--json`` ``{"hosts": [{address, mac, evidence, learnedFrom,
identity, details}], "networks": [...], "summary": {...}}``, each host once as it ended (its last
update). Like ``ksocket scan``, it is the operator's own command: the settings'
``operations.allow``/``deny`` do not bound it, its ``--allow``/``--deny`` do.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any, TextIO

from ksocket.cli import render
from ksocket.cli.common import load_settings
from ksocket.collectors.base import Document, Environment, RecordList
from ksocket.collectors.discover import drivers
from ksocket.collectors.discover.loop import Discovery
from ksocket.collectors.discover.params import parse_params
from ksocket.config import Settings


class DiscoverStatus(render.LiveStatus):
    """The local discovery's collector context: the live panel, the records kept, the settings' environment."""

    def __init__(self, stream: TextIO, settings: Settings) -> None:
        super().__init__(stream)
        self.settings = settings
        self.records = RecordList()

    @functools.cached_property
    def environment(self) -> Environment:
        return Environment.from_settings(self.settings)

    def progress(self, done: int, total: int) -> None:
        self.show(sweep=f"{done}/{total}")

    def check_cancelled(self) -> None:
        return None

    def record(self, document: Document, *, key: str | None = None) -> None:
        self.records.add(document, key)

    def watch(self, state: Discovery) -> None:
        if not self.enabled:
            return  # nobody sees the panel: the counters are not worth their cost
        summary = state.summary()
        per_source = ", ".join(f"{name} {count}" for name, count in summary["learnedPerSource"].items())
        self.show(
            round=state.round + 1,
            candidates=len(state.pending),
            live=len(state.hosts),
            learned=per_source or "-",
            detailed=summary["detailed"],
        )


def _split(values: list[str] | None) -> list[str]:
    return [part for value in values or () for part in value.replace(",", " ").split()]


def params_from(args: argparse.Namespace) -> dict[str, Any]:
    """The operation's params from the command line (what a hub would send)."""
    params: dict[str, Any] = {}
    for name, dest in (("seeds", "seed"), ("allow", "allow"), ("deny", "deny"), ("protocols", "protocols")):
        if getattr(args, dest):
            params[name] = _split(getattr(args, dest))
    for name, dest in (("methods", "methods"), ("ports", "ports")):
        if getattr(args, dest):
            params[name] = _split([getattr(args, dest)])
    for name, dest in (("expandLimit", "expand_limit"), ("rate", "rate"), ("timeout", "timeout")):
        if getattr(args, dest) is not None:
            params[name] = getattr(args, dest)
    if args.no_details:
        params["details"] = False
    return params


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=run)
    repeat = "(repeat or comma-separate)"
    parser.add_argument("--seed", action="append", metavar="TARGET", help=f"start addresses or networks {repeat}")
    parser.add_argument("--allow", action="append", metavar="TARGET", help=f"only these addresses {repeat}")
    parser.add_argument("--deny", action="append", metavar="TARGET", help=f"never these addresses {repeat}")
    parser.add_argument(
        "--expand-limit", type=int, metavar="N", help="probe networks of at most N addresses one by one (4096)"
    )
    parser.add_argument("--no-details", action="store_true", help="no hosts.inspect details of the hosts")
    parser.add_argument("--protocols", action="append", metavar="LIST", help="some of ssh,winrm,snmp (default: all)")
    parser.add_argument("--methods", metavar="LIST", help="the sweep's methods: some of arp,icmp,tcp")
    parser.add_argument("--ports", metavar="LIST", help="the sweep's TCP SYN ports")
    parser.add_argument("--rate", type=float, metavar="PPS", help="the sweep's packets per second")
    parser.add_argument("--timeout", type=float, metavar="S", help="the sweep's longest wait for a reply")
    parser.add_argument("--json", action="store_true", help="print hosts, networks and summary as JSON")


def run(args: argparse.Namespace) -> int:
    return run_discover(args, load_settings(args))


def latest(records: list[Document]) -> list[Document]:
    """Each record's newest version (the last given with its ``key``), where its first one stood."""
    newest = {record.get("key") or id(record): record for record in records}
    return [newest[record.get("key") or id(record)] for record in records if record.get("version", 1) == 1]


def result_document(records: list[Document], summary: Document) -> Document:
    """The ``--json`` document: each host once, as it ended, with its details (or null); the networks;
    the summary."""
    records = latest(records)
    details = {record["address"]: record for record in records if record["kind"] == "details"}
    hosts = []
    for record in records:
        if record["kind"] != "host":
            continue
        detail = details.get(record["address"])
        hosts.append(
            {
                "address": record["address"],
                "mac": record["mac"],
                "evidence": record["evidence"],
                "learnedFrom": record["learnedFrom"],
                "identity": record["identity"],
                "details": detail["inspection"] if detail else None,
            }
        )
    networks = [
        {k: v for k, v in record.items() if k not in ("kind", "key")}
        for record in records
        if record["kind"] == "network"
    ]
    return {"hosts": hosts, "networks": networks, "summary": summary}


HEADERS = ("ADDRESS", "MAC", "EVIDENCE", "LEARNED FROM", "IDENTITY", "LOGGED IN")


def _origin(origin: Document) -> str:
    if "source" in origin:
        return str(origin["source"])
    if "network" in origin:
        return f"network {origin['network']}"
    return f"{origin.get('host')} {origin.get('protocol')} {origin.get('table')}"


def host_rows(document: Document) -> list[list[str]]:
    rows = []
    for host in document["hosts"]:
        identity = host["identity"][0] if host["identity"] else None
        details = host["details"] or {}
        logged = [name for name in ("ssh", "winrm", "snmp") if isinstance(details.get(name), dict)]
        rows.append(
            [
                host["address"],
                host["mac"] or "-",
                ",".join(host["evidence"]),
                "; ".join(_origin(origin) for origin in host["learnedFrom"]),
                f"{identity['kind']} {identity['value']}" if identity else "-",
                ",".join(name for name in logged if "error" not in details[name]) or "-",
            ]
        )
    return rows


def summary_line(summary: Document) -> str:
    dropped = ", ".join(f"{count} {reason}" for reason, count in summary["dropped"].items())
    line = (
        f"{summary['hosts']} hosts, {summary['networks']} networks in {summary['rounds']} rounds "
        f"({summary['swept']} addresses swept, {summary['detailed']} hosts detailed)"
    )
    return line + (f"; dropped: {dropped}" if dropped else "")


def run_discover(
    args: argparse.Namespace,
    settings: Settings | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    using: drivers.Drivers | None = None,
) -> int:
    """Runs the discovery the arguments describe (``using`` the given drivers, else the live ones)."""
    out, err = out or sys.stdout, err or sys.stderr
    request = parse_params(params_from(args))
    status = DiscoverStatus(err, settings or Settings())
    try:
        summary = drivers.run(request, status, using or drivers.LiveDrivers(), watch=status.watch)
    except KeyboardInterrupt:
        print("ksocket: discovery interrupted", file=err)
        return 130
    finally:
        status.close()
    document = result_document(status.records.documents, summary)
    if args.json:
        json.dump(document, out, indent=1)
        out.write("\n")
        return 0
    render.table(HEADERS, host_rows(document), out)
    out.write(f"\n{summary_line(summary)}\n")
    for note in summary["notes"]:
        out.write(f"note: {note}\n")
    return 0
