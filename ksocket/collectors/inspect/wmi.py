"""What the WinRM inspector asks Windows (WMI/CIM through PowerShell) and how it reads the answers.

The queries are fixed PowerShell, sent as ``powershell.exe -EncodedCommand`` (the script as
base64 of UTF-16LE, as Windows expects). One script covers a group of sections; each section runs
inside its own ``try`` and prints ONE line, ``<section> <base64 of UTF-8 JSON>``, where the JSON is
``{"v": [objects]}`` or ``{"e": "error text"}``. Base64 keeps the output ASCII, so neither the
console code page nor line wrapping can damage it. ``Get-CimInstance`` is used where it exists
(PowerShell 3.0+), ``Get-WmiObject`` otherwise; ``ConvertTo-Json`` needs PowerShell 3.0
(Windows Server 2012, or 2008 R2 with WMF 3.0 or later).

The network tables (neighbours, addresses, routes: what ``Get-NetNeighbor``, ``Get-NetIPAddress``
and ``Get-NetRoute`` show) are the ``MSFT_Net*`` classes of ``root/StandardCimv2`` (Windows 8 /
Server 2012 and later; older hosts answer with an error for those sections). The identity keys are
read, never written: ``MachineGuid`` under ``HKLM\\SOFTWARE\\Microsoft\\Cryptography`` and the
SMBIOS UUID of ``Win32_ComputerSystemProduct``.

In scope ``learn`` (:mod:`~ksocket.collectors.inspect.scope`) only :data:`LEARN_GROUPS` run: the
network tables and adapters and the two identity keys, in two PowerShell processes instead of four.

Installed software is read from the Uninstall registry keys (64- and 32-bit views, without system
components and updates), not from Win32_Product, which is slow and makes MSI re-check every
package it lists.

:func:`parse_output` turns a script's stdout into raw objects per section and an error per
section that is missing or unreadable; :func:`normalise` turns one section's objects into the
document's shape (module :mod:`ksocket.collectors.inspect.winrm`), reading every property
defensively: a value of the wrong type becomes ``null``, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ksocket.collectors.inspect.base import server_text
from ksocket.collectors.inspect.scope import Scope
from ksocket.nesting import deep_parse

Document = dict[str, Any]

MAX_TEXT = 1024  # a longer string property is cut here
MAX_ITEMS = 20_000  # objects kept per section

# --- the PowerShell ---------------------------------------------------------------------------

PRELUDE = (
    "$ProgressPreference='SilentlyContinue';$ErrorActionPreference='Stop'\n"
    "function W($c,$p,$n='root\\cimv2'){if(Get-Command Get-CimInstance -EA 0){$o=Get-CimInstance -Namespace $n "
    "-ClassName $c}else{$o=Get-WmiObject -Namespace $n -Class $c};$o|Select-Object -Property $p}\n"
    "function S($n,$b){try{$j=ConvertTo-Json -Compress -Depth 4 -InputObject @{v=@(& $b)}}"
    'catch{$j=ConvertTo-Json -Compress -InputObject @{e="$_"}}\n'
    "[Console]::Out.WriteLine($n+' '+[Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($j)))}\n"
)

UNINSTALL = "\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\*"
NET = "root\\StandardCimv2"  # the namespace of the MSFT_Net* classes

QUERIES: dict[str, str] = {
    "os": "W Win32_OperatingSystem Caption,Version,BuildNumber,OSArchitecture,CSDVersion,SerialNumber,"
    "InstallDate,LastBootUpTime,TotalVisibleMemorySize,FreePhysicalMemory,Locale,RegisteredUser,Organization,"
    "WindowsDirectory",
    "computerSystem": "W Win32_ComputerSystem Name,DNSHostName,Domain,PartOfDomain,Workgroup,Manufacturer,Model,"
    "SystemType,TotalPhysicalMemory,NumberOfProcessors,NumberOfLogicalProcessors",
    "bios": "W Win32_BIOS Manufacturer,SMBIOSBIOSVersion,Version,SerialNumber,ReleaseDate",
    "processors": "W Win32_Processor DeviceID,Name,Manufacturer,NumberOfCores,NumberOfLogicalProcessors,"
    "MaxClockSpeed,AddressWidth,ProcessorId",
    "memory": "W Win32_PhysicalMemory BankLabel,DeviceLocator,Capacity,Speed,Manufacturer,PartNumber,SerialNumber",
    "disks": "W Win32_LogicalDisk DeviceID,DriveType,FileSystem,Size,FreeSpace,VolumeName,VolumeSerialNumber",
    "networkAdapters": "W Win32_NetworkAdapterConfiguration Index,Description,MACAddress,IPEnabled,IPAddress,"
    "IPSubnet,DefaultIPGateway,DNSServerSearchOrder,DHCPEnabled,DHCPServer,DNSHostName,DNSDomain|?{$_.MACAddress}",
    "software": f'Get-ItemProperty "HKLM:\\SOFTWARE{UNINSTALL}","HKLM:\\SOFTWARE\\WOW6432Node{UNINSTALL}" -EA 0|'
    "?{$_.DisplayName -and $_.SystemComponent -ne 1 -and !$_.ParentKeyName}|"
    "Select-Object DisplayName,DisplayVersion,Publisher,InstallDate,PSChildName",
    "updates": "W Win32_QuickFixEngineering HotFixID,Description,InstalledOn,InstalledBy",
    "computerSystemProduct": "W Win32_ComputerSystemProduct UUID,IdentifyingNumber,Vendor,Name",
    "cryptography": "Get-ItemProperty 'HKLM:\\SOFTWARE\\Microsoft\\Cryptography' -Name MachineGuid|"
    "Select-Object MachineGuid",
    "neighbors": f"W MSFT_NetNeighbor IPAddress,LinkLayerAddress,State,InterfaceAlias,InterfaceIndex {NET}",
    "ipAddresses": f"W MSFT_NetIPAddress IPAddress,PrefixLength,InterfaceAlias,InterfaceIndex {NET}",
    "routes": f"W MSFT_NetRoute DestinationPrefix,NextHop,InterfaceAlias,InterfaceIndex,RouteMetric {NET}",
}

# One PowerShell process per group: a query that hangs (Win32_QuickFixEngineering can take
# minutes on a busy host) costs only its own group.
GROUPS: tuple[tuple[str, ...], ...] = (
    ("os", "computerSystem", "bios", "processors", "memory", "computerSystemProduct", "cryptography"),
    ("disks", "networkAdapters"),
    ("neighbors", "ipAddresses", "routes"),
    ("software", "updates"),
)
LEARN_GROUPS: tuple[tuple[str, ...], ...] = (
    ("computerSystemProduct", "cryptography", "networkAdapters"),
    ("neighbors", "ipAddresses", "routes"),
)
"""Scope ``learn``: the identity keys and the tables a discovery reads; no Win32 inventory class, no software."""
SECTIONS: tuple[str, ...] = tuple(name for group in GROUPS for name in group)
LIST_SECTIONS = frozenset(
    {"processors", "memory", "disks", "networkAdapters", "neighbors", "ipAddresses", "routes", "software", "updates"}
)
POWERSHELL_ARGS = ("-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand")
MAX_COMMAND_LINE = 8191  # cmd.exe's limit on a command line


def groups(scope: Scope) -> tuple[tuple[str, ...], ...]:
    """The PowerShell runs of an inspection in ``scope``, each a group of sections."""
    return GROUPS if scope is Scope.FULL else LEARN_GROUPS


def script(sections: Iterable[str]) -> str:
    """The PowerShell script that prints one line per section."""
    return PRELUDE + "".join(f"S '{name}' {{{QUERIES[name]}}}\n" for name in sections)


def encode(text: str) -> str:
    """``-EncodedCommand``'s argument: base64 of UTF-16LE."""
    return base64.b64encode(text.encode("utf-16-le")).decode("ascii")


