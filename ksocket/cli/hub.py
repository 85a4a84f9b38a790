"""``ksocket hub …``: run the reference hub and work its database.

    ksocket hub serve [--listen HOST:PORT] [--tls-cert FILE --tls-key FILE | --allow-plaintext] [--db FILE]
                      [--heartbeat-interval S] [--heartbeat-timeout S] [--auth-timeout S] [--poll-interval S]
                      [--max-startups START:RATE:FULL] [--slot-quota MIB]
    ksocket hub token add NAME          prints the new slot's token, alone, once
    ksocket hub token list              name, created, revoked (never a token)
    ksocket hub token revoke NAME
    ksocket hub run SLOT OPERATION [--params JSON] [--id ID] [--wait] [--timeout S]
    ksocket hub cancel ID
    ksocket hub agents                  slot, state, agent id, version, last heartbeat, session
    ksocket hub operations [SLOT]       id, slot, name, state, created, detail
    ksocket hub records ID [--json]     seq, kind, received, document of each record (JSON Lines with --json)
    ksocket hub inventory import ID     builds the snapshot of a networks.discover operation from its records
    ksocket hub nodes [--json] [--since SNAPSHOT]   the inventory's nodes
    ksocket hub node ID [--json]        one node: keys, addresses, details, history, merges
    ksocket hub snapshots               every discovery's snapshot
    ksocket hub diff [A B] [--json]     new, gone, back and changed nodes (default: the last two of a network)
    ksocket hub export --format json|csv   one row per node (the JSON is docs/inventory.md's schema)
    ksocket hub export --format netbox --out DIR [--site S] [--role R] [--manufacturer M] [--device-type T]
                                        the CSV files of NetBox's bulk import
    ksocket hub topology [SNAPSHOT] [--json]   a snapshot's learned edges and LLDP neighbours
    ksocket hub discover SLOT [--seed …] [--allow …] [--deny …] [--expand-limit N] [--no-details]
                         [--every DURATION]   queue a networks.discover now, or every DURATION (30m, 6h, 1d)
    ksocket hub schedules               the discoveries' schedules
    ksocket hub unschedule ID
    ksocket hub operator add NAME       an operator of the web pages (the password: twice at a terminal,
                                        or two lines of standard input)
    ksocket hub operator remove NAME    removes the account and logs its sessions out
    ksocket hub operator list           name, created, last log-in (never a password)

``serve`` listens on another host's reach (any address but localhost, 127.0.0.0/8 and ::1) only
with TLS, or when ``--allow-plaintext`` says that tokens may cross the network in clear.

Every command takes ``--db FILE`` (default ``$KSOCKET_HOME/var/lib/ksocket/hub.db``). The
commands other than ``serve`` only touch the database, so they work beside a running server:
``run`` queues an operation that the server sends within its poll interval.

This module stays light: the server and the store are imported by the handlers that use them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ksocket import bounded
from ksocket.cli import render
from ksocket.cli.common import add_command, subcommand_options
from ksocket.errors import KsocketError
from ksocket.hub.startups import DEFAULT_MAX_STARTUPS, StartupLimit

if TYPE_CHECKING:
    from ksocket.hub.inventory import Diff
    from ksocket.hub.inventorystore import InventoryStore, NodeRow
    from ksocket.hub.store import ResultRecord, Store
    from ksocket.hub.web.operators import Operators

DEFAULT_LISTEN = "127.0.0.1:8765"
POLL_SECONDS = 0.1
"""How often ``hub run --wait`` looks for the result."""


class HubCommandError(KsocketError):
    """A hub command cannot do what was asked; the text is one line."""


# --------------------------------------------------------------------------- helpers


def _open(args: argparse.Namespace) -> Store:
    from ksocket.hub.store import Store, default_path

    return Store(args.db or default_path())


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _max_startups(text: str) -> StartupLimit:
    try:
        return StartupLimit.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _raise_descriptor_limit() -> None:
    """Lifts the soft limit on open descriptors to the hard one: every agent holds one, and 1,024 is usual."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        logging.getLogger("ksocket.hub").warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
        return
    logging.getLogger("ksocket.hub").info("descriptor limit raised from %d to %d", soft, hard)


