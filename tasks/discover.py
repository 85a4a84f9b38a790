"""``networks.discover`` through the pipeline: the loop's state in Redis, its steps and learns as messages.

No thread waits for another message's outcome; the coordinator is the pure
:class:`~ksocket.collectors.discover.loop.Discovery`, kept as JSON under
``<ns>:discover:<operation id>`` (and its step queue beside it) between messages::

    admission ─▶ networks.discover message (a *step*, host-bound: it sweeps from the agent's position)
                   state missing: start it from the agent's tables and the seeds, store it
                   sweep the round's fenced candidates (the engine) ──▶ record: host
                   store the sweep; one discover.learn per live host ──▶ continue_later()
                                     │
    discover.learn (a continuation: any worker) ── hosts.inspect of one host, then the core's learned()
                   stored atomically ──▶ record: network, details
                   the learn that completes the round sends the next step (to the agent's host queue)
                                     │
    networks.discover … until a round adds nothing: the last step returns the summary (the result),
                   and says in one line how many hosts no credential file served, per protocol

Every change of the state is one optimistic transaction (WATCH, the core's event, SET), and every
event names its round, so a step or a learn that runs twice changes nothing. The records an event
makes are stored in the same transaction (``<ns>:discover:<id>:unsent``) and leave it once written to
the journal; every message first delivers what is left there, so a worker that dies between the
transaction and the journal loses no record (the journal takes each key once). A crash between
messages leaves either a message to redeliver (Dramatiq requeues a dead worker's messages) or none,
and then the runner's recovery (:meth:`tasks.pipeline.Pipeline.recover`) sends the step again,
which goes on from the stored state. A cancel ends the operation in the journal; the messages still
queued for it are skipped (:class:`~tasks.middleware.Lifecycle`). The state expires a week after its
last change.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

import redis
from redis.typing import EncodableT, FieldT

from ksocket.collectors.base import Context, Document, OperationFailed
from ksocket.collectors.discover import params as discover_params
from ksocket.collectors.discover.drivers import Drivers, LiveDrivers, emit, unmatched_line
from ksocket.collectors.discover.loop import Discovery, Record, Sweep
from ksocket.collectors.discover.params import OPERATION
from ksocket.protocol import ErrorCode
from tasks.context import OperationContext
from tasks.errors import Cancelled, Interrupted

if TYPE_CHECKING:
    from tasks.operations import Registry

log = logging.getLogger("ksocket.tasks")

LEARN: Final = "discover.learn"
UNSENT: Final = ":unsent"
"""Beside the state: journal key -> a record an event made, until it is in the journal."""
KEPT: Final = 7 * 24 * 3600
"""Seconds the state of a discovery is kept after its last change (a cancelled one is never finished)."""
T = TypeVar("T")

DRIVERS: list[Drivers] = [LiveDrivers()]
"""The drivers the actors use: the last one (tests push a fake)."""


class LoopStore:
    """The loop states of one namespace in one Redis."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.prefix = f"{namespace}:discover:"

    def load(self, operation_id: str) -> Discovery | None:
        text = self.client.hget(self.prefix + operation_id, "state")
        return Discovery.from_json(text) if text is not None else None

    def step_queue(self, operation_id: str) -> str:
        queue = self.client.hget(self.prefix + operation_id, "queue")
        if queue is None:
            raise OperationFailed(ErrorCode.INTERNAL, f"discovery {operation_id} has no state")
        return queue.decode() if isinstance(queue, bytes) else str(queue)

    def create(self, operation_id: str, discovery: Discovery, queue: str) -> bool:
        """Stores a new state unless one exists; True if this one was stored."""
        key = self.prefix + operation_id
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "state", discovery.to_json())
            pipe.hsetnx(key, "queue", queue)
            pipe.expire(key, KEPT)
            stored, _, _ = pipe.execute()
        return bool(stored)

    def apply(
        self, operation_id: str, change: Callable[[Discovery], tuple[list[Record], T]]
    ) -> tuple[list[Record], T, Discovery]:
        """``change`` applied to the stored state, atomically (retried when another writer came first); the
        records it made are stored with the state, unsent until :meth:`deliver` gave them to the journal."""
        key = self.prefix + operation_id
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    text = pipe.hget(key, "state")
                    if text is None:
                        raise OperationFailed(ErrorCode.INTERNAL, f"discovery {operation_id} has no state")
                    discovery = Discovery.from_json(text)
                    records, answer = change(discovery)
                    pipe.multi()
                    pipe.hset(key, "state", discovery.to_json())
                    if records:
                        unsent: dict[FieldT, EncodableT] = {
                            r.journal_key: _encode(at, r) for at, r in enumerate(records)
                        }
                        pipe.hset(key + UNSENT, mapping=unsent)
                        pipe.expire(key + UNSENT, KEPT)
                    pipe.expire(key, KEPT)
                    pipe.execute()
                    return records, answer, discovery
                except redis.WatchError:
                    continue

    def deliver(self, operation_id: str, context: OperationContext) -> None:
        """Every unsent record of the discovery into the journal (each journal key once, whoever gave it
        before), then off the unsent list: records a message made but died before writing are not lost."""
        key = self.prefix + operation_id + UNSENT
        unsent = self.client.hgetall(key)
        if not unsent:
            return
        emit(context, [record for _, record in sorted(map(_decode, unsent.values()), key=_emission_order)])
        context.flush()
        self.client.hdel(key, *unsent)


