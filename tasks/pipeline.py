"""One process's pipeline: the broker on a URL, the journal beside it, the middleware, the actors.

Both the agent's runner (:mod:`tasks.runner`) and a stand-alone worker (:mod:`tasks.worker`) build
a :class:`Pipeline`. Its middleware, in the order that matters (see :mod:`tasks.middleware`):
Lifecycle (journal), Retries (Dramatiq's), TimeLimit (Dramatiq's). The in-process worker is a
Dramatiq ``Worker`` with one thread per operation allowed to run at once, fetching no more
messages than it has threads, so that the others wait in Redis, in arrival order, where any worker
can take them. :func:`add_policy` and :func:`start_worker` do the same for any Dramatiq broker.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Retries, TimeLimit

from ksocket.collectors.base import Environment, default_environment
from ksocket.protocol import JSONObject, Operation, Result
from tasks import broker as brokers
from tasks import compat
from tasks.errors import PipelineError
from tasks.journal import Admission, Admit, Dispatch, Held, Journal, QueuedMessage, dispatched_attempt
from tasks.middleware import Lifecycle
from tasks.operations import REGISTRY, Registry

log = logging.getLogger("ksocket.tasks")


@dataclass(frozen=True)
class Timings:
    """The pipeline's clocks, in seconds. Tests shorten them; the defaults suit an agent."""

    heartbeat_timeout: float = brokers.DEFAULT_HEARTBEAT_TIMEOUT
    """A worker silent this long counts as dead: the messages it held go back on the queue. Also the
    lease of a running operation (on Redis's clock): another attempt may start it once that ends."""
    requeue_interval: float = brokers.DEFAULT_REQUEUE_INTERVAL
    """How often each consumer thread looks for dead workers' messages to requeue, and for the messages a lost
    fetch reply left in its own worker's ack set (:meth:`tasks.compat.MaintainedRedisBroker.reclaim`)."""
    worker_timeout: float = 1.0
    """Longest idle poll of a consumer (also how often an idle worker heartbeats)."""
    time_limit_interval: float = 1.0
    """How often the TimeLimit middleware looks for operations past their limit."""
    progress_interval: float = 0.25
    """Least time between two progress frames of one operation."""
    cancel_interval: float = 0.2
    """Least time between two reads of an operation's cancel flag."""
    event_wait: float = 1.0
    """Longest wait of the runner for an event before it looks at the journal anyway."""
    recover_interval: float = 10.0
    """How often the runner looks for held operations that have no message left (and re-enqueues them)."""
    orphan_age: float = 5.0
    """A held operation must be this old before it counts as having lost its message."""
    stop_grace: float = 10.0
    """On stop, how long running operations get to notice it (Interrupted) and end their attempt."""


def add_policy(broker: Broker, journal: Journal, environment: Environment, timings: Timings) -> Lifecycle:
    """Gives ``broker`` the pipeline's middleware, in the order that matters: Lifecycle (returned), Retries,
    TimeLimit. Tests give it to a StubBroker too."""
    lifecycle = Lifecycle(
        journal,
        environment,
        lease=timings.heartbeat_timeout,
        progress_interval=timings.progress_interval,
        cancel_interval=timings.cancel_interval,
    )
    for middleware in (lifecycle, Retries(), TimeLimit(interval=max(1, int(timings.time_limit_interval * 1000)))):
        broker.add_middleware(middleware)
    return lifecycle


def start_worker(broker: Broker, threads: int, timings: Timings) -> Worker:
    """A started Dramatiq worker with ``threads`` threads that fetches no more messages than it can run."""
    worker = Worker(broker, worker_threads=threads, worker_timeout=int(timings.worker_timeout * 1000))
    compat.limit_prefetch(worker, threads)
    worker.start()
    return worker


