"""The journal's side of Dramatiq: the :class:`Lifecycle` middleware that starts and finishes operations.

Policy is split the way Dramatiq splits it. Retries (Dramatiq's ``Retries``, with the
``retry_when`` actor option of :func:`tasks.errors.retry_when`) decides whether a failed attempt
runs again; the time limit is Dramatiq's ``TimeLimit`` with the ``time_limit`` actor option;
Lifecycle only records what they decided. It must come FIRST in the broker's middleware list:
Dramatiq calls ``before_*`` hooks in list order and ``after_*`` hooks in reverse, so Lifecycle's
``before_process_message`` runs before the time limit starts counting and its
``after_process_message`` runs after TimeLimit has disarmed and Retries has decided:

* no exception: the body's document is the result (``ok``);
* an exception and the message failed (Retries gave up, or would never retry it): the
  classified error is the result;
* an exception and the message did not fail: Retries re-enqueued it; the operation stays held.

Whichever it is, the records the body gave and its context has not written yet are written first,
so that every record has a lower seq than its operation's result.

``before_process_message`` asks the journal whether to run the message at all: not if the operation
already has a result (a message redelivered after its worker died between the result and the ack)
or is no longer held, nor if it was cancelled while it waited; those messages are skipped (acked).
A message fetched while the worker stops is put back on its queue and skipped, for the next worker.
A successful outcome acks its message in the journal's script that records it (Dramatiq's own ack
then sends nothing), and an ack or nack wakes a consumer that waits with its prefetch full: one Redis
call fewer per operation, and no consumer waiting out a poll backoff for the slot just freed. Each result
recorded here is also told to ``on_result`` (the agent's runner), once the journal holds it.
A message that an admission dispatched to this process's worker (:meth:`tasks.pipeline.Pipeline.admit`)
comes with its operation marked running already, under the attempt that admission started: it runs
without a start of its own.
Dramatiq delivers at least once: a worker that only looks dead (a clock that disagrees, Redis out of
reach longer than the heartbeat timeout) has its message handed to another while it still runs it.
So each attempt runs under a lease in the journal, on Redis's clock, which this middleware renews
from one thread per process while the body runs; a message for an operation whose lease another
attempt holds is put back, delayed by one lease, and skipped: it runs only if that attempt vanished.
A message that Dramatiq dead-letters any other way (no actor of that name on this worker) ends its
operation with ``internal``, so the hub never waits for a result that cannot come.

An operation may be completed by a later message than the one that started it (``networks.discover``:
:mod:`tasks.discover`). Its body says so with :meth:`~tasks.context.OperationContext.continue_later`:
its attempt then ends without a result (the lease is released, the operation stays held, a cancel
flagged meanwhile ends it ``cancelled``), and a later message of the same actor runs it again. Messages
of a *continuation* actor (the ``continuation`` actor option, :mod:`tasks.operations`) run under no
lease, any number at once: only while their operation is held and not cancelled; a success records
nothing, a failure that Dramatiq gave up on is the operation's result.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final, TypeVar

import redis
from dramatiq.broker import Broker, MessageProxy
from dramatiq.message import Message
from dramatiq.middleware import Middleware, SkipMessage, TimeLimitExceeded

from ksocket.collectors.base import Environment
from ksocket.protocol import ErrorCode, Result
from tasks import compat
from tasks.context import OperationContext
from tasks.errors import OperationFailed, classify
from tasks.journal import Delivery, Journal, encode_failure, encode_success

log = logging.getLogger("ksocket.tasks")

T = TypeVar("T")
RECORD_RETRY_FIRST = 0.05  # seconds before a journal write that Redis refused is tried again
RECORD_RETRY_MOST = 2.0  # the longest wait between two tries

_current = threading.local()


def current_context(operation_id: str) -> OperationContext:
    """The context Lifecycle prepared for the operation this worker thread is about to run."""
    context: OperationContext | None = getattr(_current, "context", None)
    if context is None or context.operation_id != operation_id:
        # Lifecycle did not start it (the journal was unreachable): a transient failure, retried later.
        raise OperationFailed(
            ErrorCode.INTERNAL, f"operation {operation_id} started without its journal entry", transient=True
        )
    return context


def current_broker() -> Broker:
    """The broker of the message this worker thread runs (for a body that sends the next messages)."""
    broker: Broker | None = getattr(_current, "broker", None)
    if broker is None:
        raise OperationFailed(ErrorCode.INTERNAL, "no message is running in this thread")
    return broker


def is_continuation(broker: Broker, message: Message[Any] | MessageProxy) -> bool:
    actor = broker.actors.get(message.actor_name)
    return actor is not None and bool(actor.options.get("continuation"))


def operation_id(message: Message[Any] | MessageProxy) -> str | None:
    """The operation id a message carries (its first argument), or None for a foreign message."""
    if message.args and isinstance(message.args[0], str):
        return message.args[0]
    return None


_STARTED_AS: Final = "ksocket_started_as"
"""The attribute of a MessageProxy naming the attempt its admission started (:meth:`Lifecycle.started_at_admission`)."""


class Lifecycle(Middleware):
    """Starts each operation in the journal before its body runs and records its outcome after."""

    def __init__(
        self,
        journal: Journal,
        environment: Environment,
        *,
        lease: float = 10.0,
        progress_interval: float = 0.25,
        cancel_interval: float = 0.2,
    ) -> None:
        self.journal = journal
        self.environment = environment
        """What the operations' bodies get from the settings (on their context)."""
        self.lease = lease
        """Seconds an attempt holds its operation without a renewal; renewed every quarter of that."""
        self.progress_interval = progress_interval
        self.cancel_interval = cancel_interval
        self.stopping = threading.Event()
        """Set when the worker stops: running bodies get Interrupted at their next check."""
        self.on_result: Callable[[Result], None] | None = None
        """Told, in the worker thread, each result this process's worker records once the journal holds it
        (the agent's runner hands it out without waiting for the journal's event)."""
        self._attempts: dict[str, str] = {}
        """Operation id -> attempt, for the operations this process runs now (their leases to renew)."""
        self._attempts_lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._renewer_stop = threading.Event()

    @property
    def actor_options(self) -> set[str]:
        return {"continuation"}

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._renewer_stop.clear()
        self._renewer = threading.Thread(target=self._renew_leases, name="ksocket-leases", daemon=True)
        self._renewer.start()

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._renewer_stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None

    def _renew_leases(self) -> None:
        while not self._renewer_stop.wait(self.lease / 4):
            with self._attempts_lock:
                attempts = dict(self._attempts)
            try:
                self.journal.renew(attempts, self.lease)
            except Exception as exc:  # Redis out of reach: the next round tries again
                log.warning("cannot renew the leases of %d running operations: %s", len(attempts), exc)

    def _forget_attempt(self, op_id: str) -> str:
        with self._attempts_lock:
            return self._attempts.pop(op_id, "")

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        op_id = operation_id(message)
        if op_id is None:
            return
        attempt: str | None = getattr(message, _STARTED_AS, None)
        if self.stopping.is_set():  # fetched as the worker stops (its consumers wake at once): left for the next
            self._put_back(broker, message, op_id, attempt)
        if is_continuation(broker, message):
            self._continue(broker, message, op_id)
            return
        attempt = attempt or self._start(broker, message, op_id)
        with self._attempts_lock:
            self._attempts[op_id] = attempt
        self._prepare(broker, op_id)

    def started_at_admission(self, message: MessageProxy, attempt: str) -> None:
        """The admission that dispatched ``message`` to this process's worker marked its operation running under
        ``attempt`` (:meth:`tasks.journal.Journal.admit_many`): the worker runs it without a start of its own."""
        setattr(message, _STARTED_AS, attempt)

    def _start(self, broker: Broker, message: MessageProxy, op_id: str) -> str:
        """Marks the operation running under a new attempt (returned), or raises SkipMessage saying why not."""
        attempt = f"{compat.broker_id(broker)}/{uuid.uuid4().hex[:12]}"
        state = self.journal.start(op_id, attempt, self.lease)
        if state == "busy":
            log.warning("operation %s (%s) already runs under another attempt's lease", op_id, message.actor_name)
            broker.enqueue(message.copy(), delay=int(self.lease * 1000))  # looks again once that lease could end
        if state != "run":
            log.info("operation %s (%s) not run: %s", op_id, message.actor_name, state)
            raise SkipMessage(state)
        return attempt

    def _put_back(self, broker: Broker, message: MessageProxy, op_id: str, attempt: str | None) -> None:
        """Enqueues the message again for the next worker and skips it here; an operation its admission marked
        running is released first (else the next worker would wait out its lease)."""
        if attempt is not None:
            try:
                self.journal.requeued(op_id, attempt)
            except redis.RedisError as exc:  # the lease then ends on its own
                log.warning("operation %s: cannot release its attempt as the worker stops (%s)", op_id, exc)
        broker.enqueue(message.copy())
        raise SkipMessage("the worker is stopping")

    def _continue(self, broker: Broker, message: MessageProxy, op_id: str) -> None:
        if self.journal.lookup(op_id) != "held" or self.journal.is_cancelled(op_id):
            log.info("%s of operation %s not run: the operation is over", message.actor_name, op_id)
            raise SkipMessage("over")
        self._prepare(broker, op_id)

    def _prepare(self, broker: Broker, op_id: str) -> None:
        _current.broker = broker
        _current.context = OperationContext(
            self.journal,
            op_id,
            self.environment,
            progress_interval=self.progress_interval,
            cancel_interval=self.cancel_interval,
            stopping=self.stopping,
        )

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        op_id = operation_id(message)
        context: OperationContext | None = getattr(_current, "context", None)
        _current.context = _current.broker = None
        if op_id is None:
            return
        if context is not None:  # its records are written before its outcome, or the next message's
            self._until_recorded(op_id, context.flush)
        if is_continuation(broker, message):
            if exception is not None and getattr(message, "failed", False):
                self._record(op_id, message.actor_name, self._failure(broker, message, exception))
            return
        attempt = self._forget_attempt(op_id)
        if exception is None and context is not None and context.continued:
            state = self._until_recorded(op_id, lambda: self.journal.requeued(op_id, attempt))
            log.info("operation %s (%s) continues in later messages: %s", op_id, message.actor_name, state)
            return
        if exception is None:  # acked with its outcome: one Redis call fewer (Dramatiq's ack then sends nothing)
            delivery = compat.delivery(broker, message)
            self._record(op_id, message.actor_name, self._success(op_id, message.actor_name, context), delivery)
            if delivery is not None:
                compat.acked_with_outcome(message)
        elif getattr(message, "failed", False):
            self._record(op_id, message.actor_name, self._failure(broker, message, exception))
        else:
            self._until_recorded(op_id, lambda: self.journal.requeued(op_id, attempt))
            log.info("operation %s (%s) waits for another attempt: %s", op_id, message.actor_name, exception)

    def _record(self, op_id: str, name: str, outcome: str, delivery: Delivery | None = None) -> None:
        result = self._until_recorded(op_id, lambda: self.journal.finish(op_id, outcome, delivery))
        if result is None:
            log.info("operation %s (%s) already had its result: this outcome is dropped", op_id, name)
        else:
            log.info("operation %s (%s) finished: result seq %d", op_id, name, result.seq)
            if self.on_result is not None:
                self.on_result(result)

    def _until_recorded(self, op_id: str, record: Callable[[], T]) -> T:
        """Runs ``record`` (a journal write) until the broker's Redis takes it. Dramatiq acks the message
        once this hook returns, whatever it raised: an outcome lost to a Redis outage here would leave the
        operation held with no message to finish it. A worker that is stopping gives up (and Dramatiq,
        which needs the same Redis to ack, leaves the message to run again)."""
        delay = RECORD_RETRY_FIRST
        while True:
            try:
                return record()
            except redis.RedisError as exc:
                if self.stopping.is_set():
                    raise
                log.warning("operation %s: its outcome waits for the broker's Redis (%s)", op_id, exc)
                self.stopping.wait(delay)
                delay = min(2 * delay, RECORD_RETRY_MOST)

    def _failure(self, broker: Broker, message: MessageProxy, exception: BaseException) -> str:
        if isinstance(exception, TimeLimitExceeded):
            limit = message.options.get("time_limit") or broker.get_actor(message.actor_name).options.get("time_limit")
            within = f" of {limit / 1000:g} s" if limit else ""
            return encode_failure(ErrorCode.TIMEOUT, f"{message.actor_name} exceeded its time limit{within}")
        failure = classify(exception)
        return encode_failure(failure.code, str(failure))

    def _success(self, op_id: str, name: str, context: OperationContext | None) -> str:
        document = context.document if context is not None else None
        if not isinstance(document, dict):
            return encode_failure(ErrorCode.INTERNAL, f"{name} returned {type(document).__name__}, not a JSON object")
        try:
            return encode_success(document)
        except (TypeError, ValueError) as exc:
            return encode_failure(ErrorCode.INTERNAL, f"{name} returned data that JSON cannot carry: {exc}")

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self.stopping.set()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        _current.context = _current.broker = None

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        compat.slot_freed()

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        compat.slot_freed()
        op_id = operation_id(message)
        if op_id is None:
            return
        text = f"no worker could run {message.actor_name} (message dead-lettered)"
        if self.journal.finish(op_id, encode_failure(ErrorCode.INTERNAL, text)) is not None:
            log.error("operation %s: %s", op_id, text)


__all__ = ["Lifecycle", "current_broker", "current_context", "is_continuation", "operation_id"]
