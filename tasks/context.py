"""What an operation body sees of the pipeline: progress reports, records and cancellation, all throttled.

The context implements :class:`ksocket.collectors.base.Context`. Cancellation is cooperative: a
``cancel`` for a running operation only sets a flag in the journal; the body notices it at its next
:meth:`~OperationContext.progress` or :meth:`~OperationContext.check_cancelled`, which raise
:class:`~tasks.errors.Cancelled`. A body that never calls them runs to its end (or to its time
limit) and still ends ``cancelled``, since the journal records a cancelled outcome for any
operation cancelled before its result. Reading the flag costs one Redis call, made at most every
``cancel_interval`` seconds; progress frames go out at most every ``progress_interval`` seconds.
The context also carries the :class:`~ksocket.collectors.base.Environment` its process was given.

Records (:meth:`~OperationContext.record`) go into the journal in batches, one Redis round trip
(and with an append-only file fsynced ``always``, one fsync) per batch: a batch is written once it
holds ``record_batch`` records, or at the first call of the body (``record``, ``progress``,
``check_cancelled``) ``record_interval`` seconds after its first record, and always before the
operation's result or retry (:meth:`~OperationContext.flush`, called by the Lifecycle middleware). A
record counts as emitted once written: one still in memory when the worker dies was never emitted,
and the attempt that runs the body again records it (a key recorded by any attempt is not recorded
again, see :meth:`tasks.journal.Journal.record`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ksocket.collectors.base import Document, Environment, checked_record
from tasks.errors import Cancelled, Interrupted
from tasks.journal import Journal, encode_record

log = logging.getLogger("ksocket.tasks")

RECORD_BATCH = 500
"""Records written to the journal in one round trip, at most."""


class OperationContext:
    def __init__(
        self,
        journal: Journal,
        operation_id: str,
        environment: Environment,
        *,
        progress_interval: float = 0.25,
        cancel_interval: float = 0.2,
        record_interval: float = 0.05,
        record_batch: int = RECORD_BATCH,
        stopping: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self.operation_id = operation_id
        self.environment = environment
        self.progress_interval = progress_interval
        self.cancel_interval = cancel_interval
        self.record_interval = record_interval
        self.record_batch = record_batch
        self.stopping = stopping or threading.Event()
        self.clock = clock
        self.document: dict[str, Any] | None = None
        """What the body returned: the result's ``data`` (kept here rather than returned to Dramatiq)."""
        self.cancelled = False
        self.continued = False
        """Set by :meth:`continue_later`: the attempt ends without a result."""
        self._last_progress = float("-inf")
        self._last_check = float("-inf")
        self._records: list[tuple[str, str]] = []  # (key or "", encoded record) not yet in the journal
        self._first_record = 0.0  # when the oldest of them was given
        self._keys: set[str] = set()  # keys given to this attempt (the journal knows every attempt's)

    def record(self, document: Document, *, key: str | None = None) -> None:
        """Adds a record (see :meth:`ksocket.collectors.base.Context.record`); written in batches."""
        encoded = encode_record(self.operation_id, checked_record(document))
        if key is not None:
            if key in self._keys:
                return
            self._keys.add(key)
        if not self._records:
            self._first_record = self.clock()
        self._records.append((key or "", encoded))
        if len(self._records) >= self.record_batch:
            self.flush()
        else:
            self._flush_if_due()

    def flush(self) -> None:
        """Writes the records given so far to the journal (one round trip); they stay here until it took them,
        so a flush that Redis refused can be tried again."""
        if self._records and self.journal.record(self.operation_id, self._records) is None:
            log.info("operation %s has its result already: %d records dropped", self.operation_id, len(self._records))
        self._records = []

    def _flush_if_due(self) -> None:
        if self._records and self.clock() - self._first_record >= self.record_interval:
            self.flush()

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

    def check_cancelled(self) -> None:
        """Raises Cancelled once the operation is cancelled, Interrupted once its worker is stopping."""
        self._flush_if_due()
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
