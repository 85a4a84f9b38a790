"""The inventory as the CSV files of NetBox's bulk import (``hub export --format netbox --out DIR``).

Four files, imported in this order (NetBox: each object list's *Import*, e.g. ``/dcim/devices/import/``):

- ``devices.csv``: one device per node (name, role, manufacturer, device type, status, site, serial,
  description, and the node's id in the custom field ``cf_ksocket_node``);
- ``interfaces.csv``: one interface per node, ``ksocket0`` of type ``other``;
- ``mac-addresses.csv``: the node's MACs on that interface;
- ``ip-addresses.csv``: the node's addresses on that interface (``/32``, ``/128``).

The columns are fields of NetBox 4.6's import forms (``netbox/dcim/forms/bulk_import.py``:
``DeviceImportForm``, ``InterfaceImportForm``, ``MACAddressImportForm``; ``netbox/ipam/forms/
bulk_import.py``: ``IPAddressImportForm``; release 4.6.8); a custom field is the column ``cf_NAME``.
Devices, interfaces and IP addresses refer to one another by device name, which is unique here.

A discovery does not say which of a node's interfaces holds which address, so every node gets one
interface that holds them all; the node's id (``cf_ksocket_node``, a custom field to create in NetBox
first, of type integer on devices) stays the same across exports, whatever its name.
"""

from __future__ import annotations

import csv
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ksocket.hub.inventorystore import NodeRow

CUSTOM_FIELD: Final = "cf_ksocket_node"
INTERFACE: Final = "ksocket0"
STATUS: Final = "active"
"""Of devices and IP addresses: the one status both NetBox's devices and its IP addresses have that says
"seen in service"."""
DEVICE_COLUMNS: Final = (
    "name",
    "role",
    "manufacturer",
    "device_type",
    "status",
    "site",
    "serial",
    "description",
    CUSTOM_FIELD,
)
INTERFACE_COLUMNS: Final = ("device", "name", "type", "description")
MAC_COLUMNS: Final = ("mac_address", "device", "interface", "is_primary")
IP_COLUMNS: Final = ("address", "status", "device", "interface", "is_primary")
FILES: Final = {
    "devices.csv": DEVICE_COLUMNS,
    "interfaces.csv": INTERFACE_COLUMNS,
    "mac-addresses.csv": MAC_COLUMNS,
    "ip-addresses.csv": IP_COLUMNS,
}
"""Each file and its columns, in the order to import them."""
BY_KIND: Final = "{kind}"
"""The default role: the node's device kind (router, switch, firewall, printer, hypervisor, host, unknown)."""


@dataclass(frozen=True)
class Options:
    """What NetBox requires and a discovery cannot know: the objects must exist in NetBox beforehand."""

    site: str = "ksocket"
    role: str = BY_KIND
    """A role's name; ``{kind}`` stands for the node's kind."""
    manufacturer: str = "Generic"
    device_type: str = "Discovered device"


Rows = list[tuple[str, ...]]


def device_names(nodes: Sequence[NodeRow]) -> dict[int, str]:
    """A name per node, unique (NetBox compares them without case): its first name, else its first address,
    else ``node-ID``; a name two nodes share gets ``-ID`` behind it."""
    base = {node.id: (node.fields.names[:1] or node.fields.addresses[:1] or (f"node-{node.id}",))[0] for node in nodes}
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    return {node_id: name if counts[name.casefold()] == 1 else f"{name}-{node_id}" for node_id, name in base.items()}


def tables(nodes: Sequence[NodeRow], keys: dict[int, list[tuple[str, str]]], options: Options) -> dict[str, Rows]:
    """Each file's rows (without the header), the nodes in the order given."""
    names = device_names(nodes)
    devices: Rows = []
    interfaces: Rows = []
    macs: Rows = []
    addresses: Rows = []
    for node in nodes:
        name, fields = names[node.id], node.fields
        serial = next((value for kind, value in keys.get(node.id, []) if kind == "chassis-serial"), "")
        role = options.role.replace(BY_KIND, fields.kind)
        description = " ".join(part for part in (fields.vendor, fields.os) if part)
        devices.append(
            (name, role, options.manufacturer, options.device_type, STATUS, options.site, serial,
             description, str(node.id))
        )  # fmt: skip
        interfaces.append((name, INTERFACE, "other", "the addresses ksocket's discovery saw"))
        macs += [(mac, name, INTERFACE, _flag(index == 0)) for index, mac in enumerate(fields.macs)]
        addresses += _addresses(name, fields.addresses)
    return {
        "devices.csv": devices,
        "interfaces.csv": interfaces,
        "mac-addresses.csv": macs,
        "ip-addresses.csv": addresses,
    }


def _addresses(device: str, addresses: Iterable[str]) -> Rows:
    """The device's addresses with their host prefix; the first of each family is its primary one."""
    rows: Rows = []
    primary: set[int] = set()
    for text in addresses:
        address = ipaddress.ip_address(text)
        rows.append(
            (f"{address}/{address.max_prefixlen}", STATUS, device, INTERFACE, _flag(address.version not in primary))
        )
        primary.add(address.version)
    return rows


def _flag(value: bool) -> str:
    return "true" if value else "false"


def write(folder: Path, files: dict[str, Rows]) -> list[Path]:
    """Writes each file of :data:`FILES` with its header into ``folder`` (created); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, columns in FILES.items():
        path = folder / name
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(files[name])
        written.append(path)
    return written
