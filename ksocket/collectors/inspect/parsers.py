"""Parsers for the output of the fixed commands the SSH inspector runs: text in, bounded dicts out.

Every function here is pure (no I/O) and total: whatever bytes a host sends back (garbage, a
truncated stream, an hostile package name, JSON nested a million deep) the result is a dict or a
list of dicts with strings of at most :data:`MAX_STRING` characters, lists of at most a fixed
number of items, and nothing that could raise. Nothing parsed here ever reaches a shell: the
inspector's commands are fixed text, and these values only go into the result document.

The combined script's output is split by :func:`split_sections` on marker lines carrying a nonce
the inspector chose (``:ksocket:<nonce>:<section>``), so command output cannot forge a section;
:func:`parse_report` turns the sections into the ``ssh`` section of a ``hosts.inspect`` result.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ksocket.nesting import deep_parse

MAX_STRING = 256  # characters in any one value
MAX_SECTION = 4 * 1024 * 1024  # characters of one section's text that are looked at
MAX_LINE = 4096  # characters of one line that are looked at
MAX_PACKAGES = 20000
MAX_INTERFACES = 512
MAX_ADDRESSES = 256  # per interface
MAX_ROUTES = 4096
MAX_NEIGHBORS = 4096
MAX_DISKS = 1024
MAX_FILESYSTEMS = 1024
MAX_CPUS = 4096

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5,19}$")
_NUMBER = re.compile(r"^[0-9]{1,20}$")

Document = dict[str, Any]


# --- small helpers -----------------------------------------------------------------------------


def clean(value: object, limit: int = MAX_STRING) -> str:
    """``value`` as one printable line of at most ``limit`` characters ('' for None or a non-string)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return ""
    text = _CONTROL.sub(" ", value[: limit * 4]).strip()
    return text[:limit].rstrip()


def _lines(text: str) -> Iterator[str]:
    """The lines of a section one at a time: a section of a million short lines is never a list."""
    for line in io.StringIO(text[:MAX_SECTION]):
        yield line.rstrip("\r\n")[:MAX_LINE]


def _int(value: object, low: int = 0, high: int = 2**63 - 1) -> int | None:
    """A non-negative integer in [low, high] from text or a JSON number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _NUMBER.match(value.strip()):
        number = int(value.strip())
    else:
        return None
    return number if low <= number <= high else None


def _float(value: str) -> float | None:
    try:
        number = float(value[:64])
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _mac(value: object) -> str:
    """A link-layer address in lower case with colons ('' when it is not one, or all zeros)."""
    text = clean(value, 64).lower().replace("-", ":")
    if not _MAC.match(text) or not text.strip("0:"):
        return ""
    return text


def _ip(value: object) -> str:
    """A normalised IPv4/IPv6 address ('' when ``value`` is not one)."""
    text = clean(value, 64)
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return ""


def _network(value: object) -> str:
    """``default`` or a normalised network (``10.0.0.0/8``, a host address as ``/32``), else ''."""
    text = clean(value, 64)
    if text == "default":
        return text
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return ""


def _json(text: str) -> Any:
    """The JSON value in ``text`` or None (garbage, too deep, too big)."""
    text = text.strip()
    if not text or text[0] not in "[{" or len(text) > MAX_SECTION:
        return None
    try:
        with deep_parse():
            return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _dicts(value: Any, limit: int) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value[: limit * 2]:
            if isinstance(item, dict):
                yield item


def _take(items: Iterable[Document], limit: int) -> list[Document]:
    result: list[Document] = []
    for item in items:
        if len(result) >= limit:
            break
        result.append(item)
    return result


# --- sections ----------------------------------------------------------------------------------


def marker(nonce: str) -> str:
    """The prefix of a section's marker line (the script prints it, the parser looks for it)."""
    return f":ksocket:{nonce}:"


def split_sections(text: str, nonce: str) -> dict[str, str]:
    """The text of each section by name, cut at :data:`MAX_SECTION` characters; a repeated
    section keeps its first text. The output is searched for marker lines, never split into
    lines as a whole: megabytes of short lines would cost a hundred times their size."""
    markers = re.compile(rf"^{re.escape(marker(nonce))}(.*)$", re.MULTILINE)
    sections: dict[str, str] = {}
    found = markers.search(text)
    while found is not None:
        following = markers.search(text, found.end())
        start = found.end() + 1  # after the marker line's newline
        end = len(text) if following is None else following.start() - 1  # before the next one's
        name = clean(found[1], 32)
        if name not in sections:
            sections[name] = text[start : max(start, min(end, start + MAX_SECTION))]
        found = following
    return sections


