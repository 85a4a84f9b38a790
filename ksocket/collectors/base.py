"""The one small interface every collector sits behind.

An operation body is ``collect(params, context) -> dict``: ``params`` is the operation's JSON
object, validated by the collector itself (raise :class:`InvalidParams` before touching the
network); ``context`` reports progress and tells it when it was cancelled. A failure the hub should
see as an error code is an :class:`OperationFailed`; ``transient`` says whether the pipeline may
retry it (a timeout or an unreachable cloud API may heal; a wrong password will not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ksocket.errors import KsocketError

Document = dict[str, Any]


class Context(Protocol):
    def progress(self, done: int, total: int) -> None:
        """Reports progress (throttled by the pipeline); raises Cancelled once the operation is cancelled."""
        ...

    def check_cancelled(self) -> None:
        """Raises Cancelled once the operation is cancelled; call it between units of work."""
        ...


Collect = Callable[[Document, Context], Document]


class OperationFailed(KsocketError):
    """An operation's failure as the hub sees it: ``code`` (protocol.md's error codes) and one line."""

    def __init__(self, code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient


class InvalidParams(OperationFailed):
    def __init__(self, message: str) -> None:
        super().__init__("invalid-params", message)


class Cancelled(OperationFailed):
    def __init__(self, message: str = "cancelled") -> None:
        super().__init__("cancelled", message)


class NullContext:
    """For running a collector outside the pipeline: progress goes nowhere, nothing is cancelled."""

    def progress(self, done: int, total: int) -> None:
        return None

    def check_cancelled(self) -> None:
        return None