class Pipeline:
    """``environment`` is what the operations' bodies take from the settings (default: the default settings')."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = brokers.NAMESPACE,
        timings: Timings | None = None,
        registry: Registry | None = None,
        appendfsync: str = "always",
        environment: Environment | None = None,
    ) -> None:
        self.timings = timings = timings or Timings()
        self.environment = environment or default_environment()
        self.registry = registry or REGISTRY
        self.broker = brokers.create_broker(
            url,
            namespace=namespace,
            middleware=[],
            heartbeat_timeout=timings.heartbeat_timeout,
            requeue_interval=timings.requeue_interval,
            appendfsync=appendfsync,
        )
        try:
            self.journal = Journal(self.broker.redis, namespace)
            self.lifecycle = add_policy(self.broker, self.journal, self.environment, timings)
            self.registry.declare(self.broker)
        except BaseException:
            self.broker.close()
            raise
        self.worker: Worker | None = None
        self._booted = False
        self._dispatching = threading.Lock()

    # --- the in-process worker ----------------------------------------------------------------

    def start_worker(self, threads: int) -> None:
        if threads < 1:
            raise PipelineError(f"a worker needs at least one thread, not {threads}")
        if not self._booted:  # what Dramatiq's CLI does in each worker process: starts TimeLimit's timer thread
            compat.boot_process(self.broker)
            self._booted = True
        compat.wake_consumers_on_enqueue()  # the agent's own operations start at once, not after a poll's backoff
        self.lifecycle.stopping.clear()
        self.worker = start_worker(self.broker, threads, self.timings)
        log.info("worker %s: %d threads on %s", compat.broker_id(self.broker), threads, self.broker.namespace)

    def stop_worker(self, grace: float | None = None) -> None:
        """Stops taking operations; running ones get ``grace`` seconds to notice (Interrupted)."""
        with self._dispatching:  # an admission dispatching to it has handed its messages over (stop requeues them)
            worker, self.worker = self.worker, None
        if worker is None:
            return
        worker.stop(timeout=int((self.timings.stop_grace if grace is None else grace) * 1000))

    def close(self, grace: float | None = None) -> None:
        self.stop_worker(grace)
        self.broker.close()

    # --- messages -----------------------------------------------------------------------------

    def enqueue(self, operation_id: str, name: str, params: JSONObject) -> None:
        self.broker.get_actor(name).send(operation_id, params)
        compat.enqueued()

    def admit(self, operations: Sequence[Operation], limit: int) -> list[Admission | Result]:
        """Admits operations that arrived together (the ``limit`` of held ones, dedupe by id) and enqueues the
        message of each one admitted, in one atomic step (:meth:`Journal.admit_many`); the answers in order.
        While the in-process worker has threads free and nothing waits in the queue, that step puts the messages
        among the worker's fetched ones instead and marks their operations running ("dispatched"), and they go
        to its threads in memory: no fetch, no consumer to wake, no start. Until the step has answered, they
        count as held (``Holdings.reserve``), so that no consumer reclaims them; a lost answer leaves them to
        that reclaim (and their operations to the end of the lease the step may have started)."""
        prepared = [
            compat.queued_message(self.broker, self.broker.get_actor(op.name).message(op.id, op.params))
            for op in operations
        ]
        with self._dispatching:
            worker = self.worker
            slots = compat.free_threads(worker) if worker is not None else 0
            if worker is not None and slots:
                prepared = [(message, self._dispatchable(worker, message, queued)) for message, queued in prepared]
            admits = [
                Admit(op.id, op.name, op.params, queued) for op, (_, queued) in zip(operations, prepared, strict=True)
            ]
            reserved = [queued.id for _, queued in prepared if queued.fetched]
            self.broker.holdings.reserve(reserved)
            try:
                worker_id = compat.broker_id(self.broker)
                answers = self.journal.admit_many(admits, limit, Dispatch(slots, worker_id, self.lifecycle.lease))
                for (message, queued), answer in zip(prepared, answers, strict=True):
                    if answer == "dispatched" and worker is not None:
                        proxy = MessageProxy(message)
                        self.lifecycle.started_at_admission(proxy, dispatched_attempt(worker_id, queued))
                        compat.hand_to_worker(worker, proxy)
            finally:
                self.broker.holdings.release(reserved)
        for (message, _), answer in zip(prepared, answers, strict=True):
            if answer in ("admitted", "dispatched"):
                compat.after_enqueue(self.broker, message)
        if "admitted" in answers:
            compat.enqueued()
        return answers

    def _dispatchable(self, worker: Worker, message: Message[Any], queued: QueuedMessage) -> QueuedMessage:
        """The message, naming the worker's set of fetched messages of its queue if that worker consumes it."""
        if not compat.consumes(worker, message.queue_name):
            return queued
        return dataclasses.replace(queued, fetched=compat.ack_set(self.broker, message.queue_name))

    def queued_ids(self) -> set[str]:
        """Operation ids of every message Dramatiq still holds (queued, delayed, or fetched and unacked)."""
        namespace = self.broker.namespace
        with self.broker.redis.pipeline(transaction=True) as pipe:
            for queue in self.broker.get_declared_queues():
                for messages in compat.message_hashes(namespace, queue):
                    pipe.hvals(messages)
            found: list[list[bytes]] = pipe.execute()
        ids = set()
        for data in (entry for queue in found for entry in queue):
            try:
                message: Message[Any] = Message.decode(data)
            except DecodeError as exc:  # a message another program put in our queue
                log.debug("ignoring an undecodable message: %s", exc)
            else:
                if message.args and isinstance(message.args[0], str):
                    ids.add(message.args[0])
        return ids

    def orphans(self, age: float | None = None) -> list[Held]:
        """Held operations, admitted at least ``age`` seconds ago, that have no message left anywhere."""
        queued = self.queued_ids()
        limit = time.time() - (self.timings.orphan_age if age is None else age)
        return [held for held in self.journal.held() if held.id not in queued and held.admitted <= limit]

    def recover(self, age: float | None = None) -> list[str]:
        """Re-enqueues every orphan (a message lost: a Redis that lost its queues but kept the journal, a message
        another program removed)."""
        recovered = []
        for held in self.orphans(age):
            if self.registry.get(held.name) is None or held.name not in self.broker.actors:
                continue
            state = self.journal.requeued(held.id)
            if state == "cancelled":
                continue  # it was cancelled meanwhile: that is its result
            if state == "running":
                continue  # a worker runs it still, under its lease (its message went to another worker)
            log.warning("operation %s (%s) had no message left: enqueueing it again", held.id, held.name)
            self.enqueue(held.id, held.name, held.params)
            recovered.append(held.id)
        return recovered