# --- identity and OS ---------------------------------------------------------------------------


def parse_id(text: str) -> Document:
    """``id -u; id -un``: the uid and user name."""
    lines = list(itertools.islice(filter(None, (line.strip() for line in _lines(text))), 2))
    uid = _int(lines[0], 0, 2**32) if lines else None
    user = clean(lines[1], 64) if len(lines) > 1 else ""
    return {"uid": uid, "user": user, "root": uid == 0}


def parse_hostname(text: str) -> str:
    for line in _lines(text):
        name = clean(line, 255)
        if name:
            return name.split()[0]
    return ""


def parse_uname(text: str) -> Document:
    """``uname -s; uname -r; uname -m; uname -v``, one per line."""
    lines = [*itertools.islice(filter(None, map(clean, _lines(text))), 4), "", "", "", ""]
    return {"kernel_name": lines[0], "kernel": lines[1], "architecture": lines[2], "kernel_version": lines[3]}


_OS_KEYS = {
    "ID": "id",
    "ID_LIKE": "id_like",
    "NAME": "name",
    "VERSION": "version",
    "VERSION_ID": "version_id",
    "VERSION_CODENAME": "codename",
    "PRETTY_NAME": "pretty_name",
}


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
        if value and "\\" in value:
            value = re.sub(r"\\([\\\"$`])", r"\1", value)
    return value


def parse_os_release(text: str) -> Document:
    """``/etc/os-release``: id, id_like, name, version, version_id, codename, pretty_name."""
    result: Document = {}
    for line in _lines(text):
        key, sep, value = line.strip().partition("=")
        if sep and key in _OS_KEYS and _OS_KEYS[key] not in result:
            result[_OS_KEYS[key]] = clean(_unquote(value))
    if "id" in result:
        result["id"] = result["id"].lower()
    return result


def parse_release_files(text: str) -> dict[str, str]:
    """``PATH<TAB>first line`` for /etc/redhat-release and friends."""
    result: dict[str, str] = {}
    for line in _lines(text):
        path, sep, value = line.partition("\t")
        name = path.rsplit("/", 1)[-1].strip()
        if sep and re.fullmatch(r"[a-zA-Z_-]{1,32}", name) and len(result) < 16:
            result[name] = clean(value)
    return result


_FAMILIES = {
    "debian": "debian",
    "ubuntu": "debian",
    "raspbian": "debian",
    "linuxmint": "debian",
    "rhel": "redhat",
    "fedora": "redhat",
    "centos": "redhat",
    "rocky": "redhat",
    "almalinux": "redhat",
    "ol": "redhat",
    "amzn": "redhat",
    "suse": "suse",
    "sles": "suse",
    "opensuse": "suse",
    "opensuse-leap": "suse",
    "alpine": "alpine",
    "arch": "archlinux",
    "gentoo": "gentoo",
}


def os_family(os_release: Document, release_files: dict[str, str], kernel_name: str) -> str:
    """debian, redhat, suse, alpine, archlinux, gentoo, else the kernel's name in lower case."""
    for name in [os_release.get("id", ""), *str(os_release.get("id_like", "")).split()]:
        family = _FAMILIES.get(str(name).lower())
        if family:
            return family
    for file, family in [
        ("redhat-release", "redhat"),
        ("debian_version", "debian"),
        ("alpine-release", "alpine"),
        ("SuSE-release", "suse"),
    ]:
        if file in release_files:
            return family
    return kernel_name.lower()


# --- hardware ----------------------------------------------------------------------------------


def parse_cpuinfo(text: str, nproc: str = "") -> Document:
    """``/proc/cpuinfo`` (x86, ARM, POWER, s390 spellings) and ``nproc``: model, count, cores, sockets."""
    model = ""
    processors = 0
    cores: dict[str, int] = {}
    current = ""
    for line in _lines(text):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key == "processor" and _int(value) is not None:
            processors += 1
        elif key in ("model name", "cpu model", "cpu", "hardware", "processor") and not model:
            model = clean(value)
        elif key == "physical id" and len(cores) < MAX_CPUS:
            current = clean(value, 16)
            cores.setdefault(current, 0)
        elif key == "cpu cores":
            count = _int(value, 1, MAX_CPUS)
            if count and cores:
                cores[current] = count
    online = _int(nproc.strip().split("\n", 1)[0], 1, 1 << 20) if nproc.strip() else None
    result: Document = {"model": model, "count": online or processors or None}
    if cores and all(cores.values()):
        result["sockets"] = len(cores)
        result["cores"] = sum(cores.values())
    else:
        result["cores"] = result["count"]
    return result