def _encode(position: int, record: Record) -> str:
    """An unsent record with its position among its event's records."""
    return json.dumps([position, record.kind, record.key, record.version, record.document], separators=(",", ":"))


def _decode(text: str | bytes) -> tuple[int, Record]:
    position, kind, key, version, document = json.loads(text)
    return position, Record(kind, key, document, version)


def _emission_order(item: tuple[int, Record]) -> tuple[int, int]:
    """A host's first record before its updates; otherwise the order its event gave them."""
    position, record = item
    return record.version, position


def _pipeline_context(context: Context) -> OperationContext:
    if not isinstance(context, OperationContext):
        raise OperationFailed(
            ErrorCode.INTERNAL, f"{OPERATION} runs in the pipeline only (ksocket discover runs it here)"
        )
    return context


def _store(context: OperationContext) -> LoopStore:
    return LoopStore(context.journal.client, context.journal.namespace)


def step(params: Document, context: Context) -> Document:
    """The operation's body: one step of the loop (see the module docstring)."""
    from tasks.middleware import current_broker

    operation = _pipeline_context(context)
    request = discover_params.parse_params(params)
    store, drivers, op_id = _store(operation), DRIVERS[-1], operation.operation_id
    state = store.load(op_id)
    if state is None:
        view = drivers.view()
        queue = current_broker().get_actor(OPERATION).queue_name
        store.create(op_id, Discovery.start(request, view.own, view.origins, view.connected), queue)
        state = store.load(op_id)
        assert state is not None
    store.deliver(op_id, operation)  # what an attempt that died made
    if state.round == 0 and state.phase == "sweep":  # the agent's connected networks, once per key
        emit(context, [Record("network", f"network:{cidr}", doc) for cidr, doc in state.networks.items()])
    while (sweep := state.next_sweep()) is not None:
        found = drivers.sweep(sweep.addresses, request, context) if sweep.addresses else []
        _, _, state = store.apply(op_id, functools.partial(_swept, sweep=sweep, found=found))
        store.deliver(op_id, operation)
    if state.done:
        summary = state.summary()
        if (line := unmatched_line(summary)) is not None:
            log.warning("discover %s: %s", op_id, line)
        return summary
    learn = current_broker().get_actor(LEARN)
    for address in state.waiting():
        learn.send(op_id, {"round": state.round, "address": address, "params": params})
    operation.continue_later()
    return {}


def learn_host(arguments: Document, context: Context) -> Document:
    """The ``discover.learn`` continuation: one host's inspection, learned; the round's last sends the next step."""
    from tasks.middleware import current_broker

    operation = _pipeline_context(context)
    store, op_id = _store(operation), operation.operation_id
    round, address, params = arguments["round"], arguments["address"], arguments["params"]
    store.deliver(op_id, operation)  # what an attempt that died made (this one, redelivered, or another)
    state = store.load(op_id)
    if state is None or state.round != round or address not in state.waiting():
        return {}  # learnt already: a redelivered message
    request = discover_params.parse_params(params)
    inspection = _inspect(DRIVERS[-1], address, request, context)

    def learned(discovery: Discovery) -> tuple[list[Record], bool]:
        waited = bool(discovery.waiting())
        records = discovery.learned(round, address, inspection)
        return records, waited and not discovery.waiting()

    _, completed, _ = store.apply(op_id, learned)
    store.deliver(op_id, operation)
    if completed:
        broker = current_broker()
        message = broker.get_actor(OPERATION).message(op_id, params)
        broker.enqueue(message.copy(queue_name=store.step_queue(op_id)))
    return {}


def _swept(discovery: Discovery, sweep: Sweep, found: list[Document]) -> tuple[list[Record], None]:
    return discovery.swept(sweep, found), None


def _inspect(drivers: Drivers, address: str, request: discover_params.Request, context: Context) -> Document:
    """The host's inspection; a failure of the whole inspection is a host that revealed nothing."""
    try:
        return drivers.inspect(address, request, context)
    except (Cancelled, Interrupted):
        raise
    except OperationFailed as exc:
        log.info("discover: inspecting %s failed: %s", address, exc)
        return {"address": address, "error": {"code": str(exc.code), "message": str(exc)}}


def register_with(registry: Registry) -> None:
    """Registers the operation (host-bound: it sweeps from the agent's host) and its continuation."""
    registry.register(
        OPERATION, step, validate=discover_params.validate, time_limit=3600.0, max_retries=1, host_bound=True
    )
    registry.register(LEARN, learn_host, time_limit=900.0, max_retries=3, continuation=True)


__all__ = ["DRIVERS", "LEARN", "LoopStore", "learn_host", "register_with", "step"]
