"""The hub's database, off its event loop: a ``Store`` that lives in a thread of its own.

Each write of the store is a transaction with a full fsync (an acked result must survive a
power cut), and a result may be 16 MiB of JSON: made on the event loop, one slot's results
would hold up every other slot's heartbeats. ``StoreThread`` opens its ``Store`` in one worker
thread and runs every call there, one after the other, in the order they were made: ``call``
awaits the answer (the hub acks a result only once ``add_result`` has committed it), ``post``
does not (a heartbeat's time, a disconnection: nobody waits for them, and a failure is logged).

A ``networks.discover`` result, once committed, is imported into the inventory in the same thread, on the
same connection, as a job queued when the result is committed
(:func:`~ksocket.hub.inventorystore.import_result`): the result is acked without waiting for it, and any
call made once the result is acked runs after it. A failing import is logged on one line naming the
operation; the result stays stored, and ``ksocket hub inventory import`` can take it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

from ksocket.hub.errors import HubError
from ksocket.hub.inventorystore import import_result
from ksocket.hub.store import Store

__all__ = ["StoreThread"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class StoreThread:
    """``await StoreThread.open(path)``, then ``await db.call(Store.method, args…)``; ``await db.close()``."""

    def __init__(self, executor: ThreadPoolExecutor, store: Store) -> None:
        self._executor = executor
        self._store = store

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> StoreThread:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ksocket-hub-db")
        opening = functools.partial(Store, path, on_result=functools.partial(_import_next, executor))
        try:
            store = await asyncio.get_running_loop().run_in_executor(executor, opening)
        except HubError:
            executor.shutdown()
            raise
        return cls(executor, store)

    async def call(self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``method(store, *args, **kwargs)`` in the database's thread, after every call made before it."""
        job = functools.partial(method, self._store, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    def post(self, method: Callable[Concatenate[Store, P], object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Like ``call``, without waiting for it; an error is logged."""
        future = self._executor.submit(method, self._store, *args, **kwargs)
        future.add_done_callback(functools.partial(_log_failure, getattr(method, "__name__", "a call")))

    async def close(self) -> None:
        """Closes the store once every call made before has run."""
        await self.call(Store.close)
        self._executor.shutdown()


def _log_failure(name: str, future: Future[object]) -> None:
    exc = future.exception()
    if exc is not None:
        logger.error("hub database: %s failed: %s", name, exc)


def _import_next(executor: ThreadPoolExecutor, store: Store, slot: str, operation_id: str) -> None:
    """``Store``'s ``on_result`` hook: the import is the thread's next job, so that the result is acked first."""
    executor.submit(_import, store, operation_id)


def _import(store: Store, operation_id: str) -> None:
    try:
        snapshot = import_result(store, operation_id)
    except Exception as exc:  # whatever it is, the result is stored and the link goes on
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        logger.error("hub: inventory import of operation %s failed: %s", operation_id, why)
        return
    if snapshot is not None:
        logger.info("hub: operation %s imported into the inventory as snapshot %d", operation_id, snapshot)