def parse_meminfo(text: str) -> Document:
    """``/proc/meminfo``: totals in bytes."""
    wanted = {
        "MemTotal": "total_bytes",
        "MemAvailable": "available_bytes",
        "MemFree": "free_bytes",
        "SwapTotal": "swap_total_bytes",
        "SwapFree": "swap_free_bytes",
    }
    result: Document = {}
    for line in _lines(text):
        key, sep, value = line.partition(":")
        if not sep or key not in wanted or wanted[key] in result:
            continue
        fields = value.split()
        amount = _int(fields[0], 0, 2**53) if fields else None
        if amount is not None:
            unit = fields[1].lower() if len(fields) > 1 else "b"
            result[wanted[key]] = amount * 1024 if unit == "kb" else amount
    return result


_PAIR = re.compile(r'([A-Z][A-Z0-9:_-]{0,31})="((?:[^"\\]|\\.){0,4096})"')


def _unescape_lsblk(value: str) -> str:
    def hexbyte(match: re.Match[str]) -> str:
        return chr(int(match[1], 16))

    return re.sub(r"\\x([0-9a-fA-F]{2})", hexbyte, value)


def parse_lsblk(text: str) -> list[Document]:
    """``lsblk -P -b -o NAME,KNAME,TYPE,SIZE,MODEL,SERIAL,FSTYPE,MOUNTPOINT,PKNAME``: block devices."""
    devices: list[Document] = []
    for line in _lines(text):
        if len(devices) >= MAX_DISKS:
            break
        pairs = {key: _unescape_lsblk(value) for key, value in _PAIR.findall(line)}
        name = clean(pairs.get("NAME", ""), 128)
        if not name:
            continue
        devices.append(
            {
                "name": name,
                "type": clean(pairs.get("TYPE", ""), 32),
                "size_bytes": _int(pairs.get("SIZE", "")),
                "model": clean(pairs.get("MODEL", "")),
                "serial": clean(pairs.get("SERIAL", "")),
                "fstype": clean(pairs.get("FSTYPE", ""), 32),
                "mountpoint": clean(pairs.get("MOUNTPOINT", "")),
                "parent": clean(pairs.get("PKNAME", ""), 128),
            }
        )
    return devices


def parse_df(text: str) -> list[Document]:
    """``df -P -k -T`` (or ``df -P -k``): filesystems with sizes in bytes; a second table is ignored."""
    result: list[Document] = []
    typed = False
    for number, line in enumerate(_lines(text)):
        fields = line.split()
        if number == 0:
            typed = len(fields) > 1 and fields[1] == "Type"
            continue
        if fields and fields[0] == "Filesystem":
            break
        width = 7 if typed else 6
        if len(fields) < width or len(result) >= MAX_FILESYSTEMS:
            continue
        offset = 1 if typed else 0
        size, used, free = (_int(fields[i + offset]) for i in (1, 2, 3))
        if size is None or used is None or free is None:
            continue
        result.append(
            {
                "device": clean(fields[0]),
                "type": clean(fields[1], 32) if typed else "",
                "size_bytes": size * 1024,
                "used_bytes": used * 1024,
                "available_bytes": free * 1024,
                "mountpoint": clean(" ".join(fields[width - 1 :])),
            }
        )
    return result


_DMI_FIELDS = (
    "sys_vendor",
    "product_name",
    "product_version",
    "product_serial",
    "product_uuid",
    "product_family",
    "product_sku",
    "board_vendor",
    "board_name",
    "board_version",
    "board_serial",
    "bios_vendor",
    "bios_version",
    "bios_date",
    "chassis_vendor",
    "chassis_type",
    "chassis_serial",
    "chassis_asset_tag",
)
DMI_FIELDS = _DMI_FIELDS
DMI_PRIVATE = ("product_serial", "product_uuid", "board_serial", "chassis_serial")


def parse_dmi(text: str) -> dict[str, str]:
    """``grep -s -H . /sys/class/dmi/id/FIELD…``: ``PATH:value`` lines, known fields only."""
    result: dict[str, str] = {}
    for line in _lines(text):
        path, sep, value = line.partition(":")
        name = path.rsplit("/", 1)[-1].strip()
        if sep and name in _DMI_FIELDS and name not in result:
            cleaned = clean(value)
            if cleaned:
                result[name] = cleaned
    return result


def parse_uptime(text: str) -> float | None:
    """``/proc/uptime``: seconds since boot."""
    fields = text.split(None, 1)
    if not fields:
        return None
    seconds = _float(fields[0])
    return round(seconds, 2) if seconds is not None and seconds < 1e12 else None


