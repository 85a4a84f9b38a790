"""Connection slots: at most N connections to one address at a time, across threads and event loops.

SSH logins hold one of their address's slots while sshd counts them as starting up, so that its
``MaxStartups`` is never hit however many inspections (and jump host logins) run in the process.
A wait for a slot is not charged to the protocol that waits: the orchestrator names the running
protocol's timeout with :func:`charged_to`, and :meth:`HostLimiter.slot` adds the time spent
waiting back to it (a context variable carries it, so it follows the protocol's own task).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Iterator

DEFAULT_CONNECTIONS_PER_HOST = 2

_protocol_deadline: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar(
    "ksocket_inspect_protocol_deadline", default=None
)


@contextlib.contextmanager
def charged_to(deadline: asyncio.Timeout) -> Iterator[None]:
    """Inside, ``deadline`` is the running protocol's timeout: slot waits are added back to it."""
    token = _protocol_deadline.set(deadline)
    try:
        yield
    finally:
        _protocol_deadline.reset(token)


@contextlib.asynccontextmanager
async def _uncharged() -> AsyncIterator[None]:
    """The time spent inside is added back to the running protocol's timeout: waiting for a slot
    that other inspections hold says nothing about this host."""
    deadline = _protocol_deadline.get()
    when = deadline.when() if deadline is not None and not deadline.expired() else None
    if deadline is None or when is None:
        yield
        return
    loop = asyncio.get_running_loop()
    left = when - loop.time()
    deadline.reschedule(None)
    try:
        yield
    finally:
        deadline.reschedule(loop.time() + left)


class HostLimiter:
    """At most ``per_host`` connections to one address at a time, across threads and event loops.

    The pipeline runs each operation in a worker thread with its own event loop, and an SSH jump
    host serves many targets: an ``asyncio.Semaphore`` (bound to one loop) would not see the
    others. Waiters are served first come, first served.
    """

    def __init__(self, per_host: int = DEFAULT_CONNECTIONS_PER_HOST) -> None:
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        self.per_host = per_host
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._waiters: dict[str, collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self.peak: dict[str, int] = {}
        """The most slots each address ever had at once (for tests and the benchmark)."""

    def active(self, address: str) -> int:
        with self._lock:
            return self._active.get(address, 0)

    async def acquire(self, address: str) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            queue = self._waiters.setdefault(address, collections.deque())
            if self._active.get(address, 0) < self.per_host and not queue:
                self._take(address)
                return
            future: asyncio.Future[None] = loop.create_future()
            queue.append((loop, future))
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                queue = self._waiters.get(address, collections.deque())
                if (loop, future) in queue:
                    queue.remove((loop, future))
                elif future.done() and not future.cancelled():
                    self._release(address)  # the slot was handed over as we were cancelled: pass it on
            raise

    def release(self, address: str) -> None:
        with self._lock:
            self._release(address)

    @contextlib.asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        """Holds one of ``address``'s slots inside; the wait for it is not charged (:func:`charged_to`)."""
        async with _uncharged():
            await self.acquire(address)
        try:
            yield
        finally:
            self.release(address)

    def _take(self, address: str) -> None:
        count = self._active.get(address, 0) + 1
        self._active[address] = count
        self.peak[address] = max(self.peak.get(address, 0), count)

    def _release(self, address: str) -> None:
        """Hands the slot to the next waiter, or frees it; called with the lock held."""
        queue = self._waiters.get(address)
        while queue:
            loop, future = queue.popleft()
            try:
                loop.call_soon_threadsafe(self._grant, address, future)
            except RuntimeError:  # that loop is closed: its waiter is gone
                continue
            return
        count = self._active.get(address, 0) - 1
        if count > 0:
            self._active[address] = count
        else:
            self._active.pop(address, None)
            if queue is not None and not queue:
                self._waiters.pop(address, None)

    def _grant(self, address: str, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled while the slot was on its way
            self.release(address)
        else:
            future.set_result(None)
