"""The pipeline's errors, and how whatever an operation raises becomes an error code.

An operation ends with a result; a failed one carries ``error.code`` (protocol.md, "Errors").
The classified error type is the collectors' own :class:`~ksocket.collectors.base.OperationFailed`
(a code, one line for a person, and a ``transient`` flag); :func:`classify` maps anything else
an operation body raises onto it at the boundary, as httpcore's ``map_exceptions`` does.

    KsocketError
    ├── PipelineError            the pipeline itself failed
    │   └── BrokerError          the broker URL is invalid, or its Redis cannot be started or reached
    └── OperationFailed          an operation's failure as the hub sees it: code + transient
        ├── InvalidParams        invalid-params (refused up front; never retried)
        ├── Cancelled            cancelled (never retried)
        └── Interrupted          interrupted: this worker is stopping; the operation runs again later
                                 (also a dramatiq ``Retry``, so the Retries middleware re-enqueues it
                                 at once, without logging it as an error)

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

__all__ = [
    "AUTH_FAILED",
    "CANCELLED",
    "INTERNAL",
    "INTERRUPTED",
    "INVALID_PARAMS",
    "NEVER_RETRIED",
    "NO_CREDENTIAL",
    "TIMEOUT",
    "UNREACHABLE",
    "BrokerError",
    "Cancelled",
    "Interrupted",
    "InvalidParams",
    "OperationFailed",
    "PipelineError",
    "classify",
    "retry_when",
]

TIMEOUT: Final = "timeout"
UNREACHABLE: Final = "unreachable"
AUTH_FAILED: Final = "auth-failed"
NO_CREDENTIAL: Final = "no-credential"
INVALID_PARAMS: Final = "invalid-params"
CANCELLED: Final = "cancelled"
INTERNAL: Final = "internal"
INTERRUPTED: Final = "interrupted"

NEVER_RETRIED: Final = frozenset({AUTH_FAILED, NO_CREDENTIAL, INVALID_PARAMS, CANCELLED})
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
        super().__init__(INTERRUPTED, message, transient=True)
        self.delay = 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classify(exc: BaseException) -> OperationFailed:
    """The failure the hub sees for ``exc``: an OperationFailed as is, anything else mapped to a code."""
    if isinstance(exc, OperationFailed):
        return exc
    if isinstance(exc, TimeLimitExceeded):
        return OperationFailed(TIMEOUT, "the operation exceeded its time limit")
    if isinstance(exc, Shutdown):
        return Interrupted()
    if isinstance(exc, TimeoutError):
        return OperationFailed(TIMEOUT, _one_line(exc), transient=True)
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return OperationFailed(UNREACHABLE, _one_line(exc), transient=True)
    return OperationFailed(INTERNAL, _one_line(exc))


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