# --- network -----------------------------------------------------------------------------------


def _address(family: str, address: object, prefix: object) -> Document | None:
    ip = _ip(address)
    length = _int(prefix, 0, 128)
    if not ip or length is None:
        return None
    family = "inet6" if ":" in ip else "inet"
    if family == "inet" and length > 32:
        return None
    return {"family": family, "address": ip, "prefixlen": length}


def _interface(name: object) -> Document:
    return {"name": clean(name, 64), "mac": "", "mtu": None, "state": "", "addresses": []}


def _ip_addr_json(data: Any) -> list[Document]:
    interfaces: list[Document] = []
    for item in _dicts(data, MAX_INTERFACES):
        if len(interfaces) >= MAX_INTERFACES:
            break
        iface = _interface(item.get("ifname"))
        if not iface["name"]:
            continue
        iface["mac"] = _mac(item.get("address"))
        iface["mtu"] = _int(item.get("mtu"), 0, 1 << 20)
        iface["state"] = clean(item.get("operstate"), 16)
        for info in _dicts(item.get("addr_info"), MAX_ADDRESSES):
            address = _address(clean(info.get("family"), 8), info.get("local"), info.get("prefixlen"))
            if address and len(iface["addresses"]) < MAX_ADDRESSES:
                iface["addresses"].append(address)
        interfaces.append(iface)
    return interfaces


_IP_O = re.compile(r"^\d+:\s+([^\s:@]+)(?:@\S+)?:?\s+(.*)$")


def _ip_o_lines(text: str) -> Iterator[tuple[str, str]]:
    """``ip -o`` lines as (interface name, the rest)."""
    for line in _lines(text):
        match = _IP_O.match(line)
        name = clean(match[1], 64) if match else ""
        if match and name:
            yield name, match[2]


def _named(interfaces: dict[str, Document], name: str) -> Document | None:
    """The interface ``name``, added when there is room for one more."""
    if name not in interfaces:
        if len(interfaces) >= MAX_INTERFACES:
            return None
        interfaces[name] = _interface(name)
    return interfaces[name]


def _link_words(iface: Document, words: list[str]) -> None:
    for key, value in itertools.pairwise(words):
        if key == "mtu":
            iface["mtu"] = _int(value, 0, 1 << 20)
        elif key == "state":
            iface["state"] = clean(value, 16)
        elif key.startswith("link/") and not iface["mac"]:
            iface["mac"] = _mac(value)


def _address_words(iface: Document, words: list[str]) -> None:
    if len(words) < 2 or words[0] not in ("inet", "inet6"):
        return
    address, _, prefix = words[1].partition("/")
    entry = _address(words[0], address, prefix or ("32" if words[0] == "inet" else "128"))
    if entry and len(iface["addresses"]) < MAX_ADDRESSES:
        iface["addresses"].append(entry)


def _ip_text(addr_text: str, link_text: str) -> list[Document]:
    """``ip -o link`` and ``ip -o addr`` lines: ``2: eth0    inet 10.0.0.2/24 brd …``."""
    interfaces: dict[str, Document] = {}
    for name, rest in _ip_o_lines(link_text):
        iface = _named(interfaces, name)
        if iface is not None:
            _link_words(iface, rest.replace("\\", " ").split())
    for name, rest in _ip_o_lines(addr_text):
        iface = _named(interfaces, name)
        if iface is not None:
            _address_words(iface, rest.split())
    return list(interfaces.values())


def _netmask_prefix(mask: str) -> int | None:
    """An IPv4 netmask as a prefix length: ``255.255.255.0``, ``0xffffff00`` (BSD) or ``ffffff00`` (Solaris)."""
    text = mask.lower().removeprefix("0x")
    if re.fullmatch(r"[0-9a-f]{8}", text):
        text = str(ipaddress.IPv4Address(int(text, 16)))
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
    except ValueError:
        return None


_IFCONFIG_KEYS = re.compile(r"^(addr|Mask|MTU|Bcast|Metric):(.+)$")


def _ifconfig_words(line: str) -> list[str]:
    """A line of ``ifconfig`` in words, with the old net-tools' ``addr:X``, ``Mask:X``, ``MTU:X`` split."""
    words: list[str] = []
    for word in line.split():
        match = _IFCONFIG_KEYS.match(word)
        words.extend([match[1].lower(), match[2]] if match else [word.rstrip(":") if word == "addr:" else word])
    return words


