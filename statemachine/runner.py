"""The boundary between the link and whatever runs operations.

The link hands every ``operation`` to an :class:`OperationRunner` and sends what it gives
back; it never runs an operation itself. The Dramatiq pipeline (``tasks``) is the real runner;
:class:`InlineRunner` answers ``system.info`` in-process and keeps its journal in memory, for
tests of the link and for a hub-less smoke run.
"""

from __future__ import annotations

import asyncio
import platform
import socket
from typing import Protocol

from ksocket import __version__, protocol
from ksocket.protocol import Accepted, Admission, ErrorCode, Operation, Progress, Refused, Result


class OperationRunner(Protocol):
    async def submit(self, operation: Operation) -> Admission:
        """Admits an operation: Accepted (queued or running), Refused, or the stored Result of a done id."""
        ...

    async def cancel(self, operation_id: str) -> None: ...

    async def unacked(self) -> list[Result]:
        """Every result not yet acked, in seq order: what a new connection sends first."""
        ...

    async def next_event(self) -> Progress | Result:
        """Waits for the next progress report or new result to send."""
        ...

    async def acknowledge(self, seq: int) -> None:
        """The hub has every result with seq up to ``seq``: they may be forgotten."""
        ...


class InlineRunner:
    """Runs ``system.info`` at once; refuses other operations. Memory only: nothing survives a restart."""

    def __init__(self) -> None:
        self._seq = 0
        self._done: dict[str, Result] = {}
        self._journal: dict[int, Result] = {}
        self._events: asyncio.Queue[Progress | Result] = asyncio.Queue()

    async def submit(self, operation: Operation) -> Admission:
        if operation.id in self._done:
            return self._done[operation.id]
        if operation.name != "system.info":
            return Refused(
                id=operation.id, reason=ErrorCode.UNKNOWN_OPERATION, message=f"no operation {operation.name!r}"
            )
        self._seq += 1
        data = {"version": __version__, "hostname": socket.gethostname(), "os": platform.platform()}
        result = Result.success(id=operation.id, seq=self._seq, data=data)
        self._done[operation.id] = self._journal[self._seq] = result
        self._events.put_nowait(result)
        return Accepted(id=operation.id)

    async def cancel(self, operation_id: str) -> None:
        return None  # everything it runs is already done

    async def unacked(self) -> list[Result]:
        return [self._journal[seq] for seq in sorted(self._journal)]

    async def next_event(self) -> Progress | Result:
        return await self._events.get()

    async def acknowledge(self, seq: int) -> None:
        for done in [s for s in self._journal if s <= seq]:
            del self._journal[done]


__all__ = ["Admission", "InlineRunner", "OperationRunner", "protocol"]
