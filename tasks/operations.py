"""The operations the agent knows: one registry, one Dramatiq actor per operation name.

An operation is a plain function ``body(params, context) -> dict`` (see
:mod:`ksocket.collectors.base`) plus the policy Dramatiq applies to it, as actor options: its
time limit (TimeLimit middleware), how often a transient failure is retried and with what backoff
(Retries middleware). Register one with :func:`register` or the :func:`operation` decorator::

    @operation("networks.scan", validate=check_targets, time_limit=3600)
    def scan(params: dict, context: Context) -> dict: ...

``validate(params, environment)`` runs at admission, before anything is enqueued, and raises
:class:`~tasks.errors.InvalidParams` to have the operation refused with ``invalid-params``.
Every broker the pipeline builds gets an actor for every registered operation, including
operations registered after the broker was built. They share the one queue :data:`QUEUE` (so
operations wait in arrival order), which every worker on the broker serves, on any host; an
operation registered ``host_bound`` (it reports on the host it runs on) has a queue of the host
instead, :func:`host_queue`, which only workers on that host serve: the agent's own.

A *continuation* (``register(..., continuation=True)``) is a message that carries on an operation
admitted earlier under another name: its first argument is that operation's id, its body gets
its own arguments document and that operation's context, and what it returns is not a result
(:class:`~tasks.middleware.Lifecycle` runs it only while the operation is held and not cancelled,
and never finishes the operation when it succeeds). The hub cannot ask for one by name:
:meth:`Registry.get` knows operations only. ``networks.discover``'s ``discover.learn`` is one.
"""

from __future__ import annotations

import re
import socket
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import dramatiq
from dramatiq.broker import Broker

from ksocket.collectors import scan, system
from ksocket.collectors.base import Context, Document, Environment
from ksocket.collectors.inspect import hosts, params
from tasks import discover
from tasks.errors import Cancelled, InvalidParams, retry_when
from tasks.middleware import current_context

__all__ = [
    "QUEUE",
    "REGISTRY",
    "Body",
    "OperationSpec",
    "Registry",
    "Validator",
    "host_queue",
    "operation",
    "register",
]

QUEUE: Final = "operations"

Body = Callable[[Document, Context], Document]
Validator = Callable[[Document, Environment], None]


def accept_any(params: Document, environment: Environment) -> None:
    return None


def host_queue() -> str:
    """The queue of host-bound operations that this host's workers serve (a name Dramatiq accepts)."""
    return f"{QUEUE}.host-" + re.sub(r"[^a-zA-Z0-9._-]", "_", socket.gethostname())


@dataclass(frozen=True)
class OperationSpec:
    """One operation: its body, its params check, and the policy its actor carries."""

    name: str
    body: Body
    validate: Validator = accept_any
    time_limit: float | None = 600.0
    """Seconds an attempt may run before it ends with ``timeout`` (None: no limit)."""
    max_retries: int = 3
    """Further attempts after a transient failure (``timeout``, ``unreachable``…)."""
    min_backoff: float = 5.0
    """Seconds before the first retry; doubles with each further one (with jitter) up to max_backoff."""
    max_backoff: float = 300.0
    host_bound: bool = False
    """It must run on the agent's host (its result describes that host): only that host's workers take it."""
    continuation: bool = False
    """A message of an operation admitted under another name (see the module docstring)."""
    extra_options: dict[str, Any] = field(default_factory=dict)

    def actor_options(self) -> dict[str, Any]:
        return {
            "time_limit": float("inf") if self.time_limit is None else int(self.time_limit * 1000),
            "max_retries": self.max_retries,
            "retry_when": retry_when(self.max_retries),
            "min_backoff": int(self.min_backoff * 1000),
            "max_backoff": int(self.max_backoff * 1000),
            # failures that are never retried, whatever retry_when says; Dramatiq logs them without a traceback
            "throws": (Cancelled, InvalidParams),
            **({"continuation": True} if self.continuation else {}),
            **self.extra_options,
        }


def _actor_function(spec: OperationSpec) -> Callable[[str, Document], None]:
    def perform(operation_id: str, params: Document) -> None:
        context = current_context(operation_id)
        context.document = spec.body(params, context)

    perform.__name__ = perform.__qualname__ = spec.name.replace(".", "_")
    perform.__module__ = spec.body.__module__
    return perform


class Registry:
    """Operation name -> :class:`OperationSpec`, and the brokers that carry an actor for each."""

    def __init__(self) -> None:
        self._specs: dict[str, OperationSpec] = {}
        self._continuations: dict[str, OperationSpec] = {}
        self._brokers: weakref.WeakSet[Broker] = weakref.WeakSet()
        self._lock = threading.Lock()

    def register(
        self,
        name: str,
        body: Body,
        *,
        validate: Validator = accept_any,
        time_limit: float | None = 600.0,
        max_retries: int = 3,
        min_backoff: float = 5.0,
        max_backoff: float = 300.0,
        host_bound: bool = False,
        continuation: bool = False,
        replace: bool = False,
        **extra_options: Any,
    ) -> OperationSpec:
        """Adds operation (or continuation) ``name``; ``replace`` allows a second registration of the same name."""
        spec = OperationSpec(
            name=name,
            body=body,
            validate=validate,
            time_limit=time_limit,
            max_retries=max_retries,
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            host_bound=host_bound,
            continuation=continuation,
            extra_options=extra_options,
        )
        with self._lock:
            if (name in self._specs or name in self._continuations) and not replace:
                raise ValueError(f"operation {name!r} is already registered")
            (self._continuations if continuation else self._specs)[name] = spec
            for broker in list(self._brokers):
                self._declare(broker, spec)
        return spec

    def operation(self, name: str, **options: Any) -> Callable[[Body], Body]:
        """The decorator form of :meth:`register`."""

        def decorate(body: Body) -> Body:
            self.register(name, body, **options)
            return body

        return decorate

    def get(self, name: str) -> OperationSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def declare(self, broker: Broker) -> None:
        """Gives ``broker`` an actor for every operation, now and as more are registered."""
        with self._lock:
            self._brokers.add(broker)
            for spec in [*self._specs.values(), *self._continuations.values()]:
                self._declare(broker, spec)

    @staticmethod
    def _declare(broker: Broker, spec: OperationSpec) -> None:
        existing = broker.actors.get(spec.name)
        if existing is not None:
            if getattr(existing, "spec", None) is spec:
                return
            del broker.actors[spec.name]
        actor = dramatiq.Actor(
            _actor_function(spec),
            broker=broker,
            actor_name=spec.name,
            queue_name=host_queue() if spec.host_bound else QUEUE,
            priority=0,
            options=spec.actor_options(),
        )
        actor.spec = spec  # type: ignore[attr-defined]


REGISTRY: Final = Registry()
register = REGISTRY.register
operation = REGISTRY.operation

# The operations the agent knows (protocol.md); policy per operation is in the actor options here.
register("system.info", system.collect, time_limit=60.0, max_retries=1, host_bound=True)
register("networks.scan", scan.collect, validate=scan.validate, time_limit=3600.0, max_retries=1)
# Per-protocol failures live inside a successful result, and auth failures must never repeat.
register("hosts.inspect", hosts.collect, validate=params.validate, time_limit=900.0, max_retries=0)
# networks.discover and its discover.learn continuation (the loop's shape is in tasks.discover)
discover.register_with(REGISTRY)
