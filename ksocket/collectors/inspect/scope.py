"""How much one inspection collects: ``full`` (``hosts.inspect``'s default) or ``learn`` (a discovery's).

``full`` is everything each inspector knows how to read. ``learn`` is what the discovery loop
reads from a host (:mod:`ksocket.collectors.discover.learn`): its neighbour, address and route
tables, its identity keys, its hostname and OS family where they cost nothing more. A discovery
with ``details: false`` inspects each host in ``learn`` scope, so that its one login per host and
protocol runs no package listing, no hardware inventory, no details table:

- SSH: the script keeps the identity, network, ``machine-id`` and ``product_uuid`` sections and
  drops CPU, memory, disks, filesystems, packages, the other DMI fields and uptime;
- SNMP: the system group, the interfaces' MACs, the address, ARP and route tables, LLDP's
  management addresses, the entities' class and serial number (the chassis serial), snmpEngineID;
- WinRM: the MSFT_Net* tables, the network adapters, Win32_ComputerSystemProduct and MachineGuid,
  in two PowerShell runs instead of four.

The document keeps its keys in either scope: what was not asked for is empty or null.
"""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    FULL = "full"
    LEARN = "learn"


SCOPES = tuple(scope.value for scope in Scope)
