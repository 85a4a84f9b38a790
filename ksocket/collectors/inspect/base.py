"""The interface of one inspection protocol, and the failures the hub sees for it.

An :class:`Inspector` tries ONE credential file against one address and returns what it
collected (as much as its :class:`~ksocket.collectors.inspect.scope.Scope` asks), or raises
:class:`~ksocket.collectors.base.OperationFailed` with an :class:`~ksocket.protocol.ErrorCode`.
Choosing credential files, trying them in order, limits and timeouts are the orchestrator's job
(``ksocket.collectors.inspect.hosts``), not the inspector's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from ksocket import redact
from ksocket.collectors.base import Context, Document
from ksocket.collectors.inspect import parsers
from ksocket.collectors.inspect.scope import Scope
from ksocket.credentials.models import Credential


class Inspector(Protocol):
    kind: str
    """``ssh``, ``winrm`` or ``snmp``: also the credentials folder it reads."""

    async def inspect(
        self, address: str, credential: Credential, context: Context, *, scope: Scope = Scope.FULL
    ) -> Document: ...


def server_text(text: str, limit: int = 512) -> str:
    """Text a peer chose (a disconnect reason, a fault, an error) as one line without control
    characters, so that it can neither forge log lines nor drive a terminal; secrets masked."""
    return parsers.clean(redact.redact(text), limit)


def default_route(address: str, credential: Credential) -> tuple[Hashable, ...]:
    """The address, the port and the SSH jump chain of an attempt with ``credential``."""
    return (address, credential.port, tuple(getattr(credential, "ssh_tunnels", ())))


def connection_route(inspector: Inspector, address: str, credential: Credential) -> Hashable:
    """Where an attempt with ``credential`` connects to: what an ``unreachable`` or ``timeout`` is about.

    :func:`default_route`, unless the inspector says otherwise with a ``route(address,
    credential)`` method of its own (WinRM adds the scheme).
    """
    own = getattr(inspector, "route", None)
    if callable(own):
        route: Hashable = own(address, credential)
        return route
    return default_route(address, credential)
