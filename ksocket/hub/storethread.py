"""The hub's database, off its event loop: a ``Store`` that lives in a thread of its own.

Each write of the store is a transaction with a full fsync (an acked result must survive a
power cut), and a result may be 16 MiB of JSON: made on the event loop, one slot's results
would hold up every other slot's heartbeats. ``StoreThread`` opens its ``Store`` in one worker
thread and runs every call there, one after the other, in the order they were made: ``call``
awaits the answer (the hub acks a result only once ``add_result`` has committed it), ``queue``
returns it to await later (a connection's frames' writes, queued in their order, answered in
turn), ``post`` drops it (a heartbeat's time, a disconnection: nobody waits for them, and a
failure is logged).

Group commit: the calls made while the thread is busy (other agents' results and records, the
poller's claims, heartbeats) wait for it together, and it runs them, up to ``GROUP_LIMIT``, in one
transaction (``Store.group``), each call in a savepoint of its own, so that one call that fails
undoes its own writes only. One fsync then makes them all durable, and no call is answered before
it: a call's answer always means its writes are on disk. A call that finds the thread idle runs in
its own transaction, as before. A job that a call queues for after its commit (:meth:`StoreThread.then`)
runs alone, before every call made after it.

A ``networks.discover`` result, once committed, is imported into the inventory in the same thread, on the
same connection, as such a job (:func:`~ksocket.hub.inventorystore.import_result`): the result is acked
without waiting for it, and any call made once the result is acked runs after it. A failing import is
logged on one line naming the operation; the result stays stored, and ``ksocket hub inventory import`` can
take it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from ksocket.hub.errors import HubError
from ksocket.hub.inventorystore import import_result
from ksocket.hub.store import Store

__all__ = ["GROUP_LIMIT", "StoreThread"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

GROUP_LIMIT: Final = 256
"""Calls committed together, at most: a group holds the database's write lock while it runs."""

_Call = tuple[Callable[[], Any], "Future[Any]", bool]  # the job, its answer, whether it may join a group


class StoreThread:
    """``await StoreThread.open(path)``, then ``await db.call(Store.method, args…)``; ``await db.close()``."""

    _store: Store  # set by ``open`` once the database is open

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._waiting: deque[_Call] = deque()  # appended on the loop, taken in the database's thread

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> StoreThread:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ksocket-hub-db")
        thread = cls(executor)
        opening = functools.partial(Store, path, on_result=thread._import_next)
        try:
            thread._store = await asyncio.get_running_loop().run_in_executor(executor, opening)
        except HubError:
            executor.shutdown()
            raise
        return thread

    async def call(self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``method(store, *args, **kwargs)`` in the database's thread, after every call made before it; answered
        once what it wrote is committed."""
        return await self.queue(method, *args, **kwargs)

    def queue(self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Like ``call``, queued now: its answer, to await later (a caller's writes queued one after another run
        in that order, without waiting for each other's answers)."""
        return asyncio.wrap_future(self._queue(functools.partial(method, self._store, *args, **kwargs)))

    def post(self, method: Callable[Concatenate[Store, P], object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Like ``call``, without waiting for it; an error is logged."""
        future = self._queue(functools.partial(method, self._store, *args, **kwargs))
        future.add_done_callback(functools.partial(_log_failure, getattr(method, "__name__", "a call")))

    async def close(self) -> None:
        """Closes the store once every call made before has run."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
        self._executor.shutdown()

    def then(self, method: Callable[[Store], object]) -> None:
        """From a call running in the database's thread: ``method(store)`` runs next, alone, once that call is
        committed, and before every call made after it (so before any made once that call's caller has its
        answer); an error is logged."""
        self._queue(functools.partial(method, self._store), grouped=False).add_done_callback(
            functools.partial(_log_failure, getattr(method, "__name__", "a job"))
        )

    def _import_next(self, store: Store, slot: str, operation_id: str) -> None:
        """``Store``'s ``on_result`` hook: the import runs once the result is committed (so it is acked first)."""
        self.then(functools.partial(_import, operation_id=operation_id))

    def _queue(self, job: Callable[[], Any], *, grouped: bool = True) -> Future[Any]:
        future: Future[Any] = Future()
        self._waiting.append((job, future, grouped))
        self._executor.submit(self._run_waiting)
        return future

    def _run_waiting(self) -> None:
        """In the database's thread: the calls waiting, in order, up to GROUP_LIMIT and the first that may not join
        a group, alone or as one group commit."""
        calls: list[_Call] = []
        while self._waiting and len(calls) < GROUP_LIMIT and (not calls or self._waiting[0][2]):
            call = self._waiting.popleft()
            if call[1].set_running_or_notify_cancel():  # a call cancelled before it ran is not run, as in an executor
                calls.append(call)
            if not call[2]:
                break
        if len(calls) == 1:
            _answer(calls[0][1], *_outcome(calls[0][0]))
        elif calls:
            self._run_group(calls)

    def _run_group(self, calls: list[_Call]) -> None:
        try:
            with self._store.group():
                outcomes = [_outcome(job) for job, _, _ in calls]
        except BaseException as exc:  # the commit failed: nothing of the group was written
            for _, future, _ in calls:
                future.set_exception(exc)
            return
        for (_, future, _), outcome in zip(calls, outcomes, strict=True):
            _answer(future, *outcome)


def _outcome(job: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return job(), None
    except BaseException as exc:  # the caller's to see, as an executor would hand it over
        return None, exc


def _answer(future: Future[Any], value: Any, error: BaseException | None) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _log_failure(name: str, future: Future[object]) -> None:
    exc = future.exception()
    if exc is not None:
        logger.error("hub database: %s failed: %s", name, exc)


def _import(store: Store, operation_id: str) -> None:
    try:
        snapshot = import_result(store, operation_id)
    except Exception as exc:  # whatever it is, the result is stored and the link goes on
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        logger.error("hub: inventory import of operation %s failed: %s", operation_id, why)
        return
    if snapshot is not None:
        logger.info("hub: operation %s imported into the inventory as snapshot %d", operation_id, snapshot)