def _ifconfig_address(iface: Document, words: list[str]) -> None:
    """``inet A netmask M``, ``inet addr A mask M``, ``inet6 A prefixlen N`` or ``inet6 addr A/N``."""
    values = dict(itertools.pairwise(word.lower() for word in words))
    address = words[2] if len(words) > 2 and words[1] == "addr" else words[1]
    if words[0] == "inet":
        prefix: object = _netmask_prefix(values.get("netmask") or values.get("mask") or "255.255.255.255")
    else:
        address, _, prefix = address.partition("/")
        prefix = prefix or values.get("prefixlen") or "128"
    entry = _address(words[0], address, prefix)
    if entry and len(iface["addresses"]) < MAX_ADDRESSES:
        iface["addresses"].append(entry)


def _ifconfig_line(iface: Document, line: str) -> None:
    words = _ifconfig_words(line)
    if len(words) > 1 and words[0] in ("inet", "inet6"):
        _ifconfig_address(iface, words)
        return
    flags = re.search(r"flags=\w+<([^>]*)>", line)
    if flags or (words and words[0] in ("UP", "BROADCAST", "LOOPBACK")):
        iface["state"] = "UP" if "UP" in (flags[1].split(",") if flags else words) else "DOWN"
    for key, value in itertools.pairwise(words):
        if key.lower() == "mtu":
            iface["mtu"] = _int(value, 0, 1 << 20)
        elif key in ("ether", "HWaddr", "lladdr") and not iface["mac"]:
            iface["mac"] = _mac(value)


def parse_ifconfig(text: str) -> list[Document]:
    """``ifconfig -a`` (net-tools old and new, busybox, the BSDs, macOS): interfaces, as :func:`parse_ip_addr`.

    An interface starts on an unindented line (``eth0: flags=…``, ``eth0  Link encap:…``); its other
    lines are indented.
    """
    interfaces: dict[str, Document] = {}
    current: Document | None = None
    for line in _lines(text):
        if not line.strip():
            continue
        if not line[0].isspace():
            name, _, rest = line.partition(" ")
            current = _named(interfaces, clean(name.rstrip(":"), 64)) if name.rstrip(":") else None
            line = rest
        if current is not None:
            _ifconfig_line(current, line)
    return list(interfaces.values())


def parse_ip_addr(addr_text: str, link_text: str = "") -> list[Document]:
    """``ip -j addr`` (JSON), or ``ip -o addr`` with ``ip -o link`` for the MACs: interfaces."""
    data = _json(addr_text)
    if data is not None:
        return _ip_addr_json(data)
    return _ip_text(addr_text, link_text)


_NEIGH_STATES = {"REACHABLE", "STALE", "DELAY", "PROBE", "FAILED", "INCOMPLETE", "NOARP", "PERMANENT", "NONE"}


def _neighbors_json(data: object) -> list[Document]:
    result: list[Document] = []
    for item in _dicts(data, MAX_NEIGHBORS):
        state = item.get("state")
        states = [clean(s, 16) for s in state[:4] if isinstance(s, str)] if isinstance(state, list) else []
        entry = {
            "address": _ip(item.get("dst")),
            "mac": _mac(item.get("lladdr")),
            "interface": clean(item.get("dev"), 64),
            "state": ",".join(s for s in states if s),
        }
        if entry["address"]:
            result.append(entry)
    return result[:MAX_NEIGHBORS]


def _arp_an_words(words: list[str]) -> Document | None:
    """``? (10.0.0.1) at 00:11:22:33:44:55 [ether] on eth0`` (net-tools, busybox, BSD ``arp -an``).

    A row still waiting for an answer says ``(incomplete)`` or ``<incomplete>`` where the MAC goes.
    """
    address = _ip(words[1][1:-1])
    if not address or words[2] != "at":
        return None
    mac = _mac(words[3])
    interface = next((clean(value, 64) for key, value in itertools.pairwise(words) if key == "on"), "")
    return {"address": address, "mac": mac, "interface": interface, "state": "" if mac else "INCOMPLETE"}


def _neighbor_words(words: list[str]) -> Document | None:
    """One line of ``ip neigh``, ``/proc/net/arp`` or ``arp -an``, split; None when it names no neighbour."""
    if len(words) >= 4 and words[1].startswith("(") and words[1].endswith(")"):  # arp -an
        return _arp_an_words(words)
    if len(words) >= 6 and _ip(words[0]) and words[1].startswith("0x"):  # /proc/net/arp
        if not _mac(words[3]):
            return None
        return {"address": _ip(words[0]), "mac": _mac(words[3]), "interface": clean(words[5], 64), "state": ""}
    address = _ip(words[0])
    if not address:
        return None
    entry = {"address": address, "mac": "", "interface": "", "state": ""}
    for key, value in itertools.pairwise(words):
        if key == "dev":
            entry["interface"] = clean(value, 64)
        elif key == "lladdr":
            entry["mac"] = _mac(value)
    states = [word for word in words[1:] if word in _NEIGH_STATES]
    entry["state"] = ",".join(states[:4])
    return entry


