"""The hub's database thread: calls in order, group commits of the calls that waited together, each answered
only once committed."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from ksocket.hub.errors import HubError
from ksocket.hub.store import Store
from ksocket.hub.storethread import GROUP_LIMIT, StoreThread


def trace_commits(store: Store, statements: list[str]) -> None:
    store._db.set_trace_callback(statements.append)


async def hold(db: StoreThread) -> threading.Event:
    """Holds the database's thread with a call until the event returned is set (calls made meanwhile wait)."""
    busy, release = threading.Event(), threading.Event()
    db.post(lambda store: (busy.set(), release.wait()))
    await asyncio.to_thread(busy.wait)
    return release


def test_calls_made_together_share_commits_and_each_is_on_disk_once_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await StoreThread.open(tmp_path / "hub.db")
        try:
            await db.call(Store.add_slot, "a")
            statements: list[str] = []
            await db.call(trace_commits, statements)
            count = 2 * GROUP_LIMIT + 10
            release = await hold(db)
            calls = asyncio.gather(*(db.call(Store.add_operation, "a", "test.echo", {"n": n}) for n in range(count)))
            await asyncio.sleep(0)  # every call queued behind the held thread
            release.set()
            ids = await calls
            assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 3  # groups of at most the limit
            with Store(tmp_path / "hub.db") as other:  # another connection sees every answered write
                assert [op.params["n"] for op in other.operations("a")] == list(range(count))
                assert {op.id for op in other.operations("a")} == set(ids)
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_call_that_fails_in_a_group_undoes_its_own_writes_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await StoreThread.open(tmp_path / "hub.db")
        try:
            await db.call(Store.add_slot, "a")
            calls = [
                db.call(Store.add_operation, "a", "test.echo", None, "first"),
                db.call(Store.add_operation, "a", "test.echo", None, "first"),  # the same id: refused
                db.call(Store.add_operation, "a", "test.echo", None, "second"),
            ]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert outcomes[0] == "first" and outcomes[2] == "second"
            assert isinstance(outcomes[1], HubError)
            assert [op.id for op in await db.call(Store.operations, "a")] == ["first", "second"]
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_call_cancelled_before_it_ran_is_not_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await StoreThread.open(tmp_path / "hub.db")
        try:
            await db.call(Store.add_slot, "a")
            release = await hold(db)
            first = asyncio.ensure_future(db.call(Store.add_operation, "a", "test.echo", None, "kept"))
            dropped = asyncio.ensure_future(db.call(Store.add_operation, "a", "test.echo", None, "dropped"))
            await asyncio.sleep(0)  # both queued
            dropped.cancel()
            await asyncio.sleep(0)
            release.set()
            assert await first == "kept"
            with pytest.raises(asyncio.CancelledError):
                await dropped
            assert [op.id for op in await db.call(Store.operations, "a")] == ["kept"]
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_job_a_call_queues_runs_after_its_commit_and_before_any_call_made_once_that_call_is_answered(
    tmp_path: Path,
) -> None:
    """What the hub's import of a result relies on: queued in the thread by the call that commits the result,
    it runs before anything asked once that result is acked, however the calls were grouped."""

    async def scenario() -> None:
        db = await StoreThread.open(tmp_path / "hub.db")
        order: list[str] = []

        def hand_a_job(store: Store) -> None:
            db.then(lambda store: order.append("handed"))

        try:
            release = await hold(db)
            calls = asyncio.gather(db.call(hand_a_job), *(db.call(Store.slots) for _ in range(5)))
            await asyncio.sleep(0)
            release.set()
            await calls
            await db.call(lambda store: order.append("asked after"))
            assert order == ["handed", "asked after"]
        finally:
            await db.close()

    asyncio.run(scenario())
