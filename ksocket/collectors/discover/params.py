"""``networks.discover``'s params, checked before anything is queued or sent.

======================= ==============================================================================
``seeds``               start addresses and networks (CIDRs, ranges; expanded), at most 65,536 addresses
``allow`` / ``deny``    addresses, CIDRs, ``FIRST-LAST`` ranges the loop may / may never reach
                        (default: everything / nothing)
``expandLimit``         a learned or connected network is probed address by address when it holds at
                        most this many (default 4,096; at most 65,536); larger ones are only reported
``details``             ``hosts.inspect`` details of every host that answered a login (default true)
``protocols``           the protocols tried on each host (default ssh, winrm, snmp)
``methods``, ``ports``, ``rate``, ``timeout``   the sweep's, as ``networks.scan`` takes them
======================= ==============================================================================

A wrong field is :class:`~ksocket.collectors.base.InvalidParams` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ksocket.collectors import discovery
from ksocket.collectors.base import Document, Environment, InvalidParams
from ksocket.collectors.discover.fence import EVERYTHING
from ksocket.collectors.discover.learn import DEFAULT_EXPAND_LIMIT
from ksocket.collectors.discovery.targets import MAX_ADDRESSES, parse_targets, split_specs, to_str
from ksocket.collectors.inspect import PROTOCOLS

OPERATION = "networks.discover"
MAX_EXPAND_LIMIT = 65_536
FIELDS = frozenset(
    {"seeds", "allow", "deny", "expandLimit", "details", "protocols", "methods", "ports", "rate", "timeout"}
)
SWEEP_FIELDS = ("methods", "ports", "rate", "timeout")


@dataclass(frozen=True)
class Request:
    seeds: tuple[str, ...]
    """Every seed address, expanded."""
    seed_networks: tuple[str, ...]
    """The seeds that are networks (their edges are fenced)."""
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    expand_limit: int
    details: bool
    protocols: tuple[str, ...]
    sweep: Document
    """``networks.scan`` params for a sweep, without its targets."""


def _specs(params: Mapping[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    from ksocket.config import address_range

    if params.get(name) is None:
        return default
    specs = tuple(split_specs(params[name], name))
    for spec in specs:
        try:
            address_range(spec)
        except ValueError as exc:
            raise InvalidParams(f"{name}: {exc}") from None
    return specs


def _seeds(params: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    value = params.get("seeds")
    if value is None:
        return (), ()
    specs = split_specs(value, "seeds")
    try:
        targets = parse_targets(specs, limit=MAX_ADDRESSES)
    except InvalidParams as exc:
        raise InvalidParams(f"seeds: {exc}") from None
    return tuple(to_str(address) for address in targets), tuple(spec for spec in specs if "/" in spec)


def _expand_limit(params: Mapping[str, Any]) -> int:
    value = params.get("expandLimit", DEFAULT_EXPAND_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXPAND_LIMIT:
        raise InvalidParams(f"expandLimit must be a whole number from 0 to {MAX_EXPAND_LIMIT}")
    return value


def _protocols(params: Mapping[str, Any]) -> tuple[str, ...]:
    value = params.get("protocols")
    if value is None:
        return PROTOCOLS
    if not isinstance(value, list) or not all(isinstance(item, str) and item in PROTOCOLS for item in value):
        raise InvalidParams(f"protocols must be a list of {', '.join(PROTOCOLS)}")
    return tuple(dict.fromkeys(value))


def parse_params(params: object) -> Request:
    """The checked request, or InvalidParams naming the field. Touches no network."""
    if not isinstance(params, Mapping):
        raise InvalidParams("params must be an object")
    unknown = sorted(set(params) - FIELDS)
    if unknown:
        raise InvalidParams(f"unknown field {str(unknown[0])[:32]!r}")
    details = params.get("details", True)
    if not isinstance(details, bool):
        raise InvalidParams("details must be true or false")
    sweep = {name: params[name] for name in SWEEP_FIELDS if params.get(name) is not None}
    discovery.validate({**sweep, "dns": False})
    seeds, seed_networks = _seeds(params)
    return Request(
        seeds=seeds,
        seed_networks=seed_networks,
        allow=_specs(params, "allow", EVERYTHING),
        deny=_specs(params, "deny", ()),
        expand_limit=_expand_limit(params),
        details=details,
        protocols=_protocols(params),
        sweep={**sweep, "dns": False},
    )


def validate(params: Document, environment: Environment | None = None) -> None:
    """The admission check (``register(..., validate=validate)``)."""
    parse_params(params)


__all__ = ["OPERATION", "Request", "parse_params", "validate"]