def parse_neighbors(text: str) -> list[Document]:
    """``ip -j neigh``, ``ip neigh``, ``/proc/net/arp`` or ``arp -an``: address, MAC, interface, state."""
    data = _json(text)
    if data is not None:
        return _neighbors_json(data)
    result: list[Document] = []
    for line in _lines(text):
        if len(result) >= MAX_NEIGHBORS:
            break
        words = line.split()
        entry = _neighbor_words(words) if words else None
        if entry is not None:
            result.append(entry)
    return result


_ROUTE_TYPES = {
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "throw",
    "unreachable",
    "prohibit",
    "blackhole",
    "nat",
    "anycast",
}


def _route(
    destination: object,
    gateway: object,
    interface: object,
    metric: object,
    protocol: object,
    scope: object,
    source: object,
    kind: object,
) -> Document | None:
    network = _network(destination)
    if not network:
        return None
    if network == "default":
        family = "inet6" if ":" in _ip(gateway) else "inet"
    else:
        family = "inet6" if ":" in network else "inet"
    return {
        "destination": network,
        "family": family,
        "gateway": _ip(gateway),
        "interface": clean(interface, 64),
        "metric": _int(metric, 0, 2**32),
        "protocol": clean(protocol, 32),
        "scope": clean(scope, 16),
        "source": _ip(source),
        "type": clean(kind, 16) or "unicast",
    }


def _routes_json(data: object) -> list[Document]:
    result: list[Document] = []
    for item in _dicts(data, MAX_ROUTES):
        route = _route(
            item.get("dst"),
            item.get("gateway"),
            item.get("dev"),
            item.get("metric"),
            item.get("protocol"),
            item.get("scope"),
            item.get("prefsrc"),
            item.get("type"),
        )
        if route:
            result.append(route)
    return result


def _route_words(words: list[str]) -> Document | None:
    """One line of ``ip route``, split: ``[TYPE] DESTINATION [via GW] [dev IF] …``."""
    kind = ""
    if words and words[0] in _ROUTE_TYPES:
        kind = words.pop(0)
    if not words:
        return None
    values: dict[str, str] = {}
    for key, value in itertools.pairwise(words[1:]):
        if key in ("via", "dev", "metric", "proto", "scope", "src") and key not in values:
            values[key] = value
    return _route(
        words[0],
        values.get("via"),
        values.get("dev"),
        values.get("metric"),
        values.get("proto"),
        values.get("scope"),
        values.get("src"),
        kind,
    )


def _routes_text(text: str) -> list[Document]:
    result: list[Document] = []
    for line in _lines(text):
        if len(result) >= MAX_ROUTES:
            break
        route = _route_words(line.split())
        if route:
            result.append(route)
    return result


def parse_routes(text: str, family: str = "") -> list[Document]:
    """``ip -j route`` or ``ip route`` (``-6`` for IPv6 when ``family`` is inet6): the routing table."""
    data = _json(text)
    result = _routes_json(data) if data is not None else _routes_text(text)
    if family == "inet6":
        for route in result:
            route["family"] = "inet6"
    return result[:MAX_ROUTES]


def _netstat_destination(destination: str, mask: str, flags: str) -> str:
    """A destination of ``netstat -rn`` as a network: Linux gives a separate Genmask; the BSDs write
    ``10.0.2/24``, ``127`` (classful) or ``fe80::%lo0/64``."""
    destination = re.sub(r"%[^/]*", "", destination)
    if destination == "default":
        return "default"
    if mask:
        network = _network(f"{destination}/{mask}")
    elif ":" in destination:
        network = _network(destination)
    else:
        address, _, prefix = destination.partition("/")
        parts = address.split(".")
        if not prefix:
            prefix = "32" if "H" in flags or len(parts) == 4 else str(8 * len(parts))
        network = _network(".".join(parts + ["0"] * (4 - len(parts))) + "/" + prefix)
    return "default" if network.endswith("/0") else network


