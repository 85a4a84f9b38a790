"""Scan targets: CIDRs, single addresses and ranges, minus ``exclude``, as a lazy set of address integers.

Accepted forms: ``198.18.0.0/22`` (host bits may be set: the network is meant), ``198.18.0.7``,
``198.18.0.10-198.18.0.20``, ``198.18.0.10-20`` (the last octet) and ``198.18.0.*`` (octet globs);
IPv6 ``fd00:5::/112``, ``fd00:5::7`` and ``fd00:5::10-fd00:5::20``. An IPv4-mapped IPv6 address
(``::ffff:198.18.0.7``) is the IPv4 address it maps. A list may also be given as one string
separated by commas or blanks.

Addresses are integers of one number space: an IPv4 address is its 32-bit value, an IPv6 address
its 128-bit value plus :data:`V6` (bit 128 set), so the two families never collide, sort IPv4
first and never merge into one interval; :func:`family` tells them apart.

:class:`TargetSet` holds merged, sorted ``(first, last)`` intervals: its size is known at once,
membership is a binary search, and iteration yields one integer at a time, so a 65,536-address
set never exists as a list.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import netaddr

from ksocket.collectors.base import InvalidParams

MAX_ADDRESSES = 65_536
_QUAD = r"(?:\d{1,3}\.){3}\d{1,3}"
_CIDR = re.compile(rf"^({_QUAD})/(\d{{1,2}})$")
_RANGE = re.compile(rf"^({_QUAD})\s*-\s*({_QUAD}|\d{{1,3}})$")
_SINGLE = re.compile(rf"^{_QUAD}$")
_GLOB = re.compile(r"^(?:(?:\d{1,3}|\*|\d{1,3}-\d{1,3})\.){3}(?:\d{1,3}|\*|\d{1,3}-\d{1,3})$")

Interval = tuple[int, int]

V6 = 1 << 128  # the tag of an IPv6 address integer
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def family(address: int) -> int:
    """4 or 6: the family of an address integer."""
    return 6 if address >= V6 else 4


def family_name(address: int) -> str:
    """``ipv4`` or ``ipv6``, as results name the family."""
    return "ipv6" if address >= V6 else "ipv4"


def width(address: int) -> int:
    """The bits of an address of ``address``'s family: 32 or 128."""
    return 128 if address >= V6 else 32


def packed(address: int) -> bytes:
    """The address in network byte order: 4 or 16 bytes."""
    return (address - V6).to_bytes(16, "big") if address >= V6 else address.to_bytes(4, "big")


def from_packed(data: bytes) -> int:
    """The address integer of 4 or 16 bytes in network byte order."""
    value = int.from_bytes(data, "big")
    return value + V6 if len(data) == 16 else value


def _ipv6_network(text: str, spec: str) -> Interval:
    try:
        network = ipaddress.IPv6Network(text, strict=False)
    except ValueError as error:
        raise InvalidParams(f"target {spec!r}: {error}") from None
    if network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        first = int(network.network_address) & 0xFFFFFFFF
        return (first, first + network.num_addresses - 1)
    return (int(network.network_address) + V6, int(network.broadcast_address) + V6)


def _parse_ipv6(text: str, spec: str) -> list[Interval]:
    if "-" not in text:
        return [_ipv6_network(text, spec)]
    low, _, high = (part.strip() for part in text.partition("-"))
    (first, _), (last, _) = _ipv6_network(low, spec), _ipv6_network(high, spec)
    if family(first) != family(last) or "/" in low + high:
        raise InvalidParams(f"target {spec!r} is not a range of addresses of one family")
    if last < first:
        raise InvalidParams(f"target {spec!r}: the range ends before it starts")
    return [(first, last)]


def _quad(text: str, spec: str) -> int:
    parts = text.split(".")
    if len(parts) != 4 or any(not part.isdigit() or int(part) > 255 for part in parts):
        raise InvalidParams(f"target {spec!r}: {text!r} is not an IPv4 address")
    value = 0
    for part in parts:
        value = (value << 8) | int(part)
    return value


def parse_one(spec: str) -> list[Interval]:
    """The intervals one target string stands for; :class:`InvalidParams` when it is not one."""
    text = spec.strip()
    if not text:
        raise InvalidParams("empty target")
    if ":" in text:
        return _parse_ipv6(text, spec)
    match = _CIDR.match(text)
    if match:
        prefixlen = int(match.group(2))
        if prefixlen > 32:
            raise InvalidParams(f"target {spec!r}: prefix length {prefixlen} is over 32")
        size = 1 << (32 - prefixlen)
        first = _quad(match.group(1), spec) & ~(size - 1) & 0xFFFFFFFF
        return [(first, first + size - 1)]
    match = _RANGE.match(text)
    if match:
        first = _quad(match.group(1), spec)
        end = match.group(2)
        if "." in end:
            last = _quad(end, spec)
        else:
            if int(end) > 255:
                raise InvalidParams(f"target {spec!r}: {end} is not an octet")
            last = (first & 0xFFFFFF00) | int(end)
        if last < first:
            raise InvalidParams(f"target {spec!r}: the range ends before it starts")
        return [(first, last)]
    if _SINGLE.match(text):
        value = _quad(text, spec)
        return [(value, value)]
    if "*" in text and _GLOB.match(text):
        try:
            glob = netaddr.IPGlob(text)
        except (netaddr.AddrFormatError, ValueError, TypeError) as error:
            raise InvalidParams(f"target {spec!r}: {error}") from None
        return [(int(cidr.first), int(cidr.last)) for cidr in glob.cidrs()]
    raise InvalidParams(f"target {spec!r} is not an IPv4 or IPv6 address, CIDR, range or glob")


