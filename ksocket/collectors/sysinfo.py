"""``system.info``'s network part: the interfaces and the routing table, read from the kernel.

The kernel is asked through iproute2's JSON output (``ip -j -d link``, ``ip -j addr``,
``ip -j route``), nothing else. :func:`interfaces_part` and :func:`routes_part` are two of the
parts :mod:`ksocket.collectors.system` merges into the ``system.info`` document.

An interface's ``kind`` is one of ``loopback``, ``ethernet``, ``point-to-point`` (a link with no
link layer and one peer: ppp, a tun device in tun mode, …), ``tunnel`` (a kernel encapsulation:
ipip, GRE, SIT, VTI, WireGuard, …) or ``other``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from ksocket.collectors.base import Document, OperationFailed
from ksocket.protocol import ErrorCode

IP = shutil.which("ip") or "/usr/sbin/ip"

TUNNEL_LINK_TYPES = frozenset({"ipip", "gre", "sit", "tunnel6", "ip6gre", "ip6tnl", "ipgre", "gre6"})
TUNNEL_DRIVERS = frozenset(
    {"ipip", "gre", "gretap", "sit", "vti", "vti6", "ip6tnl", "ip6gre", "ip6gretap", "wireguard", "ipvtap", "erspan"}
)
POINT_TO_POINT_LINK_TYPES = frozenset({"ppp", "none", "slip", "cslip", "rawip"})


def run_ip(*args: str) -> Any:
    """``ip -j ARGS`` parsed; an unusable iproute2 is an ``internal`` failure."""
    try:
        done = subprocess.run([IP, "-j", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise OperationFailed(ErrorCode.INTERNAL, f"ip {' '.join(args)}: {error}") from None
    if done.returncode != 0:
        raise OperationFailed(ErrorCode.INTERNAL, f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    try:
        return json.loads(done.stdout or "[]")
    except ValueError as error:
        raise OperationFailed(ErrorCode.INTERNAL, f"ip {' '.join(args)}: unreadable JSON ({error})") from None


def interface_kind(link_type: str, driver: str | None, flags: list[str]) -> str:
    """``loopback``, ``tunnel``, ``point-to-point``, ``ethernet`` or ``other``."""
    if link_type == "loopback" or "LOOPBACK" in flags:
        return "loopback"
    if link_type in TUNNEL_LINK_TYPES or (driver or "") in TUNNEL_DRIVERS:
        return "tunnel"
    if "POINTOPOINT" in flags or link_type in POINT_TO_POINT_LINK_TYPES:
        return "point-to-point"
    if link_type == "ether":
        return "ethernet"
    return "other"


def interfaces(links: list[dict[str, Any]] | None = None, addrs: list[dict[str, Any]] | None = None) -> list[Document]:
    """Every interface: name, index, MAC, MTU, up/down, kind, addresses with prefix (and peer)."""
    links = run_ip("-d", "link", "show") if links is None else links
    addrs = run_ip("addr", "show") if addrs is None else addrs
    addresses: dict[int, list[Document]] = {}
    for entry in addrs:
        for info in entry.get("addr_info", []):
            if not isinstance(info, dict) or "local" not in info:
                continue
            item: Document = {
                "address": info["local"],
                "prefixlen": info.get("prefixlen"),
                "family": "ipv4" if info.get("family") == "inet" else "ipv6",
                "scope": info.get("scope"),
            }
            if info.get("address") and info.get("address") != info["local"]:
                item["peer"] = info["address"]
            if info.get("broadcast"):
                item["broadcast"] = info["broadcast"]
            addresses.setdefault(int(entry.get("ifindex", -1)), []).append(item)
    result: list[Document] = []
    for link in links:
        flags = [str(flag) for flag in link.get("flags", [])]
        link_type = str(link.get("link_type", ""))
        info_kind = link.get("linkinfo", {}).get("info_kind") if isinstance(link.get("linkinfo"), dict) else None
        mac = (
            link.get("address")
            if link_type in ("ether", "loopback") or len(str(link.get("address", ""))) == 17
            else None
        )
        result.append(
            {
                "name": link.get("ifname"),
                "index": link.get("ifindex"),
                "mac": mac,
                "mtu": link.get("mtu"),
                "state": "up" if "UP" in flags else "down",
                "operState": str(link.get("operstate", "UNKNOWN")).lower(),
                "kind": interface_kind(link_type, info_kind, flags),
                "linkType": link_type,
                "driver": info_kind,
                "flags": flags,
                "master": link.get("master"),
                "addresses": addresses.get(int(link.get("ifindex", -2)), []),
            }
        )
    return result


def routes(entries: dict[str, list[dict[str, Any]]] | None = None) -> list[Document]:
    """The main routing table, IPv4 then IPv6: destination, gateway, interface, metric, source."""
    if entries is None:
        entries = {
            "ipv4": run_ip("-4", "route", "show", "table", "main"),
            "ipv6": run_ip("-6", "route", "show", "table", "main"),
        }
    result: list[Document] = []
    for family, table in entries.items():
        for entry in table:
            destination = str(entry.get("dst", ""))
            if destination == "default":
                destination = "0.0.0.0/0" if family == "ipv4" else "::/0"
            elif "/" not in destination and destination:
                destination += "/32" if family == "ipv4" else "/128"
            result.append(
                {
                    "destination": destination,
                    "gateway": entry.get("gateway"),
                    "interface": entry.get("dev"),
                    "metric": int(entry.get("metric", 0)),
                    "source": entry.get("prefsrc"),
                    "type": entry.get("type", "unicast"),
                    "protocol": entry.get("protocol"),
                    "scope": entry.get("scope"),
                    "family": family,
                }
            )
    return result


def interfaces_part() -> Document:
    return {"interfaces": interfaces()}


def routes_part() -> Document:
    return {"routes": routes()}