def _netstat_route(form: str, family: str, columns: list[str], words: list[str]) -> Document | None:
    """One row of ``netstat -rn`` in one of its forms (``linux``, ``linux6``, ``bsd``) and families."""
    if len(words) < (4 if form == "linux" else 3):
        return None
    flags = words[3] if form == "linux" else words[2]
    if form == "linux":
        destination = _netstat_destination(words[0], words[2], flags)
    else:
        destination = _netstat_destination(words[0], "", flags)
    gateway = _ip(words[1])
    if gateway and ipaddress.ip_address(gateway).is_unspecified:
        gateway = ""  # Linux's "no gateway"; the BSDs write link#N or a MAC
    interface = (
        words[columns.index("Netif")] if "Netif" in columns and columns.index("Netif") < len(words) else words[-1]
    )
    kind = "unreachable" if "!" in flags or (form == "bsd" and "R" in flags) else ""
    kind = "blackhole" if form == "bsd" and "B" in flags else kind
    metric = words[3] if form == "linux6" and len(words) > 3 else None
    route = _route(destination, gateway, interface, metric, None, None, None, kind)
    if route is not None:
        route["family"] = "inet6" if ":" in words[0] else family
    return route


def parse_netstat_routes(text: str) -> list[Document]:
    """``netstat -rn`` (and Linux's ``netstat -rn -A inet6``): routes, as :func:`parse_routes`.

    Each table starts with a ``Destination`` header whose columns say its form.
    """
    result: list[Document] = []
    form = ""
    family = "inet"
    columns: list[str] = []
    for line in _lines(text):
        if len(result) >= MAX_ROUTES:
            break
        words = line.split()
        if words and words[0] in ("Internet:", "Internet6:"):  # the BSDs' table titles
            family = "inet6" if words[0] == "Internet6:" else "inet"
        if words and words[0] == "Destination":
            form = "linux" if "Genmask" in words else "linux6" if "Next" in words else "bsd"
            columns = words
            continue
        route = _netstat_route(form, family, columns, words) if form else None
        if route:
            result.append(route)
    return result


def parse_machine_id(text: str) -> str:
    """``/etc/machine-id``: 32 hex digits in lower case ('' when it is not one)."""
    value = text.strip().lower()
    return value if re.fullmatch(r"[0-9a-f]{32}", value) and value.strip("0") else ""


# --- packages ----------------------------------------------------------------------------------


def _package(name: str, version: str, arch: str, manager: str) -> Document | None:
    name = clean(name, 128)
    if not name or " " in name:
        return None
    return {"name": name, "version": clean(version, 128), "architecture": clean(arch, 32), "manager": manager}


def parse_dpkg(text: str) -> list[Document]:
    """``dpkg-query -W -f '${db:Status-Abbrev}\\t${Package}\\t${Version}\\t${Architecture}\\n'``: installed only."""

    def items() -> Iterator[Document]:
        for line in _lines(text):
            fields = line.split("\t")
            if len(fields) < 4 or fields[0].strip() not in ("ii", "hi"):
                continue
            package = _package(fields[1], fields[2], fields[3], "dpkg")
            if package:
                yield package

    return _take(items(), MAX_PACKAGES)


def parse_rpm(text: str) -> list[Document]:
    """``rpm -qa --qf '%{NAME}\\t%{EPOCH}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\n'``."""

    def items() -> Iterator[Document]:
        for line in _lines(text):
            fields = line.split("\t")
            if len(fields) < 3:
                continue
            version = fields[1].strip()
            if version.startswith("(none):"):
                version = version[len("(none):") :]
            package = _package(fields[0], version, "" if fields[2].strip() == "(none)" else fields[2], "rpm")
            if package:
                yield package

    return _take(items(), MAX_PACKAGES)


def parse_apk(text: str) -> list[Document]:
    """The ``P:``, ``V:`` and ``A:`` lines of ``/lib/apk/db/installed`` (one package per ``P:``)."""

    def items() -> Iterator[Document]:
        current: dict[str, str] = {}
        for line in itertools.chain(_lines(text), ["P:"]):
            key, sep, value = line.partition(":")
            if not sep or key not in ("P", "V", "A"):
                continue
            if key == "P":
                if current.get("P"):
                    package = _package(current["P"], current.get("V", ""), current.get("A", ""), "apk")
                    if package:
                        yield package
                current = {}
            current.setdefault(key, value)

    return _take(items(), MAX_PACKAGES)


# --- the whole report --------------------------------------------------------------------------

SECTIONS = (
    "id",
    "hostname",
    "uname",
    "os-release",
    "release-files",
    "cpuinfo",
    "nproc",
    "meminfo",
    "lsblk",
    "df",
    "ip-addr",
    "ip-link",
    "ifconfig",
    "neigh",
    "route",
    "route6",
    "netstat",
    "machine-id",
    "dpkg",
    "rpm",
    "apk",
    "dmi",
    "dmi-sudo",
    "uptime",
    "end",
)