def split_specs(value: Any, name: str) -> list[str]:
    """The target strings of a ``targets`` or ``exclude`` param (a list, or one string split at commas and blanks)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,]+", value) if part]
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return [part for item in value for part in re.split(r"[\s,]+", item) if part]
    raise InvalidParams(f"{name} must be a list of strings (CIDRs, addresses, ranges)")


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for first, last in sorted(intervals):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def subtract(intervals: Sequence[Interval], holes: Sequence[Interval]) -> list[Interval]:
    """``intervals`` minus ``holes`` (both merged and sorted)."""
    result: list[Interval] = []
    position = 0
    for first, last in intervals:
        start = first
        while position < len(holes) and holes[position][1] < start:
            position += 1
        index = position
        while index < len(holes) and holes[index][0] <= last:
            hole_first, hole_last = holes[index]
            if hole_first > start:
                result.append((start, hole_first - 1))
            start = max(start, hole_last + 1)
            if hole_last >= last:
                break
            index += 1
        if start <= last:
            result.append((start, last))
    return result


class TargetSet:
    """A set of addresses as sorted, disjoint intervals; iterates lazily in address order (IPv4 first)."""

    __slots__ = ("_firsts", "_offsets", "intervals", "size")

    def __init__(self, intervals: Iterable[Interval]) -> None:
        self.intervals: tuple[Interval, ...] = tuple(merge(intervals))
        self._firsts = [first for first, _ in self.intervals]
        self._offsets = list(itertools.accumulate((last - first + 1 for first, last in self.intervals), initial=0))
        self.size = self._offsets.pop()

    def __len__(self) -> int:
        return self.size

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, int):
            return False
        index = bisect.bisect_right(self._firsts, address) - 1
        return index >= 0 and address <= self.intervals[index][1]

    def __iter__(self) -> Iterator[int]:
        for first, last in self.intervals:
            yield from range(first, last + 1)

    def cidrs(self) -> list[str]:
        """The set as CIDR strings (for the result document)."""
        out: list[str] = []
        for first, last in self.intervals:
            out += [str(cidr) for cidr in netaddr.iprange_to_cidrs(_netaddr(first), _netaddr(last))]
        return out

    def index(self, address: int) -> int:
        """The position of ``address`` (a member) in the set's order: below :attr:`size`."""
        position = bisect.bisect_right(self._firsts, address) - 1
        first, _ = self.intervals[position]
        return self._offsets[position] + address - first

    def at(self, index: int) -> int:
        """The address at position ``index`` (the inverse of :meth:`index`)."""
        position = bisect.bisect_right(self._offsets, index) - 1
        return self.intervals[position][0] + index - self._offsets[position]

    def overlaps(self, first: int, last: int) -> bool:
        index = bisect.bisect_right(self._firsts, last) - 1
        return index >= 0 and self.intervals[index][1] >= first


def parse_targets(targets: Any, exclude: Any = None, *, limit: int = MAX_ADDRESSES) -> TargetSet:
    """``targets`` minus ``exclude``; more than ``limit`` addresses is :class:`InvalidParams`."""
    included = merge(interval for spec in split_specs(targets, "targets") for interval in parse_one(spec))
    holes = merge(interval for spec in split_specs(exclude, "exclude") for interval in parse_one(spec))
    result = TargetSet(subtract(included, holes))
    if result.size > limit:
        raise InvalidParams(f"the targets hold {result.size} addresses; at most {limit} are scanned at once")
    return result


def _netaddr(value: int) -> netaddr.IPAddress:
    return netaddr.IPAddress(value - V6, 6) if value >= V6 else netaddr.IPAddress(value, 4)


def to_int(address: str) -> int:
    """The address integer of an IPv4 or IPv6 address's text (an IPv4-mapped one is its IPv4 address)."""
    if ":" not in address:
        return _quad(address, address)
    try:
        value = ipaddress.IPv6Address(address.split("%")[0])
    except ValueError:
        raise InvalidParams(f"{address!r} is not an IP address") from None
    return int(value.ipv4_mapped) if value.ipv4_mapped is not None else int(value) + V6


def to_str(value: int) -> str:
    if value >= V6:
        return str(ipaddress.IPv6Address(value - V6))
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
