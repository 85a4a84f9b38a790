"""The one small interface every collector sits behind.

An operation body is ``collect(params, context) -> dict``: ``params`` is the operation's JSON
object, validated by the collector itself (raise :class:`InvalidParams` before touching the
network); ``context`` reports progress, takes the operation's records (:meth:`Context.record`: a long
operation reports hosts and networks as it finds them, its result then a summary) and tells it when
it was cancelled. A failure the hub should
see as an error code is an :class:`OperationFailed`; ``transient`` says whether the pipeline may
retry it (a timeout or an unreachable cloud API may heal; a wrong password will not).

What a collector needs of the agent's settings and process comes on the context too, as its
:class:`Environment`: the caller (the pipeline, ``ksocket scan``, ``ksocket inspect``) builds it once
from the loaded settings (:meth:`Environment.from_settings`); collectors never read the settings
themselves.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ksocket.errors import KsocketError
from ksocket.protocol import MAX_RECORD, ErrorCode

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

    def record(self, document: Document, *, key: str | None = None) -> None:
        """Adds one record of the operation's output, for the hub before the operation's result.

        ``document`` is a JSON object with a non-empty string ``kind`` ("host", "network", "details", ...),
        of at most ``protocol.MAX_RECORD`` bytes of JSON; anything else raises ValueError (or TypeError).
        ``key`` names what the record is about (``"host:198.18.0.5"``): the operation records each key once,
        however often it is given, and whatever attempt gives it. A body that Dramatiq runs again after a crash
        records what it finds again: with keys, the hub still gets each record exactly once; without, a record
        can come twice. The pipeline makes records durable in batches (see ``tasks.context``): a record is
        the hub's, exactly once, when the operation's result is; one not yet written when the worker dies is
        written by the attempt that runs the body again.
        """
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


class RecordList:
    """What a context outside the pipeline does with records: keeps them in :attr:`documents`, in the order
    given, each key once."""

    def __init__(self) -> None:
        self.documents: list[Document] = []
        self._keys: set[str] = set()

    def add(self, document: Document, key: str | None) -> None:
        checked_record(document)
        if key is not None:
            if key in self._keys:
                return
            self._keys.add(key)
        self.documents.append(document)


class NullContext:
    """For running a collector outside the pipeline: progress goes nowhere, nothing is cancelled, and
    :attr:`records` keeps the records.

    Without an ``environment``, the default settings' one (made when first asked for).
    """

    def __init__(self, environment: Environment | None = None) -> None:
        self._environment = environment
        self.records = RecordList()

    @functools.cached_property
    def environment(self) -> Environment:
        return self._environment or default_environment()

    def progress(self, done: int, total: int) -> None:
        return None

    def check_cancelled(self) -> None:
        return None

    def record(self, document: Document, *, key: str | None = None) -> None:
        self.records.add(document, key)


def checked_record(document: Document) -> str:
    """The record as compact JSON, once it is one a context may take (see :meth:`Context.record`)."""
    kind = document.get("kind") if isinstance(document, dict) else None
    if not isinstance(kind, str) or not kind:
        raise ValueError('a record must be a JSON object with a non-empty string "kind"')
    encoded = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if len(encoded.encode("utf-8")) > MAX_RECORD:  # strict: a lone surrogate is a ValueError too
        raise ValueError(f"a {kind} record is larger than {MAX_RECORD} bytes of JSON")
    return encoded
