"""The one small interface every collector sits behind.

An operation body is ``collect(params, context) -> dict``: ``params`` is the operation's JSON
object, validated by the collector itself (raise :class:`InvalidParams` before touching the
network); ``context`` reports progress and tells it when it was cancelled. A failure the hub should
see as an error code is an :class:`OperationFailed`; ``transient`` says whether the pipeline may
retry it (a timeout or an unreachable cloud API may heal; a wrong password will not).

What a collector needs of the agent's settings and process comes on the context too, as its
:class:`Environment`: the caller (the pipeline, ``ksocket scan``, ``ksocket inspect``) builds it once
from the loaded settings (:meth:`Environment.from_settings`); collectors never read the settings
themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ksocket.errors import KsocketError
from ksocket.protocol import ErrorCode

if TYPE_CHECKING:
    from ksocket.collectors.inspect.hostkeys import HostKeyStore
    from ksocket.collectors.inspect.limiter import HostLimiter
    from ksocket.config import Settings

Document = dict[str, Any]


@dataclass(frozen=True)
class Environment:
    """What collectors take from the agent's settings and share across its operations.

    ``networks_scan_mode`` is ``networks.scan``'s mode when the params name none
    (``operations.networksScanMode``); ``credentials_root`` the credential files' folder
    (``directories.credentials``); ``limiter`` the connection slots per address and ``host_keys``
    the remembered SSH host keys, both shared by every inspection that uses this environment.
    """

    credentials_root: Path
    limiter: HostLimiter
    host_keys: HostKeyStore
    networks_scan_mode: str = "intranet"

    @classmethod
    def from_settings(cls, settings: Settings) -> Environment:
        """A fresh environment for ``settings``: its own connection slots, the default host key file."""
        # imported here: building the command line loads this module, and these load asyncio
        from ksocket.collectors.inspect.hostkeys import HostKeyStore
        from ksocket.collectors.inspect.limiter import HostLimiter

        return cls(settings.credentials_path, HostLimiter(), HostKeyStore(), settings.networks_scan_mode)


def default_environment() -> Environment:
    """The environment of the default settings (no settings file read), for collectors run by hand."""
    from ksocket.config import Settings

    return Environment.from_settings(Settings())


class Context(Protocol):
    @property
    def environment(self) -> Environment:
        """What the collector may take from the settings (see :class:`Environment`)."""
        ...

    def progress(self, done: int, total: int) -> None:
        """Reports progress (throttled by the pipeline); raises Cancelled once the operation is cancelled."""
        ...

    def check_cancelled(self) -> None:
        """Raises Cancelled once the operation is cancelled; call it between units of work."""
        ...

    def record(self, document: Document, *, key: str) -> None:
        """Sends ``document`` to the hub as a record of the operation, once per ``key``."""
        ...


Collect = Callable[[Document, Context], Document]


class OperationFailed(KsocketError):
    """An operation's failure as the hub sees it: an ``ErrorCode`` (protocol.md, "Errors") and one line."""

    def __init__(self, code: ErrorCode, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


class InvalidParams(OperationFailed):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_PARAMS, message)


class Cancelled(OperationFailed):
    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(ErrorCode.CANCELLED, message)


class NullContext:
    """For running a collector outside the pipeline: progress goes nowhere, nothing is cancelled.

    Without an ``environment``, the default settings' one (made when first asked for).
    """

    def __init__(self, environment: Environment | None = None) -> None:
        self._environment = environment
        self.records: list[Document] = []
        """What :meth:`record` was given, each key once, in order."""
        self._keys: set[str] = set()

    @functools.cached_property
    def environment(self) -> Environment:
        return self._environment or default_environment()

    def progress(self, done: int, total: int) -> None:
        return None

    def check_cancelled(self) -> None:
        return None

    def record(self, document: Document, *, key: str) -> None:
        if key not in self._keys:
            self._keys.add(key)
            self.records.append(document)
