"""The boundary between the link and whatever runs operations.

The link hands every ``operation`` to an :class:`OperationRunner` (those that arrived together in
one ``submit_many``) and sends what it gives back; it never runs an operation itself. The
Dramatiq pipeline (``tasks``) is the real runner; :class:`InlineRunner` runs ``system.info`` (the
same collector as the pipeline's) in-process and keeps its journal in memory, for tests of the link
and for ``ksocket diagnostics``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from ksocket import protocol
from ksocket.collectors import system
from ksocket.collectors.base import Context, Document, NullContext, OperationFailed
from ksocket.protocol import Accepted, Admission, ErrorCode, Operation, Progress, Refused, Result, Sequenced


class OperationRunner(Protocol):
    async def submit(self, operation: Operation) -> Admission:
        """Admits an operation: Accepted (queued or running), Refused, or the stored Result of a done id."""
        ...

    async def submit_many(self, operations: Sequence[Operation]) -> list[Admission]:
        """Admits operations that arrived together, in their order, as ``submit`` would one by one (a runner
        may do it in one step); the answers in the same order."""
        ...

    async def cancel(self, operation_id: str) -> None: ...

    async def unacked(self) -> list[Sequenced]:
        """Every result and record not yet acked, in seq order: what a new connection sends first."""
        ...

    async def next_event(self) -> Progress | Sequenced:
        """Waits for the next progress report, new record or new result to send (these two in seq order)."""
        ...

    async def acknowledge(self, seq: int) -> None:
        """The hub has every result and record with seq up to ``seq``: they may be forgotten."""
        ...


class InlineRunner:
    """Runs ``system.info`` as it admits it (in a thread, off the link's event loop); refuses other
    operations. Memory only: nothing survives a restart. ``collect`` is the body it runs for
    ``system.info``: the real collector unless a test of the link needs one that takes no time."""

    def __init__(self, collect: Callable[[Document, Context], Document] = system.collect) -> None:
        self._collect = collect
        self._seq = 0
        self._done: dict[str, Result] = {}
        self._journal: dict[int, Result] = {}
        self._events: asyncio.Queue[Progress | Sequenced] = asyncio.Queue()

    async def submit(self, operation: Operation) -> Admission:
        if operation.id in self._done:
            return self._done[operation.id]
        if operation.name != "system.info":
            return Refused(
                id=operation.id, reason=ErrorCode.UNKNOWN_OPERATION, message=f"no operation {operation.name!r}"
            )
        self._seq += 1
        seq = self._seq
        try:
            data = await asyncio.to_thread(self._collect, operation.params, NullContext())
        except OperationFailed as exc:
            result = Result.failure(id=operation.id, seq=seq, code=exc.code, message=str(exc))
        else:
            result = Result.success(id=operation.id, seq=seq, data=data)
        self._done[operation.id] = self._journal[seq] = result
        self._events.put_nowait(result)
        return Accepted(id=operation.id)

    async def submit_many(self, operations: Sequence[Operation]) -> list[Admission]:
        return [await self.submit(operation) for operation in operations]

    async def cancel(self, operation_id: str) -> None:
        return None  # everything it runs is already done

    async def unacked(self) -> list[Sequenced]:
        return [self._journal[seq] for seq in sorted(self._journal)]

    async def next_event(self) -> Progress | Sequenced:
        return await self._events.get()

    async def acknowledge(self, seq: int) -> None:
        for done in [s for s in self._journal if s <= seq]:
            del self._journal[done]


__all__ = ["Admission", "InlineRunner", "OperationRunner", "protocol"]
