"""``ksocket inspect ADDRESS``: the ``hosts.inspect`` operation run here, its result printed.

``--protocols ssh,snmp`` narrows the protocols (all three by default); ``--json`` prints the
result document as the hub would receive it; ``--timeout`` bounds each protocol. The exit status
is 0 when at least one protocol collected something, 1 when none did.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ksocket.cli.common import load_settings
from ksocket.collectors.base import Environment
from ksocket.collectors.inspect import DEFAULT_PROTOCOL_TIMEOUT, MAX_PROTOCOL_TIMEOUT, PROTOCOLS, hosts, parsers
from ksocket.config import Settings


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IPv4 or IPv6 address") from None


def _protocols(value: str) -> list[str]:
    chosen = [item.strip().lower() for item in value.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in PROTOCOLS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(PROTOCOLS)} (comma-separated)")
    return list(dict.fromkeys(chosen))


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= MAX_PROTOCOL_TIMEOUT:
        raise argparse.ArgumentTypeError(f"a number of seconds in (0, {MAX_PROTOCOL_TIMEOUT:g}]")
    return seconds


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds ``inspect``'s arguments and handler to its sub-parser."""
    parser.set_defaults(handler=run)
    parser.add_argument("address", type=_address, help="the host's IPv4 or IPv6 address")
    parser.add_argument(
        "--protocols",
        type=_protocols,
        metavar="LIST",
        help=f"comma-separated protocols to try (default {','.join(PROTOCOLS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the result document as JSON")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help=f"seconds each protocol may take (default {DEFAULT_PROTOCOL_TIMEOUT:g})",
    )


def run(args: argparse.Namespace) -> int:
    return run_inspect(args, load_settings(args))


def run_inspect(args: argparse.Namespace, settings: Settings) -> int:
    """The ``inspect`` command: inspects one host with the settings' credentials and prints the result."""
    inspection = hosts.HostInspection(Environment.from_settings(settings))
    result = asyncio.run(inspection.inspect_host(args.address, args.protocols, timeout=args.timeout))
    if args.json:
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_summary(result, sys.stdout)
    collected = [kind for kind in PROTOCOLS if kind in result and "error" not in result[kind]]
    return 0 if collected else 1


# --- the readable summary ----------------------------------------------------------------------


def _size(count: object) -> str:
    if not isinstance(count, int | float) or isinstance(count, bool):
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} TiB"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "?"
    minutes = int(seconds) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    return f"{days} d {hours} h" if days else f"{hours} h {minutes} min"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _ssh_lines(section: dict[str, Any]) -> list[str]:
    os_info = section.get("os") or {}
    cpu = section.get("cpu") or {}
    memory = section.get("memory") or {}
    dmi = section.get("dmi") or {}
    privileges = section.get("privileges") or {}
    name = os_info.get("pretty_name") or " ".join(filter(None, [os_info.get("name"), os_info.get("version")]))
    lines = [
        f"host {section.get('hostname') or '?'}, {name or '?'} ({os_info.get('family') or '?'})"
        f", kernel {os_info.get('kernel') or '?'} {os_info.get('architecture') or ''}".rstrip(),
        f"CPU {cpu.get('model') or '?'} x {cpu.get('count') or '?'}, memory {_size(memory.get('total_bytes'))}"
        f", up {_duration(section.get('uptime_seconds'))}",
        ", ".join(
            [
                _plural(len(section.get("disks") or []), "block device"),
                _plural(len(section.get("filesystems") or []), "filesystem"),
                _plural(len(section.get("interfaces") or []), "interface"),
                _plural(len(section.get("neighbors") or []), "neighbour"),
                _plural(len(section.get("routes") or []), "route"),
                _plural(len(section.get("packages") or []), "package"),
            ]
        ),
    ]
    if dmi:
        hardware = " ".join(filter(None, [dmi.get("sys_vendor"), dmi.get("product_name")]))
        serial = dmi.get("product_serial")
        lines.append(f"hardware {hardware or '?'}" + (f", serial {serial}" if serial else ""))
    who = privileges.get("user") or "?"
    lines.append(f"as {who}" + (" (root)" if privileges.get("root") else " (sudo)" if privileges.get("sudo") else ""))
    return lines


def _generic_lines(section: dict[str, Any]) -> list[str]:
    scalars = [
        f"{key} {value}"
        for key, value in section.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool) and key != "credential" and value != ""
    ]
    counts = [f"{len(value)} {key}" for key, value in section.items() if isinstance(value, list) and key != "warnings"]
    lines = []
    if scalars:
        lines.append(", ".join(scalars[:6]))
    if counts:
        lines.append(", ".join(counts))
    return lines


def _write(out: TextIO, indent: str, text: str) -> None:
    """One line of the summary; the text may quote what a host said, so it is printed inert."""
    out.write(f"{indent}{parsers.clean(text, 4096)}\n")


def print_summary(result: dict[str, Any], out: TextIO) -> None:
    """A few lines per protocol: what was found, or why not."""
    _write(out, "", f"{result.get('address', '?')}")
    for kind in PROTOCOLS:
        if kind not in result:
            continue
        section = result[kind]
        if not isinstance(section, dict):
            continue
        error = section.get("error")
        if isinstance(error, dict):
            _write(out, "  ", f"{kind:6} {error.get('code', '?')}: {error.get('message', '')}")
            continue
        _write(out, "  ", f"{kind:6} ok (credential {section.get('credential', '?')})")
        lines: Sequence[str] = _ssh_lines(section) if kind == "ssh" else _generic_lines(section)
        for line in lines:
            _write(out, "         ", line)
        for warning in section.get("warnings") or []:
            _write(out, "         ", f"warning: {warning}")
