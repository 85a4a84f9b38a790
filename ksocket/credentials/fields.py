"""Reading one table of a credential document field by field, with the manual's types and ranges.

A :class:`Fields` wraps a mapping parsed from TOML or YAML. Each getter checks one key and returns
the typed value or the default; a wrong value raises :class:`~ksocket.errors.CredentialError` with
the one-line message ``FILE: FIELD: PROBLEM``. A secret's value is never quoted in a message.
The keys a getter never asked for are the unknown ones (:meth:`Fields.unknown`), which the loader
ignores with a DEBUG line, as the manual's files carry extras.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import netaddr

from ksocket.addresses import fold_mapped
from ksocket.errors import CredentialError
from ksocket.redact import described


def one_line(text: str) -> str:
    """Messages are one line, whatever a file name or a library's message holds."""
    return " ".join(text.splitlines())


MAPPED = netaddr.IPNetwork("::ffff:0:0/96")


def _folded(network: netaddr.IPNetwork) -> netaddr.IPNetwork:
    """An IPv4-mapped IPv6 network as the IPv4 network it maps; any other as it is."""
    if network.version == 6 and network in MAPPED:
        return netaddr.IPNetwork(f"{network.network.ipv4()}/{network.prefixlen - 96}")
    return network


class Fields:
    """One table of a credential file; ``prefix`` is the dotted path of the table (``account.``)."""

    def __init__(self, path: Path, table: Mapping[str, object], prefix: str = "") -> None:
        self.path = path
        self.values = table
        self.prefix = prefix
        self._used: set[str] = set()
        self._children: list[Fields] = []

    # --- plumbing -----------------------------------------------------------------------------

    def error(self, key: str, problem: str) -> CredentialError:
        return CredentialError(one_line(f"{self.path}: {self.prefix}{key}: {problem}"))

    def raw(self, key: str) -> object | None:
        """The value of ``key`` or None when absent (a YAML ``~`` counts as absent).

        A key holding a dot that TOML read as a dotted key (``authCredSSPDisableTLSv1.2 = true``
        is ``{"authCredSSPDisableTLSv1": {"2": true}}``) is found either way.
        """
        if key in self.values:
            self._used.add(key)
            return self.values[key]
        head, *rest = key.split(".")
        value: object = self.values.get(head)
        if not rest or value is None:
            return None
        self._used.add(head)
        for part in rest:
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        return value

    def unknown(self) -> list[str]:
        """The dotted names of the keys nobody asked for, in this table and the tables read from it."""
        names = [f"{self.prefix}{key}" for key in self.values if key not in self._used]
        for child in self._children:
            names.extend(child.unknown())
        return names

    # --- scalars ------------------------------------------------------------------------------

    def string(self, key: str, default: str = "", *, required: bool = False, secret: bool = False) -> str:
        value = self.raw(key)
        if value is None:
            if required:
                raise self.error(key, "missing (a string is required)")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {described(value, secret=secret)}")
        if required and not value:
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self.raw(key)
        if value is None:
            return default
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer {span}, got {described(value)}")
        if value < low or (high is not None and value > high):
            raise self.error(key, f"must be an integer {span}, got {value}")
        return value

    def number(self, key: str, default: float, *, low: float = 0.0, inclusive: bool = True) -> float:
        """A finite number of at least ``low`` (more than ``low`` unless ``inclusive``)."""
        value = self.raw(key)
        if value is None:
            return default
        span = f"{'of at least' if inclusive else 'greater than'} {low:g}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number {span}, got {described(value)}")
        number = float(value)
        if not math.isfinite(number) or number < low or (not inclusive and number == low):
            raise self.error(key, f"must be a number {span}, got {value!r}")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {described(value)}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {described(value)}")
        return str(value)

    # --- addresses ----------------------------------------------------------------------------

    def _strings(self, key: str) -> list[str]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of addresses, got {described(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{index}]", f"must be a string, got {described(item)}")
        return value

    def networks(self, key: str) -> netaddr.IPSet:
        """A list of IPv4/IPv6 addresses and networks (``198.18.0.0/24``, ``2001:db8::/32``).

        IPv4-mapped ones (``::ffff:198.18.0.0/120``) are folded to IPv4, as the addresses matched against them.
        """
        networks = []
        for index, item in enumerate(self._strings(key)):
            try:
                networks.append(_folded(netaddr.IPNetwork(item.strip())))
            except (netaddr.AddrFormatError, ValueError, TypeError):
                raise self.error(f"{key}[{index}]", f"not an IP address or network: {described(item)}") from None
        return netaddr.IPSet(networks)

    def addresses(self, key: str) -> tuple[str, ...]:
        """A list of single IP addresses, in their normal form."""
        found = []
        for index, item in enumerate(self._strings(key)):
            try:
                found.append(fold_mapped(str(netaddr.IPAddress(item.strip()))))
            except (netaddr.AddrFormatError, ValueError, TypeError):
                raise self.error(f"{key}[{index}]", f"not an IP address: {described(item)}") from None
        return tuple(found)

    # --- tables -------------------------------------------------------------------------------

    def _child(self, key: str, table: Mapping[str, object]) -> Fields:
        child = Fields(self.path, table, f"{self.prefix}{key}.")
        self._children.append(child)
        return child

    def table(self, key: str, *, required: bool = False, hint: str = "") -> Fields:
        value = self.raw(key)
        if value is None:
            if required:
                raise self.error(key, f"missing (a table{f' with {hint}' if hint else ''} is required)")
            value = {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self.error(key, f"must be a table, got {described(value, secret=True)}")
        return self._child(key, value)

    def tables(self, key: str) -> list[Fields]:
        """A list of tables (TOML ``[[key]]``, a YAML list of mappings)."""
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of tables, got {described(value, secret=True)}")
        tables = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping) or not all(isinstance(k, str) for k in item):
                raise self.error(f"{key}[{index}]", f"must be a table, got {described(item, secret=True)}")
            tables.append(self._child(f"{key}[{index}]", item))
        return tables