def _guarded(parse: Callable[[], Any], fallback: Any, problems: list[str], name: str) -> Any:
    try:
        return parse()
    except Exception as exc:  # a parser bug must not cost the rest of the report
        problems.append(f"{name}: could not be parsed ({type(exc).__name__})")
        return fallback


def parse_report(sections: dict[str, str]) -> Document:
    """The ``ssh`` section of a hosts.inspect result from the script's sections (any may be missing)."""
    problems: list[str] = []
    get = sections.get

    def section(name: str) -> str:
        return get(name, "")

    ident = _guarded(lambda: parse_id(section("id")), {"uid": None, "user": "", "root": False}, problems, "id")
    uname = _guarded(lambda: parse_uname(section("uname")), parse_uname(""), problems, "uname")
    release = _guarded(lambda: parse_os_release(section("os-release")), {}, problems, "os-release")
    files = _guarded(lambda: parse_release_files(section("release-files")), {}, problems, "release-files")
    family = _guarded(lambda: os_family(release, files, uname["kernel_name"]), "", problems, "os")
    dmi = _guarded(lambda: parse_dmi(section("dmi")), {}, problems, "dmi")
    private = _guarded(lambda: parse_dmi(section("dmi-sudo")), {}, problems, "dmi-sudo")
    for name, value in private.items():
        dmi.setdefault(name, value)
    packages: list[Document] = []
    managers: list[tuple[str, Callable[[str], list[Document]]]] = [
        ("dpkg", parse_dpkg),
        ("rpm", parse_rpm),
        ("apk", parse_apk),
    ]
    for manager, parse in managers:
        if len(packages) < MAX_PACKAGES:
            found = _guarded(functools.partial(parse, section(manager)), [], problems, manager)
            packages.extend(found[: MAX_PACKAGES - len(packages)])
    routes = _guarded(lambda: parse_routes(section("route")), [], problems, "route")
    routes6 = _guarded(lambda: parse_routes(section("route6"), "inet6"), [], problems, "route6")
    routes += _guarded(lambda: parse_netstat_routes(section("netstat")), [], problems, "netstat")
    interfaces = _guarded(lambda: parse_ip_addr(section("ip-addr"), section("ip-link")), [], problems, "ip")
    if not interfaces:
        interfaces = _guarded(lambda: parse_ifconfig(section("ifconfig")), [], problems, "ifconfig")

    report: Document = {
        "hostname": _guarded(lambda: parse_hostname(section("hostname")), "", problems, "hostname"),
        "os": {
            "family": family,
            "name": release.get("name", "") or files.get("redhat-release", "") or uname["kernel_name"],
            "id": release.get("id", ""),
            "version": release.get("version_id", "")
            or files.get("debian_version", "")
            or files.get("alpine-release", ""),
            "pretty_name": release.get("pretty_name", ""),
            "codename": release.get("codename", ""),
            "kernel_name": uname["kernel_name"],
            "kernel": uname["kernel"],
            "kernel_version": uname["kernel_version"],
            "architecture": uname["architecture"],
        },
        "cpu": _guarded(lambda: parse_cpuinfo(section("cpuinfo"), section("nproc")), {}, problems, "cpuinfo"),
        "memory": _guarded(lambda: parse_meminfo(section("meminfo")), {}, problems, "meminfo"),
        "disks": _guarded(lambda: parse_lsblk(section("lsblk")), [], problems, "lsblk"),
        "filesystems": _guarded(lambda: parse_df(section("df")), [], problems, "df"),
        "interfaces": interfaces,
        "neighbors": _guarded(lambda: parse_neighbors(section("neigh")), [], problems, "neigh"),
        "routes": (routes + routes6)[:MAX_ROUTES],
        "packages": packages,
        "dmi": dmi,
        "machine_id": _guarded(lambda: parse_machine_id(section("machine-id")), "", problems, "machine-id"),
        "uptime_seconds": _guarded(lambda: parse_uptime(section("uptime")), None, problems, "uptime"),
        "privileges": {"user": ident["user"], "uid": ident["uid"], "root": ident["root"], "sudo": bool(private)},
    }
    missing = [
        name
        for name in ("id", "hostname", "uname", "cpuinfo", "meminfo", "ip-addr", "uptime", "end")
        if name not in sections
    ]
    if missing:
        problems.append("sections missing from the output: " + ", ".join(missing))
    report["warnings"] = problems[:32]
    return report
