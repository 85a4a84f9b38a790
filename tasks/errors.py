"""The pipeline's errors, and how whatever an operation raises becomes an error code.

An operation ends with a result; a failed one carries ``error.code`` (protocol.md, "Errors"), an
:class:`~ksocket.protocol.ErrorCode`. The classified error type is the collectors' own
:class:`~ksocket.collectors.base.OperationFailed` (a code, one line for a person, and a ``transient``
flag); :func:`classify` maps anything else an operation body raises onto it at the boundary, as
httpcore's ``map_exceptions`` does. This module adds :class:`Interrupted` to that family and the
pipeline's own :class:`PipelineError`; ``ksocket.errors`` draws the whole tree.

Retry policy lives in :func:`retry_when`, handed to Dramatiq's Retries middleware as an actor
option: only transient failures are retried, and never those whose code is in :data:`NEVER_RETRIED`
whatever flag they carry.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Final

from dramatiq.errors import Retry
from dramatiq.middleware import Shutdown, TimeLimitExceeded

from ksocket.collectors.base import Cancelled, InvalidParams, OperationFailed
from ksocket.errors import KsocketError
from ksocket.protocol import ErrorCode

__all__ = [
    "NEVER_RETRIED",
    "BrokerError",
    "Cancelled",
    "Interrupted",
    "InvalidParams",
    "OperationFailed",
    "PipelineError",
    "classify",
    "retry_when",
]

NEVER_RETRIED: Final = frozenset(
    {ErrorCode.AUTH_FAILED, ErrorCode.NO_CREDENTIAL, ErrorCode.INVALID_PARAMS, ErrorCode.CANCELLED}
)
"""Codes that no number of attempts will change: retrying them only locks accounts or wastes time."""

_UNREACHABLE_ERRNOS: Final = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ECONNREFUSED, errno.ECONNRESET}
)


class PipelineError(KsocketError):
    """The pipeline (broker, journal, workers) failed, as opposed to one operation."""


class BrokerError(PipelineError):
    pass


class Interrupted(OperationFailed, Retry):
    """Raised by an operation's context once its worker is stopping: the operation runs again later.

    As a dramatiq ``Retry`` with ``delay=0`` it is re-enqueued at once (to be picked up by the next
    worker, perhaps after a restart) and never counts as the operation's outcome.
    """

    def __init__(self, message: str = "the worker is stopping") -> None:
        super().__init__(ErrorCode.INTERRUPTED, message, transient=True)
        self.delay = 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classify(exc: BaseException) -> OperationFailed:
    """The failure the hub sees for ``exc``: an OperationFailed as is, anything else mapped to a code."""
    if isinstance(exc, OperationFailed):
        return exc
    if isinstance(exc, TimeLimitExceeded):
        return OperationFailed(ErrorCode.TIMEOUT, "the operation exceeded its time limit")
    if isinstance(exc, Shutdown):
        return Interrupted()
    if isinstance(exc, TimeoutError):
        return OperationFailed(ErrorCode.TIMEOUT, _one_line(exc), transient=True)
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return OperationFailed(ErrorCode.UNREACHABLE, _one_line(exc), transient=True)
    return OperationFailed(ErrorCode.INTERNAL, _one_line(exc))


def retry_when(max_retries: int) -> Callable[[int, BaseException], bool]:
    """The ``retry_when`` actor option for Dramatiq's Retries middleware.

    Retries calls it with the number of retries so far and the exception; since it takes
    precedence over ``max_retries``, it applies that bound itself. An :class:`Interrupted`
    operation is always re-enqueued: it did not fail, its worker went away.
    """

    def should_retry(retries: int, exc: BaseException) -> bool:
        failure = classify(exc)
        if isinstance(failure, Interrupted):
            return True
        return failure.transient and failure.code not in NEVER_RETRIED and retries < max_retries

    return should_retry
