"""The pipeline across processes: workers on a shared Redis, and agents killed with SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ksocket.protocol import Accepted, Result
from tests.pipelinetools import (
    KILLABLE,
    ROOT,
    collect,
    embedded_url,
    kill_embedded,
    op,
    python_env,
    read_lines_until,
    redis_server,
    running,
    start_agent,
    start_worker,
    wait_until,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as url:
        yield url


def test_a_redis_without_an_append_only_file_is_warned_about(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running(redis_url, max_running_operations=0):
            pass

    asyncio.run(scenario())
    assert [r.levelname for r in caplog.records if "appendonly no" in r.getMessage()] == ["WARNING"]


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def test_a_worker_process_on_a_shared_redis_takes_part_of_the_work_but_no_host_bound_operation(
    redis_url: str, tmp_path: Path
) -> None:
    worker = start_worker(redis_url, threads=2, other_host=True)
    ids = [f"w{n}" for n in range(6)]
    here = [f"here{n}" for n in range(4)]
    try:

        async def scenario() -> dict[str, Result]:
            async with running(redis_url, max_running_operations=1) as runner:
                await wait_until(lambda: len(runner.pipeline.broker.redis.zrange("ksocket:__heartbeats__", 0, -1)) == 2)
                for op_id in ids:
                    assert await runner.submit(op(op_id, "test.sleep", seconds=0.6, tag=op_id)) == Accepted(id=op_id)
                for op_id in here:
                    await runner.submit(op(op_id, "test.where"))
                results = await collect(runner, [*ids, *here])
                assert await runner.held() == []
                return results

        results = asyncio.run(scenario())
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(15) == 0  # SIGTERM stops it cleanly
        finally:
            stop(worker)
    pids = collections.Counter(results[op_id].data["pid"] for op_id in ids)  # type: ignore[index]
    assert set(pids) == {os.getpid(), worker.pid}, pids  # both ran some: 1 thread here, 2 there
    assert {results[op_id].data["pid"] for op_id in here} == {os.getpid()}  # type: ignore[index]
    assert pids[worker.pid] >= 2
    assert sorted(r.seq for r in results.values()) == list(range(1, len(ids) + len(here) + 1))


def test_dramatiqs_own_command_line_serves_the_operations(redis_url: str) -> None:
    env = {**python_env(), "KSOCKET_BROKER": redis_url}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "tasks.worker:setup",
            "tests.pipelinetools",
            "--processes",
            "1",
            "--threads",
            "2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def scenario() -> Result:
            async with running(redis_url, max_running_operations=0) as runner:  # no worker in this process
                await runner.submit(op("remote", "test.sleep", seconds=0.1, tag="remote"))
                return (await collect(runner, ["remote"], timeout=30))["remote"]

        result = asyncio.run(scenario())
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        finally:
            stop(worker)
    assert result.ok and result.data is not None and result.data["pid"] != os.getpid()


def test_a_worker_killed_mid_run_on_a_shared_redis_loses_nothing(redis_url: str) -> None:
    ids = [f"k{n}" for n in range(4)]
    worker = start_worker(redis_url, threads=4)
    try:

        async def scenario() -> dict[str, Result]:
            async with running(redis_url, max_running_operations=0, timings=KILLABLE) as runner:
                await wait_until(
                    lambda: runner.pipeline.broker.redis.zcard("ksocket:__heartbeats__") >= 1
                )  # the worker is up
                for op_id in ids:
                    await runner.submit(op(op_id, "test.sleep", seconds=1.0, tag=op_id))
                await wait_until(lambda: len(runner.pipeline.journal.running()) == len(ids))
                worker.kill()  # SIGKILL: its four operations are in its hands
                worker.wait(10)
                assert await runner.held() != []
                second = start_worker(redis_url, threads=4)
                try:
                    return await collect(runner, ids, timeout=KILLABLE.heartbeat_timeout + 15)
                finally:
                    stop(second)

        results = asyncio.run(scenario())
    finally:
        stop(worker)
    assert all(r.ok for r in results.values())
    assert sorted(r.seq for r in results.values()) == [1, 2, 3, 4]


def test_agents_killed_with_sigkill_mid_run_lose_no_operation_and_repeat_no_result(tmp_path: Path) -> None:
    """Rounds of: an agent accepts operations, starts some, is killed -9; the next one finishes them."""
    db = tmp_path / "broker.db"
    url = embedded_url(tmp_path)
    log = tmp_path / "runs.log"
    rounds, per_round = 3, 5
    accepted: list[str] = []
    started_at = time.monotonic()
    try:
        for k in range(rounds):
            ids = [f"r{k}-{n}" for n in range(per_round)]
            agent = start_agent(url, ids, seconds=1.0, log=log, threads=3)
            try:
                lines = read_lines_until(agent, "ready", timeout=30)
                accepted += [line.split()[1] for line in lines if line.startswith("accepted ")]
                assert len([line for line in lines if line.startswith("accepted ")]) == per_round
                deadline = time.monotonic() + 15
                while f"start r{k}-" not in (log.read_text() if log.exists() else ""):
                    assert time.monotonic() < deadline, "the agent started nothing"
                    time.sleep(0.05)
                time.sleep(0.3)  # mid-run: a second or less into one-second operations
            finally:
                agent.kill()
                agent.wait(10)

        async def drain() -> list[Result]:
            async with running(url, max_running_operations=4, timings=KILLABLE) as runner:
                await wait_until(
                    lambda: len(runner.pipeline.journal.results()) >= len(accepted),
                    timeout=KILLABLE.heartbeat_timeout + 30,
                )
                await asyncio.sleep(KILLABLE.heartbeat_timeout + 1)  # room for a duplicate that must not come
                assert await runner.held() == []
                return await runner.unacked()

        results = asyncio.run(drain())
    finally:
        kill_embedded(db)
    assert sorted(r.id for r in results) == sorted(accepted)  # exactly one result per accepted operation
    assert [r.seq for r in results] == list(range(1, len(accepted) + 1))
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    runs = collections.Counter(line.split()[1] for line in log.read_text().splitlines() if line.startswith("start"))
    assert set(runs) == set(accepted)
    assert sum(runs.values()) > len(accepted)  # some were killed mid-run and ran again
    assert time.monotonic() - started_at < 60
