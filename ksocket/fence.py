"""The operator's own fence around what the hub may ask: addresses, rate and scan mode.

``ksocket.toml`` bounds every operation that comes from the hub, whatever its params say:

- ``operations.allow``: the addresses an operation may reach (default: all);
- ``operations.deny``: addresses it may never reach, even inside ``allow`` (default
  :data:`~ksocket.config.DEFAULT_DENY`: link-local with the cloud metadata address, multicast, the
  limited broadcast), and always the broadcast addresses of the agent's own networks
  (:meth:`Fence.with_broadcasts_of`, from the networks its driver finds);
- ``operations.maxRate``: the highest ``rate`` of a ``networks.scan`` (packets/s);
- ``operations.networksScanMode``: the only scan mode.

:meth:`Fence.admit` is applied at admission, after the operation's own params check and before
anything is queued; it is pure (no I/O). An operation may narrow the fence but never widen it: a
target or address outside ``allow``, a target wholly inside ``deny``, a rate over ``maxRate`` or
another scan mode is refused with :class:`~ksocket.collectors.base.InvalidParams` naming the
setting. A scan target that only overlaps ``deny`` (a /16 around the metadata address) is narrowed
instead: the denied addresses, and everything outside ``allow``, join the params' ``exclude``, so
that the scan engine, on whichever worker runs it, never gets one (nor when the targets are the
on-link networks, found only when the scan runs). A scan without a rate gets ``maxRate`` when that
is below the default rate. A ``networks.discover`` is narrowed the same way, whatever it learns on
its way: every address outside ``allow`` or inside ``deny`` (both families) joins its own ``deny``,
which its loop's fence applies to every candidate; its ``rate`` is bounded as a scan's.

Commands the operator runs (``ksocket scan``, ``ksocket inspect``) are not fenced: they are the
operator's own, as the settings are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import netaddr

from ksocket.collectors.base import Document, InvalidParams
from ksocket.collectors.discovery import DEFAULT_RATE
from ksocket.collectors.discovery.targets import parse_one, split_specs
from ksocket.collectors.inspect import params as inspect_params
from ksocket.config import address_range
from ksocket.redact import described

if TYPE_CHECKING:
    from ksocket.config import Settings

_IPV4 = netaddr.IPSet(["0.0.0.0/0"])
_EVERY_ADDRESS = netaddr.IPSet(["0.0.0.0/0", "::/0"])


def address_set(specs: Iterable[str]) -> netaddr.IPSet:
    """The addresses of ``operations.allow`` or ``operations.deny`` entries (already validated)."""
    found = netaddr.IPSet()
    for spec in specs:
        found.add(address_range(spec))
    return found


@dataclass(frozen=True)
class Fence:
    """The operator's limits, as address sets; :meth:`admit` applies them to one operation's params."""

    allow: netaddr.IPSet
    deny: netaddr.IPSet
    max_rate: int
    scan_mode: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Fence:
        return cls(
            address_set(settings.scan_allow),
            address_set(settings.scan_deny),
            settings.max_rate,
            settings.networks_scan_mode,
        )

    def with_broadcasts_of(self, networks: Iterable[str]) -> Fence:
        """This fence, also denying the broadcast address of each IPv4 network of ``networks`` (CIDRs)
        that has one (/30 or wider)."""
        broadcasts = netaddr.IPSet()
        for cidr in networks:
            network = netaddr.IPNetwork(cidr)
            if network.version == 4 and network.prefixlen <= 30:
                broadcasts.add(network.broadcast)
        return dataclasses.replace(self, deny=self.deny | broadcasts)

    def admit(self, name: str, params: Document) -> Document:
        """``params`` as the fence narrows them; InvalidParams naming the setting when they go beyond it.

        ``params`` passed the operation's own check already: only what the fence bounds is looked at.
        """
        if name == "networks.scan":
            return self._scan(params)
        if name == "networks.discover":
            return self._discover(params)
        if name == inspect_params.OPERATION:
            self._reachable(inspect_params.parse_params(params).address, "address")
        return params

    def _scan(self, params: Document) -> Document:
        mode = params.get("mode")
        mode = self.scan_mode if mode is None else mode
        if mode != self.scan_mode:
            raise InvalidParams(f"mode {described(mode)} is not operations.networksScanMode ({self.scan_mode})")
        if mode != "intranet":
            return params  # a cloud's networks are named by id, not by address
        narrowed = self._rate_capped(params)
        for spec in split_specs(params.get("targets"), "targets"):
            for first, last in parse_one(spec):
                self._reachable(spec, "target", netaddr.IPSet(netaddr.IPRange(first, last)))
        carved = (self.deny | (_IPV4 - self.allow)) & _IPV4
        if carved:
            exclude = params.get("exclude")
            given = [exclude] if isinstance(exclude, str) else list(exclude or [])
            narrowed["exclude"] = given + [str(cidr) for cidr in carved.iter_cidrs()]
        return narrowed

    def _rate_capped(self, params: Document) -> Document:
        """A copy of ``params`` whose ``rate`` is within operations.maxRate (InvalidParams for one above it)."""
        rate = params.get("rate")
        if isinstance(rate, int | float) and rate > self.max_rate:
            raise InvalidParams(f"rate {rate:g} is over operations.maxRate ({self.max_rate})")
        narrowed = dict(params)
        if rate is None and self.max_rate < DEFAULT_RATE:
            narrowed["rate"] = self.max_rate
        return narrowed

    def _discover(self, params: Document) -> Document:
        narrowed = self._rate_capped(params)
        carved = self.deny | (_EVERY_ADDRESS - self.allow)
        if carved:
            deny = params.get("deny")
            given = [deny] if isinstance(deny, str) else list(deny or [])
            narrowed["deny"] = given + [str(cidr) for cidr in carved.iter_cidrs()]
        return narrowed

    def _reachable(self, shown: str, what: str, addresses: netaddr.IPSet | None = None) -> None:
        addresses = addresses if addresses is not None else netaddr.IPSet([shown])
        if not addresses.issubset(self.allow):
            raise InvalidParams(f"{what} {shown} is outside operations.allow")
        if addresses.issubset(self.deny):
            raise InvalidParams(f"{what} {shown} is in operations.deny")


__all__ = ["Fence", "address_set"]
