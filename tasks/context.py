"""What an operation body sees of the pipeline: progress reports and cancellation, both throttled.

The context implements :class:`ksocket.collectors.base.Context`. Cancellation is cooperative: a
``cancel`` for a running operation only sets a flag in the journal; the body notices it at its next
:meth:`~OperationContext.progress` or :meth:`~OperationContext.check_cancelled`, which raise
:class:`~tasks.errors.Cancelled`. A body that never calls them runs to its end (or to its time
limit) and still ends ``cancelled``, since the journal records a cancelled outcome for any
operation cancelled before its result. Reading the flag costs one Redis call, made at most every
``cancel_interval`` seconds; progress frames go out at most every ``progress_interval`` seconds.
The context also carries the :class:`~ksocket.collectors.base.Environment` its process was given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ksocket.collectors.base import Environment
from tasks.errors import Cancelled, Interrupted
from tasks.journal import Journal


class OperationContext:
    def __init__(
        self,
        journal: Journal,
        operation_id: str,
        environment: Environment,
        *,
        progress_interval: float = 0.25,
        cancel_interval: float = 0.2,
        stopping: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self.operation_id = operation_id
        self.environment = environment
        self.progress_interval = progress_interval
        self.cancel_interval = cancel_interval
        self.stopping = stopping or threading.Event()
        self.clock = clock
        self.document: dict[str, Any] | None = None
        """What the body returned: the result's ``data`` (kept here rather than returned to Dramatiq)."""
        self.cancelled = False
        self.continued = False
        """Set by :meth:`continue_later`: the attempt ends without a result."""
        self._last_progress = float("-inf")
        self._last_check = float("-inf")

    def progress(self, done: int, total: int) -> None:
        """Reports ``done`` of ``total`` units (at most one frame per progress_interval); may raise Cancelled."""
        self.check_cancelled()
        now = self.clock()
        if now - self._last_progress >= self.progress_interval:
            self._last_progress = now
            self.journal.progress(self.operation_id, max(0, int(done)), max(0, int(total)))

    def continue_later(self) -> None:
        """This attempt ends without a result: a later message of the operation completes it
        (:mod:`tasks.middleware`); the operation stays held meanwhile."""
        self.continued = True

    def record(self, document: dict[str, Any], *, key: str) -> None:
        """A record of the operation for the hub: the records engineer's journal entry (not on this branch)."""
        raise NotImplementedError("records are not journaled yet")

    def check_cancelled(self) -> None:
        """Raises Cancelled once the operation is cancelled, Interrupted once its worker is stopping."""
        if self.stopping.is_set():
            raise Interrupted()
        if not self.cancelled:
            now = self.clock()
            if now - self._last_check < self.cancel_interval:
                return
            self._last_check = now
            self.cancelled = self.journal.is_cancelled(self.operation_id)
        if self.cancelled:
            raise Cancelled("cancelled by the hub")
