"""``hosts.inspect``'s params: ``{address, protocols?, timeout?, scope?}`` checked before any network use."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ksocket.addresses import fold_mapped
from ksocket.collectors.base import Document, Environment, InvalidParams
from ksocket.collectors.inspect import MAX_PROTOCOL_TIMEOUT, PROTOCOLS
from ksocket.collectors.inspect.scope import SCOPES, Scope

OPERATION = "hosts.inspect"


@dataclass(frozen=True)
class Request:
    address: str
    protocols: tuple[str, ...]
    timeout: float | None = None
    scope: Scope = Scope.FULL


def _address(params: Mapping[str, object]) -> str:
    address = params.get("address")
    if not isinstance(address, str) or not address.strip():
        raise InvalidParams(f"{OPERATION}: address is required (an IPv4 or IPv6 address)")
    try:
        if "%" in address:
            raise ValueError("scoped addresses are not supported")
        return fold_mapped(str(ipaddress.ip_address(address.strip())))
    except ValueError:
        raise InvalidParams(f"{OPERATION}: {address[:64]!r} is not an IPv4 or IPv6 address") from None


def _protocols(params: Mapping[str, object]) -> tuple[str, ...]:
    protocols = params.get("protocols")
    if protocols is None:
        return PROTOCOLS
    if not isinstance(protocols, list) or not protocols or not all(isinstance(p, str) for p in protocols):
        raise InvalidParams(f"{OPERATION}: protocols must be a non-empty list of {', '.join(PROTOCOLS)}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise InvalidParams(f"{OPERATION}: unknown protocol {unknown[0][:32]!r} (one of {', '.join(PROTOCOLS)})")
    return tuple(dict.fromkeys(protocols))


def _timeout(params: Mapping[str, object]) -> float | None:
    timeout = params.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_PROTOCOL_TIMEOUT:
        raise InvalidParams(f"{OPERATION}: timeout must be a number of seconds in (0, {MAX_PROTOCOL_TIMEOUT:g}]")
    return float(timeout)


def _scope(params: Mapping[str, object]) -> Scope:
    scope = params.get("scope")
    if scope is None:
        return Scope.FULL
    if not isinstance(scope, str) or scope not in SCOPES:
        raise InvalidParams(f"{OPERATION}: scope must be one of {', '.join(SCOPES)}")
    return Scope(scope)


def parse_params(params: object) -> Request:
    """``{address, protocols?, timeout?, scope?}`` checked, or InvalidParams (before any network use)."""
    if not isinstance(params, Mapping):
        raise InvalidParams(f"{OPERATION}: params must be an object")
    return Request(_address(params), _protocols(params), _timeout(params), _scope(params))


def validate(params: Document, environment: Environment | None = None) -> None:
    """The admission check for the pipeline (``register(..., validate=validate)``)."""
    parse_params(params)
