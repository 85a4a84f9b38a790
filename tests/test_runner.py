"""``InlineRunner``, the in-process runner of the link's tests and of ``ksocket diagnostics``: one system.info."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ksocket.collectors import system
from ksocket.collectors.base import Document, NullContext, OperationFailed
from ksocket.protocol import Accepted, Operation, Refused, Result
from statemachine.runner import InlineRunner


def test_system_info_is_the_collectors_document_and_a_duplicate_gets_it_again() -> None:
    async def scenario() -> None:
        runner = InlineRunner()
        assert await runner.submit(Operation(id="a", name="system.info")) == Accepted(id="a")
        result = await runner.next_event()
        assert isinstance(result, Result) and result.ok and result.seq == 1 and result.data is not None
        assert set(result.data) == set(system.collect({}, NullContext()))
        assert result.data["hostname"] == socket.gethostname()
        assert "interfaces" in result.data and "routes" in result.data

        assert await runner.submit(Operation(id="a", name="system.info")) == result
        refused = await runner.submit(Operation(id="b", name="networks.scan"))
        assert isinstance(refused, Refused) and refused.reason == "unknown-operation"
        assert await runner.unacked() == [result]
        await runner.acknowledge(1)
        assert await runner.unacked() == []

    asyncio.run(scenario())


def test_a_failing_system_info_is_a_failed_result(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Document:
        raise OperationFailed("internal", "ip -j link show: not found")

    monkeypatch.setattr(system, "PARTS", [system.host, broken])

    async def scenario() -> None:
        runner = InlineRunner()
        assert await runner.submit(Operation(id="a", name="system.info")) == Accepted(id="a")
        result = await runner.next_event()
        assert result == Result.failure(id="a", seq=1, code="internal", message="ip -j link show: not found")

    asyncio.run(scenario())