def decode(encoded: str) -> str:
    return base64.b64decode(encoded).decode("utf-16-le")


def command_line(sections: Iterable[str]) -> tuple[str, list[str]]:
    """The command and arguments that run ``sections`` (a WinRS command, so under cmd.exe's limit)."""
    arguments = [*POWERSHELL_ARGS, encode(script(sections))]
    length = len("powershell.exe ") + len(" ".join(arguments))
    assert length < MAX_COMMAND_LINE, f"the PowerShell for {sections} is too long ({length})"
    return "powershell.exe", arguments


def parse_output(stdout: bytes, sections: Sequence[str]) -> tuple[dict[str, list[Any]], list[Document]]:
    """(objects per section, errors) from a script's stdout; every section asked for is in one of them."""
    found: dict[str, list[Any]] = {}
    errors: list[Document] = []
    for line in stdout.decode("ascii", errors="replace").splitlines():
        name, _, payload = line.strip().partition(" ")
        if name not in sections or name in found:
            continue
        try:
            with deep_parse():
                parsed = json.loads(base64.b64decode(payload.strip(), validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep JSON: RecursionError
            errors.append({"section": name, "message": f"unreadable output: {type(exc).__name__}"})
            found[name] = []
            continue
        if isinstance(parsed, dict) and isinstance(parsed.get("v"), list):
            found[name] = parsed["v"][:MAX_ITEMS]
        elif isinstance(parsed, dict) and "e" in parsed:
            errors.append({"section": name, "message": server_text(str(parsed["e"]), MAX_TEXT)})
            found[name] = []
        else:
            errors.append({"section": name, "message": "unreadable output: not the expected JSON object"})
            found[name] = []
    for name in sections:
        if name not in found:
            errors.append({"section": name, "message": "no output for this section"})
    return {name: objects for name, objects in found.items() if name in sections}, errors


# --- reading properties defensively ------------------------------------------------------------


def _clip(text: str) -> str:
    return text[:MAX_TEXT]


def _text(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    if isinstance(value, str):
        return _clip(value.strip()) or None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    return None


def _int(item: Mapping[str, Any], key: str) -> int | None:
    value = item.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and (digits := re.fullmatch(r"\s*([0-9]{1,20})\s*", value)):
        return int(digits[1])  # not str.isdigit: "²" is a digit to it, and int() refuses 4300 digits and more
    return None


def _bool(item: Mapping[str, Any], key: str) -> bool | None:
    value = item.get(key)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _texts(item: Mapping[str, Any], key: str) -> list[str]:
    value = item.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [_clip(part.strip()) for part in value[:256] if isinstance(part, str) and part.strip()]


DOTNET_DATE = re.compile(r"^/Date\((?P<ms>-?\d+)(?P<offset>[+-]\d{4})?\)/$")
DMTF_DATE = re.compile(r"^(?P<stamp>\d{14})\.\d{6}(?P<sign>[+-])(?P<minutes>\d{3})$")


def _date(item: Mapping[str, Any], key: str) -> str | None:
    """A date in ISO 8601, from any of the forms PowerShell and WMI print.

    ``/Date(ms)/`` (ConvertTo-Json of a DateTime in Windows PowerShell 5.1, also wrapped as
    ``{"value": …, "DateTime": …}``), ISO strings (PowerShell 7), DMTF ``yyyymmddHHMMSS.ffffff+UUU``
    (Get-WmiObject), ``yyyymmdd`` (the Uninstall keys) and ``M/D/YYYY`` (Win32_QuickFixEngineering).
    """
    value = item.get(key)
    if isinstance(value, dict):
        value = value.get("value")
    if not isinstance(value, str):
        return None
    value = value.strip()
    try:
        if match := DOTNET_DATE.match(value):
            stamp = datetime.datetime.fromtimestamp(int(match["ms"]) / 1000, datetime.UTC)
            return stamp.isoformat().replace("+00:00", "Z")
        if match := DMTF_DATE.match(value):
            minutes = int(match["minutes"]) * (1 if match["sign"] == "+" else -1)
            zone = datetime.timezone(datetime.timedelta(minutes=minutes))
            return datetime.datetime.strptime(match["stamp"], "%Y%m%d%H%M%S").replace(tzinfo=zone).isoformat()
        if re.fullmatch(r"\d{8}", value):
            return datetime.datetime.strptime(value, "%Y%m%d").date().isoformat()
        if re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", value):
            return datetime.datetime.strptime(value, "%m/%d/%Y").date().isoformat()
        if re.match(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _mac(item: Mapping[str, Any], key: str) -> str | None:
    text = _text(item, key)
    if text is None or not re.fullmatch(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}", text):
        return None
    return text.replace("-", ":").lower()


def _ip(item: Mapping[str, Any], key: str) -> str | None:
    """An IPv4 or IPv6 address, without its ``%zone``; None when it is not one."""
    text = _text(item, key)
    try:
        return None if text is None else str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def _addresses(addresses: list[str], subnets: list[str]) -> list[str]:
    """``IPAddress`` and ``IPSubnet`` side by side (a mask for IPv4, a prefix length for IPv6) as CIDR."""
    found = []
    for position, text in enumerate(addresses):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        subnet = subnets[position] if position < len(subnets) else ""
        try:
            prefix = ipaddress.ip_network(f"{address}/{subnet}", strict=False).prefixlen if subnet else None
        except ValueError:
            prefix = None
        found.append(str(address) if prefix is None else f"{address}/{prefix}")
    return found


DRIVE_TYPES = {0: "unknown", 1: "noRootDirectory", 2: "removable", 3: "local", 4: "network", 5: "optical", 6: "ramDisk"}


def _os(item: Mapping[str, Any]) -> Document:
    visible = _int(item, "TotalVisibleMemorySize")
    free = _int(item, "FreePhysicalMemory")
    return {
        "name": _text(item, "Caption"),
        "version": _text(item, "Version"),
        "buildNumber": _text(item, "BuildNumber"),
        "architecture": _text(item, "OSArchitecture"),
        "servicePack": _text(item, "CSDVersion"),
        "serialNumber": _text(item, "SerialNumber"),
        "installDate": _date(item, "InstallDate"),
        "lastBootUpTime": _date(item, "LastBootUpTime"),
        "totalVisibleMemory": None if visible is None else visible * 1024,  # WMI says KiB
        "freePhysicalMemory": None if free is None else free * 1024,
        "locale": _text(item, "Locale"),
        "registeredUser": _text(item, "RegisteredUser"),
        "organization": _text(item, "Organization"),
        "windowsDirectory": _text(item, "WindowsDirectory"),
    }


def _computer_system(item: Mapping[str, Any]) -> Document:
    return {
        "name": _text(item, "Name"),
        "dnsHostName": _text(item, "DNSHostName"),
        "domain": _text(item, "Domain"),
        "partOfDomain": _bool(item, "PartOfDomain"),
        "workgroup": _text(item, "Workgroup"),
        "manufacturer": _text(item, "Manufacturer"),
        "model": _text(item, "Model"),
        "systemType": _text(item, "SystemType"),
        "totalPhysicalMemory": _int(item, "TotalPhysicalMemory"),
        "processors": _int(item, "NumberOfProcessors"),
        "logicalProcessors": _int(item, "NumberOfLogicalProcessors"),
    }


def _bios(item: Mapping[str, Any]) -> Document:
    return {
        "manufacturer": _text(item, "Manufacturer"),
        "version": _text(item, "SMBIOSBIOSVersion") or _text(item, "Version"),
        "serialNumber": _text(item, "SerialNumber"),
        "releaseDate": _date(item, "ReleaseDate"),
    }


def _processor(item: Mapping[str, Any]) -> Document:
    return {
        "deviceId": _text(item, "DeviceID"),
        "name": _text(item, "Name"),
        "manufacturer": _text(item, "Manufacturer"),
        "cores": _int(item, "NumberOfCores"),
        "logicalProcessors": _int(item, "NumberOfLogicalProcessors"),
        "maxClockSpeed": _int(item, "MaxClockSpeed"),  # MHz
        "addressWidth": _int(item, "AddressWidth"),
        "processorId": _text(item, "ProcessorId"),
    }


def _memory(item: Mapping[str, Any]) -> Document:
    return {
        "bank": _text(item, "BankLabel"),
        "locator": _text(item, "DeviceLocator"),
        "capacity": _int(item, "Capacity"),
        "speed": _int(item, "Speed"),
        "manufacturer": _text(item, "Manufacturer"),
        "partNumber": _text(item, "PartNumber"),
        "serialNumber": _text(item, "SerialNumber"),
    }


def _disk(item: Mapping[str, Any]) -> Document:
    kind = _int(item, "DriveType")
    return {
        "deviceId": _text(item, "DeviceID"),
        "type": None if kind is None else DRIVE_TYPES.get(kind, str(kind)),
        "fileSystem": _text(item, "FileSystem"),
        "size": _int(item, "Size"),
        "freeSpace": _int(item, "FreeSpace"),
        "volumeName": _text(item, "VolumeName"),
        "volumeSerialNumber": _text(item, "VolumeSerialNumber"),
    }


def _network_adapter(item: Mapping[str, Any]) -> Document:
    return {
        "index": _int(item, "Index"),
        "description": _text(item, "Description"),
        "mac": _mac(item, "MACAddress"),
        "ipEnabled": _bool(item, "IPEnabled"),
        "addresses": _addresses(_texts(item, "IPAddress"), _texts(item, "IPSubnet")),
        "gateways": _texts(item, "DefaultIPGateway"),
        "dnsServers": _texts(item, "DNSServerSearchOrder"),
        "dhcpEnabled": _bool(item, "DHCPEnabled"),
        "dhcpServer": _text(item, "DHCPServer"),
        "dnsHostName": _text(item, "DNSHostName"),
        "dnsDomain": _text(item, "DNSDomain"),
    }


def _computer_system_product(item: Mapping[str, Any]) -> Document:
    return {
        "uuid": _text(item, "UUID"),
        "identifyingNumber": _text(item, "IdentifyingNumber"),
        "vendor": _text(item, "Vendor"),
        "name": _text(item, "Name"),
    }


def _cryptography(item: Mapping[str, Any]) -> Document:
    return {"machineGuid": _text(item, "MachineGuid")}


NEIGHBOR_STATES = {
    0: "unreachable",
    1: "incomplete",
    2: "probe",
    3: "delay",
    4: "stale",
    5: "reachable",
    6: "permanent",
}


def _neighbor(item: Mapping[str, Any]) -> Document:
    state = _int(item, "State")
    return {
        "address": _ip(item, "IPAddress"),
        "mac": _mac(item, "LinkLayerAddress"),
        "state": None if state is None else NEIGHBOR_STATES.get(state, str(state)),
        "interface": _text(item, "InterfaceAlias"),
        "ifIndex": _int(item, "InterfaceIndex"),
    }


def _ip_address(item: Mapping[str, Any]) -> Document:
    prefix = _int(item, "PrefixLength")
    return {
        "address": _ip(item, "IPAddress"),
        "prefixLength": prefix if prefix is not None and prefix <= 128 else None,
        "interface": _text(item, "InterfaceAlias"),
        "ifIndex": _int(item, "InterfaceIndex"),
    }


def _route(item: Mapping[str, Any]) -> Document:
    try:
        destination: str | None = str(ipaddress.ip_network(_text(item, "DestinationPrefix") or "", strict=False))
    except ValueError:
        destination = None
    next_hop = _ip(item, "NextHop")
    metric = _int(item, "RouteMetric")
    return {
        "destination": destination,
        "nextHop": None if next_hop is None or ipaddress.ip_address(next_hop).is_unspecified else next_hop,
        "interface": _text(item, "InterfaceAlias"),
        "ifIndex": _int(item, "InterfaceIndex"),
        "metric": metric if metric is not None and metric >= 0 else None,  # a uint32
    }


def _software(item: Mapping[str, Any]) -> Document:
    return {
        "name": _text(item, "DisplayName"),
        "version": _text(item, "DisplayVersion"),
        "publisher": _text(item, "Publisher"),
        "installDate": _date(item, "InstallDate"),
        "id": _text(item, "PSChildName"),
    }


def _update(item: Mapping[str, Any]) -> Document:
    return {
        "id": _text(item, "HotFixID"),
        "description": _text(item, "Description"),
        "installedOn": _date(item, "InstalledOn"),
        "installedBy": _text(item, "InstalledBy"),
    }


READERS: dict[str, Callable[[Mapping[str, Any]], Document]] = {
    "os": _os,
    "computerSystem": _computer_system,
    "bios": _bios,
    "processors": _processor,
    "memory": _memory,
    "disks": _disk,
    "networkAdapters": _network_adapter,
    "software": _software,
    "updates": _update,
    "computerSystemProduct": _computer_system_product,
    "cryptography": _cryptography,
    "neighbors": _neighbor,
    "ipAddresses": _ip_address,
    "routes": _route,
}


def normalise(section: str, objects: list[Any]) -> Document | list[Document] | None:
    """One section in the document's shape: a list, or one object (``None`` when there is none)."""
    read = READERS[section]
    items = [read(item) for item in objects if isinstance(item, dict)]
    if section in LIST_SECTIONS:
        return items
    return items[0] if items else None


def empty(section: str) -> list[Document] | None:
    return [] if section in LIST_SECTIONS else None