def _mebibytes(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number of MiB, got {text!r}")
    return int(text) * 1024 * 1024


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _params(text: str) -> dict[str, object]:
    return bounded.json_object(text, "--params", argparse.ArgumentTypeError)


def result_document(record: ResultRecord) -> dict[str, object]:
    """What ``hub run --wait`` prints: {"id", "seq", "ok", "data" | "error"}."""
    document: dict[str, object] = {"id": record.operation_id, "seq": record.seq, "ok": record.ok}
    if record.ok:
        document["data"] = record.data
    else:
        assert record.error is not None
        document["error"] = {"code": record.error.code, "message": record.error.message}
    return document


# --------------------------------------------------------------------------- handlers


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import ssl

    from ksocket import config
    from ksocket import log as ksocket_log
    from ksocket.hub.server import Hub
    from ksocket.hub.store import default_path
    from ksocket.hub.web.app import create_app, through_hub
    from statemachine.dial import is_loopback

    if (args.tls_cert is None) != (args.tls_key is None):
        raise HubCommandError("--tls-cert and --tls-key go together")
    host, port = args.listen
    if args.tls_cert is None and not is_loopback(host) and not args.allow_plaintext:
        raise HubCommandError(
            f"refusing to listen on {host}:{port} without TLS: agents' tokens would cross the network in clear"
            " (give --tls-cert and --tls-key, or --allow-plaintext)"
        )
    ksocket_log.configure(config.Settings(), logfile=args.logfile or "-", loglevel=args.loglevel)
    _raise_descriptor_limit()
    context = None
    if args.tls_cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise HubCommandError(f"cannot load the TLS certificate or key: {exc}") from None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        db_path = args.db or default_path()
        hub: Hub  # the pages queue through the hub they are part of (made next, running before any request)
        web_app = create_app(
            db_path,
            secure_cookies=context is not None,
            queue_discovery=through_hub(lambda slot, name, params: hub.submit(slot, name, params), loop),
        )
        hub = Hub(
            db_path,
            host=host,
            port=port,
            ssl_context=context,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_timeout=args.heartbeat_timeout,
            auth_timeout=args.auth_timeout,
            poll_interval=args.poll_interval,
            max_startups=args.max_startups,
            web_app=web_app,
            **({} if args.slot_quota is None else {"slot_quota": args.slot_quota}),
        )
        async with hub:
            await stop.wait()

    asyncio.run(serve())
    return 0


def cmd_token_add(args: argparse.Namespace) -> int:
    with _open(args) as store:
        print(store.add_slot(args.name))
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = [(slot.name, _when(slot.created), _when(slot.revoked)) for slot in store.slots()]
    render.table(("NAME", "CREATED", "REVOKED"), rows)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    with _open(args) as store:
        if not store.revoke(args.name):
            print(f"slot {args.name} was already revoked")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ksocket.hub import store as hub_store

    with _open(args) as store:
        op_id = store.add_operation(args.slot, args.operation, args.params, args.id)
        # with --wait, standard output is the result's JSON alone (for jq and the like)
        print(op_id, file=sys.stderr if args.wait else sys.stdout, flush=True)
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while True:
            record = store.result_for(op_id)
            if record is not None:
                print(json.dumps(result_document(record), ensure_ascii=False))
                return 0 if record.ok else 1
            operation = store.operation(op_id)
            if operation is not None and operation.state == hub_store.REFUSED:
                raise HubCommandError(f"operation {op_id} was refused: {operation.reason}: {operation.message}")
            if operation is not None and operation.state == hub_store.CANCELLED:
                raise HubCommandError(f"operation {op_id} was cancelled before it was sent")
            if time.monotonic() >= deadline:
                state = operation.state if operation is not None else "gone"
                raise HubCommandError(f"no result for operation {op_id} within {args.timeout:g} s (it is {state})")
            time.sleep(POLL_SECONDS)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _open(args) as store:
        print(store.request_cancel(args.id))
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    with _open(args) as store:
        agents = store.agents()
    rows = []
    for slot, agent in agents:
        if agent is None:
            rows.append((slot.name, "revoked" if slot.revoked else "never", "-", "-", "-", "-"))
            continue
        state = "revoked" if slot.revoked else agent.state
        rows.append((slot.name, state, agent.agent, agent.version, _when(agent.last_heartbeat), agent.session))
    render.table(("SLOT", "STATE", "AGENT", "VERSION", "LAST HEARTBEAT", "SESSION"), rows)
    return 0


def cmd_operations(args: argparse.Namespace) -> int:
    with _open(args) as store:
        operations = store.operations(args.slot)
    rows = []
    for op in operations:
        detail = ""
        if op.reason is not None:
            detail = f"{op.reason}: {op.message}"
        elif op.total is not None:
            detail = f"{op.done}/{op.total}"
        if op.cancel_requested is not None and op.state not in ("done", "cancelled"):
            detail = (detail + " cancel requested").strip()
        rows.append((op.id, op.slot, op.name, op.state, _when(op.created), detail))
    render.table(("ID", "SLOT", "NAME", "STATE", "CREATED", "DETAIL"), rows)
    return 0


def cmd_records(args: argparse.Namespace) -> int:
    with _open(args) as store:
        if store.operation(args.id) is None:
            raise HubCommandError(f"no operation with id {args.id!r}")
        records = store.records(args.id)
    if args.json:  # one line per record: a discovery may have thousands
        for record in records:
            print(json.dumps({"seq": record.seq, "record": record.document}, ensure_ascii=False))
        return 0
    rows = [
        (str(record.seq), record.kind, _when(record.received), json.dumps(record.document, ensure_ascii=False))
        for record in records
    ]
    render.table(("SEQ", "KIND", "RECEIVED", "RECORD"), rows)
    return 0


# --------------------------------------------------------------------------- the inventory

INVENTORY_SCHEMA = "ksocket.inventory/1"
"""The ``schema`` of ``hub export --format json`` (docs/inventory.md)."""
CSV_COLUMNS = (
    "id",
    "kind",
    "vendor",
    "os",
    "osFamily",
    "addresses",
    "macs",
    "names",
    "ports",
    "keys",
    "firstSeen",
    "lastSeen",
)


def _inventory(args: argparse.Namespace) -> InventoryStore:
    from ksocket.hub.inventorystore import InventoryStore
    from ksocket.hub.store import default_path

    return InventoryStore(args.db or default_path())


def node_document(row: NodeRow, keys: list[tuple[str, str]]) -> dict[str, object]:
    """One node as ``hub export`` and ``hub nodes --json`` give it (docs/inventory.md)."""
    fields = row.fields
    return {
        "id": row.id,
        "kind": fields.kind,
        "vendor": fields.vendor,
        "os": fields.os,
        "osFamily": fields.os_family,
        "addresses": list(fields.addresses),
        "macs": list(fields.macs),
        "names": list(fields.names),
        "ports": list(fields.ports),
        "keys": [{"kind": kind, "value": value} for kind, value in keys],
        "firstSeen": _when(row.first_seen),
        "lastSeen": _when(row.last_seen),
    }


def cmd_inventory_import(args: argparse.Namespace) -> int:
    from ksocket.hub.errors import HubError

    with _inventory(args) as inventory:
        try:
            discovery = inventory.discovery(args.id)
        except HubError as exc:
            raise HubCommandError(str(exc)) from None
        records = inventory.records(args.id)
        if not records:
            raise HubCommandError(f"operation {args.id} has no records stored")
        applied = inventory.apply(discovery, records)
        snapshot = inventory.snapshot(args.id)
    print(
        f"snapshot {snapshot.id} ({discovery.slot} {discovery.network}): {len(applied.snapshot.members)} nodes,"
        f" {len(applied.changes)} changes, {len(applied.merges)} merges, {len(applied.snapshot.edges)} edges"
    )
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from ksocket.hub.errors import HubError

    with _inventory(args) as inventory:
        try:
            rows = inventory.nodes(since=None if args.since is None else inventory.snapshot(args.since).id)
        except HubError as exc:
            raise HubCommandError(str(exc)) from None
        keys = inventory.node_keys() if args.json else {}
    if args.json:
        for row in rows:
            print(json.dumps(node_document(row, keys.get(row.id, [])), ensure_ascii=False))
        return 0
    render.table(
        ("ID", "KIND", "VENDOR", "OS", "ADDRESSES", "MACS", "NAMES", "LAST SEEN"),
        [
            (
                str(row.id),
                row.fields.kind,
                row.fields.vendor or "-",
                row.fields.os or "-",
                ",".join(row.fields.addresses) or "-",
                ",".join(row.fields.macs) or "-",
                ",".join(row.fields.names) or "-",
                _when(row.last_seen),
            )
            for row in rows
        ],
    )
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    with _inventory(args) as inventory:
        view = inventory.node(args.id)
        merged_into = inventory.merged_into(args.id) if view is None else None
    if view is None:
        if merged_into is not None:
            raise HubCommandError(f"node {args.id} was merged into node {merged_into}")
        raise HubCommandError(f"no node {args.id}")
    document = node_document(view.node, view.keys)
    if args.json:
        document |= {
            "details": view.details,
            "snapshots": view.snapshots,
            "merged": view.merged,
            "history": [
                {"snapshot": e.snapshot, "field": e.change.field, "old": e.change.old, "new": e.change.new}
                for e in view.history
            ],
        }
        print(json.dumps(document, ensure_ascii=False))
        return 0
    render.table(("FIELD", "VALUE"), [(name, _cell(value)) for name, value in document.items()])
    print()
    render.table(
        ("SLOT", "ADDRESS", "FIRST SEEN", "LAST SEEN"),
        [(slot, address, _when(first), _when(last)) for slot, address, first, last in view.addresses],
    )
    print()
    render.table(
        ("SNAPSHOT", "FIELD", "OLD", "NEW"),
        [(str(e.snapshot), e.change.field, _cell(e.change.old), _cell(e.change.new)) for e in view.history],
    )
    return 0


def _cell(value: object) -> str:
    if isinstance(value, list):
        return ",".join(_cell(item) for item in value) or "-"
    if isinstance(value, dict):
        return "=".join(str(item) for item in value.values())
    return str(value) if value not in ("", None) else "-"


def cmd_snapshots(args: argparse.Namespace) -> int:
    with _inventory(args) as inventory:
        snapshots = inventory.snapshots()
    render.table(
        ("ID", "OPERATION", "SLOT", "AGENT", "NETWORK", "TAKEN", "NODES"),
        [(str(s.id), s.operation_id, s.slot, s.agent, s.network, _when(s.taken), str(s.nodes)) for s in snapshots],
    )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from ksocket.hub.errors import HubError

    if len(args.snapshots) not in (0, 2):
        raise HubCommandError("give two snapshots, or none for the last two of the newest snapshot's network")
    with _inventory(args) as inventory:
        try:
            if args.snapshots:
                first, second = (inventory.snapshot(text) for text in args.snapshots)
            else:
                first, second = inventory.latest_pair()
            difference = inventory.diff(first, second)
        except HubError as exc:
            raise HubCommandError(str(exc)) from None
    if args.json:
        print(json.dumps({"from": first.id, "to": second.id, **_diff_document(difference)}, ensure_ascii=False))
        return 0
    print(f"snapshot {first.id} ({_when(first.taken)}) -> snapshot {second.id} ({_when(second.taken)})")
    rows = [
        (what, str(node), "addresses", *_arrived_or_gone(what, difference.fields[node].addresses))
        for what in ("new", "gone", "back")
        for node in getattr(difference, what)
    ]
    rows += [("changed", str(c.node), c.field, _cell(c.old), _cell(c.new)) for c in difference.changed]
    render.table(("WHAT", "NODE", "FIELD", "OLD", "NEW"), rows)
    return 0


def _arrived_or_gone(what: str, addresses: tuple[str, ...]) -> tuple[str, str]:
    """(old, new) of a node that came (new, back) or went: its addresses on the side where it was."""
    shown = ",".join(addresses) or "-"
    return (shown, "-") if what == "gone" else ("-", shown)


def _diff_document(difference: Diff) -> dict[str, object]:
    return {
        "new": difference.new,
        "gone": difference.gone,
        "back": difference.back,
        "changed": [{"node": c.node, "field": c.field, "old": c.old, "new": c.new} for c in difference.changed],
    }


def cmd_export(args: argparse.Namespace) -> int:
    import csv

    with _inventory(args) as inventory:
        rows = inventory.nodes()
        keys = inventory.node_keys()
    if args.format == "netbox":
        return _export_netbox(args, rows, keys)
    documents = [node_document(row, keys.get(row.id, [])) for row in rows]
    if args.format == "json":
        json.dump({"schema": INVENTORY_SCHEMA, "nodes": documents}, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for document in documents:
        writer.writerow([_csv_cell(document[column]) for column in CSV_COLUMNS])
    return 0


def _export_netbox(args: argparse.Namespace, rows: list[NodeRow], keys: dict[int, list[tuple[str, str]]]) -> int:
    from ksocket.hub import netbox

    if args.out is None:
        raise HubCommandError("--format netbox writes files: give --out DIR")
    options = netbox.Options(
        site=args.site, role=args.role, manufacturer=args.manufacturer, device_type=args.device_type
    )
    try:
        written = netbox.write(args.out, netbox.tables(rows, keys, options))
    except OSError as exc:
        raise HubCommandError(f"{args.out}: cannot write the NetBox files: {exc.strerror or exc}") from None
    for path in written:
        print(path)
    return 0


def _csv_cell(value: object) -> str:
    """Lists are joined by spaces, keys written ``kind=value``."""
    if isinstance(value, list):
        return " ".join(_csv_cell(item) for item in value)
    if isinstance(value, dict):
        return f"{value['kind']}={value['value']}"
    return str(value)


def cmd_topology(args: argparse.Namespace) -> int:
    from ksocket.hub.errors import HubError

    with _inventory(args) as inventory:
        try:
            snapshot = inventory.snapshot(args.snapshot) if args.snapshot else inventory.latest()
        except HubError as exc:
            raise HubCommandError(str(exc)) from None
        topology = inventory.topology(snapshot)
    if args.json:
        print(json.dumps(topology.as_document(), ensure_ascii=False))
        return 0
    node_of = topology.node_of()

    def named(address: str) -> str:
        return f"{address} (node {node_of[address]})" if address in node_of else address

    print(f"snapshot {snapshot.id} ({snapshot.slot} {snapshot.network}, {_when(snapshot.taken)})")
    render.table(
        ("SOURCE", "REVEALED", "KIND", "PROTOCOL", "TABLE"),
        [(named(e.source), named(e.target), e.kind, e.protocol or "-", e.table or "-") for e in topology.edges],
    )
    return 0


# --------------------------------------------------------------------------- discoveries and their schedules


def _duration(text: str) -> float:
    from ksocket.hub.schedule import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def discover_params(args: argparse.Namespace) -> dict[str, object]:
    """``networks.discover``'s params from ``hub discover``'s options, checked by the agent's own parser."""
    from ksocket.collectors.base import InvalidParams
    from ksocket.collectors.discover.params import parse_params

    params: dict[str, object] = {
        name: value
        for name, value in (("seeds", args.seed), ("allow", args.allow), ("deny", args.deny))
        if value is not None
    }
    if args.expand_limit is not None:
        params["expandLimit"] = args.expand_limit
    if args.no_details:
        params["details"] = False
    try:
        parse_params(params)
    except InvalidParams as exc:
        raise HubCommandError(f"invalid discovery: {exc}") from None
    return params


def cmd_discover(args: argparse.Namespace) -> int:
    from ksocket.hub.schedule import format_duration
    from ksocket.hub.schedulestore import DISCOVER, Schedules

    params = discover_params(args)
    with _open(args) as store:
        if args.every is None:
            print(store.add_operation(args.slot, DISCOVER, params))
            return 0
        now = time.time()
        schedule = Schedules(store).add(args.slot, params, args.every, first_due=now)
    print(f"schedule {schedule}: {DISCOVER} on {args.slot} every {format_duration(args.every)}, first at {_when(now)}")
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    from ksocket.hub.schedule import format_duration
    from ksocket.hub.schedulestore import Schedules

    with _open(args) as store:
        schedules = Schedules(store).schedules()
    render.table(
        ("ID", "SLOT", "EVERY", "NEXT DUE", "LAST OPERATION", "PARAMS"),
        [
            (
                str(s.id),
                s.slot,
                format_duration(s.every),
                _when(s.next_due),
                s.last_operation or "-",
                json.dumps(s.params, ensure_ascii=False),
            )
            for s in schedules
        ],
    )
    return 0


def cmd_unschedule(args: argparse.Namespace) -> int:
    from ksocket.hub.schedulestore import Schedules

    with _open(args) as store:
        if not Schedules(store).remove(args.id):
            raise HubCommandError(f"no schedule {args.id}")
    return 0


# --------------------------------------------------------------------------- operators of the web pages

MAX_PASSWORD_LINE = 1024


def _operators(args: argparse.Namespace) -> Operators:
    from ksocket.hub.store import default_path
    from ksocket.hub.web.operators import Operators

    return Operators(args.db or default_path())


def read_new_password() -> str:
    """The new password, asked twice without echo at a terminal, else two lines of standard input."""
    import getpass

    if sys.stdin.isatty():
        first, second = getpass.getpass("Password: "), getpass.getpass("Password again: ")
    else:
        first, second = (sys.stdin.readline(MAX_PASSWORD_LINE + 2).rstrip("\r\n") for _ in range(2))
    if first != second:
        raise HubCommandError("the two passwords differ")
    return first


def cmd_operator_add(args: argparse.Namespace) -> int:
    from ksocket.hub.errors import HubError
    from ksocket.hub.web.operators import check_name, check_password

    try:
        check_name(args.name)
        password = check_password(read_new_password())
        with _operators(args) as operators:
            operators.add(args.name, password)
    except HubError as exc:
        raise HubCommandError(str(exc)) from None
    print(f"operator {args.name} added", file=sys.stderr)
    return 0


def cmd_operator_remove(args: argparse.Namespace) -> int:
    from ksocket.hub.errors import HubError

    try:
        with _operators(args) as operators:
            operators.remove(args.name)
    except HubError as exc:
        raise HubCommandError(str(exc)) from None
    return 0


def cmd_operator_list(args: argparse.Namespace) -> int:
    with _operators(args) as operators:
        accounts = operators.accounts()
    render.table(
        ("NAME", "CREATED", "LAST LOG-IN"), [(a.name, _when(a.created), _when(a.last_login)) for a in accounts]
    )
    return 0


def _configure_operators(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    operator = commands.add_parser(
        "operator",
        parents=parents[:1],
        help="add, remove or list the operators of the web pages",
        description="the operators who log in to the hub's web pages",
    )
    actions = operator.add_subparsers(dest="operator_command", required=True, metavar="ACTION")
    sub = add_command(
        actions,
        "add",
        cmd_operator_add,
        "add an operator; the password is asked twice (or read as two lines of standard input)",
        parents,
    )
    sub.add_argument("name")
    sub = add_command(actions, "remove", cmd_operator_remove, "remove an operator and end its sessions", parents)
    sub.add_argument("name")
    add_command(actions, "list", cmd_operator_list, "list the operators (never a password)", parents)


# --------------------------------------------------------------------------- the parser


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the hub's sub-commands to the ``ksocket hub`` parser."""
    common = subcommand_options()
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--db", type=Path, metavar="FILE", help="the hub's database (default $KSOCKET_HOME/var/lib/ksocket/hub.db)"
    )
    parents = [common, database]
    commands = parser.add_subparsers(dest="hub_command", required=True, metavar="COMMAND")

    sub = add_command(commands, "serve", cmd_serve, "run the hub until SIGINT or SIGTERM (logs to stdout)", parents)
    sub.add_argument(
        "--listen", type=parse_listen, default=parse_listen(DEFAULT_LISTEN), metavar="HOST:PORT", help=DEFAULT_LISTEN
    )
    sub.add_argument("--tls-cert", metavar="FILE", help="serve wss and https with this certificate chain (PEM)")
    sub.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    sub.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="serve ws and http without TLS on an address other hosts reach (tokens cross the network in clear)",
    )
    sub.add_argument("--heartbeat-interval", type=_positive, default=60.0, metavar="S", help="default 60")
    sub.add_argument(
        "--heartbeat-timeout",
        type=_positive,
        default=30.0,
        metavar="S",
        help="an agent silent for interval + timeout is dropped (default 30)",
    )
    sub.add_argument(
        "--auth-timeout",
        type=_positive,
        default=10.0,
        metavar="S",
        help="for the handshake, then for the authenticate frame (default 10)",
    )
    sub.add_argument(
        "--max-startups",
        type=_max_startups,
        default=DEFAULT_MAX_STARTUPS,
        metavar="START:RATE:FULL",
        help="unauthenticated connections: from START on, refuse RATE%% of newcomers, rising to all at FULL"
        f" (or N: a cap; default {DEFAULT_MAX_STARTUPS})",
    )
    sub.add_argument(
        "--slot-quota",
        type=_mebibytes,
        metavar="MIB",
        help="results kept per slot; past it, a result is stored as a storage-full failure (default 1024)",
    )
    sub.add_argument(
        "--poll-interval", type=_positive, default=0.5, metavar="S", help="how often to look for new operations"
    )

    token = commands.add_parser(
        "token", parents=[common], help="add, list or revoke slot tokens", description="add, list or revoke slot tokens"
    )
    tokens = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    sub = add_command(tokens, "add", cmd_token_add, "add a slot and print its token (shown only this once)", parents)
    sub.add_argument("name")
    add_command(tokens, "list", cmd_token_list, "list the slots (never their tokens)", parents)
    sub = add_command(
        tokens, "revoke", cmd_token_revoke, "revoke a slot's token (a connected agent is disconnected)", parents
    )
    sub.add_argument("name")

    sub = add_command(commands, "run", cmd_run, "queue an operation for a slot and print its id", parents)
    sub.add_argument("slot")
    sub.add_argument("operation", help="e.g. system.info, networks.scan, hosts.inspect")
    sub.add_argument("--params", type=_params, default={}, metavar="JSON", help="a JSON object (default {})")
    sub.add_argument("--id", help="the operation's id (default: a new UUID)")
    sub.add_argument("--wait", action="store_true", help="wait for the result and print it as JSON")
    sub.add_argument("--timeout", type=_positive, default=60.0, metavar="S", help="with --wait (default 60)")

    sub = add_command(commands, "cancel", cmd_cancel, "ask for an operation to be cancelled; prints its state", parents)
    sub.add_argument("id")

    add_command(commands, "agents", cmd_agents, "list the slots and the agent last seen on each", parents)

    sub = add_command(commands, "operations", cmd_operations, "list operations and their states", parents)
    sub.add_argument("slot", nargs="?")

    sub = add_command(commands, "records", cmd_records, "print the records an operation has sent so far", parents)
    sub.add_argument("id")
    sub.add_argument("--json", action="store_true", help="one JSON object per line: seq and record")
    _configure_inventory(commands, parents)
    _configure_operators(commands, parents)


def _configure_inventory(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    inventory = commands.add_parser(
        "inventory", parents=parents[:1], help="build the inventory from stored records", description="the inventory"
    )
    actions = inventory.add_subparsers(dest="inventory_command", required=True, metavar="ACTION")
    sub = add_command(
        actions,
        "import",
        cmd_inventory_import,
        "build a networks.discover operation's snapshot from its records",
        parents,
    )
    sub.add_argument("id", help="the networks.discover operation's id")

    sub = add_command(commands, "nodes", cmd_nodes, "list the inventory's nodes", parents)
    sub.add_argument("--json", action="store_true", help="one JSON object per node and line")
    sub.add_argument("--since", metavar="SNAPSHOT", help="only nodes seen in SNAPSHOT (id or operation id) or later")

    sub = add_command(commands, "node", cmd_node, "show one node: keys, addresses, history", parents)
    sub.add_argument("id", type=int)
    sub.add_argument("--json", action="store_true", help="the node with its details, snapshots and history")

    add_command(commands, "snapshots", cmd_snapshots, "list the discoveries' snapshots", parents)

    sub = add_command(commands, "diff", cmd_diff, "compare two snapshots (default: the last two of a network)", parents)
    sub.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="A B: ids or operation ids")
    sub.add_argument("--json", action="store_true")

    sub = add_command(commands, "export", cmd_export, "every node, one row each", parents)
    sub.add_argument("--format", choices=("json", "csv", "netbox"), default="json")
    netbox = sub.add_argument_group("--format netbox (docs/inventory.md; the objects named must exist in NetBox)")
    netbox.add_argument("--out", type=Path, metavar="DIR", help="the folder of the CSV files")
    netbox.add_argument("--site", default="ksocket", help="the devices' site (default ksocket)")
    netbox.add_argument("--role", default="{kind}", help="the devices' role (default {kind}: the node's kind)")
    netbox.add_argument("--manufacturer", default="Generic", help="of the device type (default Generic)")
    netbox.add_argument(
        "--device-type", default="Discovered device", help="the device type's model (default 'Discovered device')"
    )

    sub = add_command(commands, "topology", cmd_topology, "a snapshot's learned edges and LLDP neighbours", parents)
    sub.add_argument("snapshot", nargs="?", metavar="SNAPSHOT", help="id or operation id (default: the newest)")
    sub.add_argument("--json", action="store_true", help="the documented JSON (docs/inventory.md)")
    _configure_schedules(commands, parents)


def _configure_schedules(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    sub = add_command(
        commands, "discover", cmd_discover, "queue a networks.discover for a slot, now or on a schedule", parents
    )
    sub.add_argument("slot")
    sub.add_argument("--seed", action="append", metavar="ADDRESS|CIDR|RANGE", help="where to start (repeatable)")
    sub.add_argument("--allow", action="append", metavar="SPEC", help="what the loop may reach (repeatable)")
    sub.add_argument("--deny", action="append", metavar="SPEC", help="what it may never reach (repeatable)")
    sub.add_argument("--expand-limit", type=int, metavar="N", help="probe learned networks of at most N addresses")
    sub.add_argument("--no-details", action="store_true", help="no hosts.inspect of the hosts found")
    sub.add_argument("--every", type=_duration, metavar="DURATION", help="store a schedule: 30m, 6h, 1d (at least 1m)")

    add_command(commands, "schedules", cmd_schedules, "list the discoveries' schedules", parents)
    sub = add_command(commands, "unschedule", cmd_unschedule, "remove a schedule", parents)
    sub.add_argument("id", type=int)
