"""The agent's :class:`~statemachine.runner.OperationRunner`: admission into the pipeline, events out of it.

:class:`PipelineRunner` is what the link talks to. ``submit`` admits an operation (dedupe by id,
unknown names and invalid params refused, params narrowed to the operator's fence or refused beyond
it (:mod:`ksocket.fence`), the ``connect.maxOperations`` quota) and enqueues it; ``submit_many``
does the same for the operations that arrived together, held and enqueued in one step (one Redis
call, one fsync, however many there are: :meth:`tasks.pipeline.Pipeline.admit`). A Dramatiq
worker in this process (``connect.maxRunningOperations`` threads) and any worker started with
``ksocket worker`` against the same Redis run it; its result lands in the journal.
``next_event`` hands out progress, new records and new results as they appear in the journal,
whichever process produced them, records and results in seq order; ``unacked`` and ``acknowledge``
read and trim the journal.

Blocking Redis calls run in threads (``asyncio.to_thread``). A background task follows the
journal's event stream, reads the journal's new results and records in the same thread hop, and
fills a small buffer that ``next_event`` drains: progress reports of one operation coalesce to the
latest, and no more than :data:`BUFFERED` results and records wait there; the rest stay in Redis
until there is room (and are read without waiting for another event once there is). A result
of the in-process worker skips that round: its worker thread hands it to the loop once the journal
holds it (:attr:`tasks.middleware.Lifecycle.on_result`), and it goes straight into the buffer when
it is the next seq there (else the follower reads it in turn: records and results stay in seq order,
with no gap); the follower then skips what the buffer has already.

After a restart on the same broker, every operation still held finishes: its message is still
queued, or Dramatiq requeues it once the dead worker's heartbeat is ``heartbeat_timeout`` old, or
the runner finds it has no message at all (a message lost) and enqueues it again
(``recover_interval``, ``orphan_age``).

The seq count lives in Redis, the agent id in a file (:class:`~ksocket.identity.Identity`). If the
Redis lost its data (no append-only file, broker.db deleted), seq would start again at 1 under the
same agent id, and the hub, which has seen those seqs, would ack the new results and drop them. So
on start, a journal that is new while an identity exists costs the agent its id: the hub counts a
new agent id afresh (protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import redis

from ksocket import paths
from ksocket.collectors.base import Environment
from ksocket.collectors.discovery import routes
from ksocket.config import Settings
from ksocket.fence import Fence
from ksocket.identity import Identity
from ksocket.protocol import Accepted, Admission, ErrorCode, Operation, Progress, Record, Refused, Result, Sequenced
from ksocket.redact import described
from tasks.broker import NAMESPACE, warn_unless_append_only
from tasks.errors import BrokerError, InvalidParams, OperationFailed
from tasks.journal import Admission as JournalAdmission
from tasks.journal import Held, Journal
from tasks.operations import REGISTRY, Registry
from tasks.pipeline import Pipeline, Timings

log = logging.getLogger("ksocket.tasks")

BUFFERED: Final = 1000
"""Results and records read from the journal and not yet handed to the link, at most."""
FINISHED_REMEMBERED: Final = 10_000
"""Ids of the latest results handed out, whose late progress reports are dropped."""
T = TypeVar("T")


class _Events:
    """The runner's outbox: results and records in seq order, progress coalesced per operation.

    A progress report read after its operation's result (the stream is read in batches, and a
    worker's last report may land after its result) is dropped: the hub must not see it after the result.
    """

    def __init__(self) -> None:
        self._order: deque[Sequenced | str] = deque()
        self._progress: dict[str, Progress] = {}
        self._sequenced = 0
        self._finished: dict[str, None] = {}  # an ordered set, oldest first
        self._ready = asyncio.Event()

    @property
    def room(self) -> int:
        return max(0, BUFFERED - self._sequenced)

    def put(self, event: Progress | Sequenced) -> None:
        if isinstance(event, Record):
            self._order.append(event)
            self._sequenced += 1
        elif isinstance(event, Result):
            self._progress.pop(event.id, None)
            self._order.append(event)
            self._sequenced += 1
            self._finished[event.id] = None
            if len(self._finished) > FINISHED_REMEMBERED:
                del self._finished[next(iter(self._finished))]
        elif event.id in self._finished:
            return
        else:
            if event.id not in self._progress:
                self._order.append(event.id)
            self._progress[event.id] = event
        self._ready.set()

    async def get(self) -> Progress | Sequenced:
        while True:
            while self._order:
                item = self._order.popleft()
                if not isinstance(item, str):
                    self._sequenced -= 1
                    return item
                progress = self._progress.pop(item, None)
                if progress is not None:
                    return progress
            self._ready.clear()
            await self._ready.wait()


def _read_journal(
    journal: Journal, last_event: str, block: float, after: int, room: int
) -> tuple[list[tuple[str, dict[str, str]]], list[Sequenced]]:
    """In one thread hop: the journal's events after ``last_event`` (waiting up to ``block`` for the first), then
    up to ``room`` results and records above seq ``after``. These come from the journal itself, not from the
    events, so a trimmed stream or a missed event loses none."""
    events = journal.read_events(last_event, block)
    return events, journal.outbox(after, room) if room else []


def _own_networks() -> list[str]:
    """The agent's on-link IPv4 networks, whose broadcast addresses the fence denies."""
    try:
        return routes.RoutingTable.from_kernel().onlink_networks()
    except OperationFailed as exc:
        log.warning("the agent's own networks are unknown (%s): their broadcast addresses are not fenced", exc)
        return []


class PipelineRunner:
    """Runs operations through the Dramatiq pipeline on ``broker.url``; implements OperationRunner.

    Use ``async with PipelineRunner(settings) as runner:`` or :meth:`start` / :meth:`stop`.
    Explicit arguments override the settings: ``broker_url``, ``max_operations``,
    ``max_running_operations`` (0: no worker in this process, others do the work), ``identity_folder``
    (where the link keeps the agent's identity).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker_url: str | None = None,
        max_operations: int | None = None,
        max_running_operations: int | None = None,
        namespace: str = NAMESPACE,
        timings: Timings | None = None,
        registry: Registry | None = None,
        appendfsync: str = "always",
        identity_folder: Path | None = None,
    ) -> None:
        settings = settings or Settings()
        self.environment = Environment.from_settings(settings)
        self.fence = Fence.from_settings(settings)
        self.broker_url = broker_url or settings.broker
        self.max_operations = settings.max_operations if max_operations is None else max_operations
        self.threads = settings.max_running_operations if max_running_operations is None else max_running_operations
        self.namespace = namespace
        self.timings = timings or Timings()
        self.registry = registry or REGISTRY
        self.appendfsync = appendfsync
        self.identity_folder = identity_folder or paths.state_dir()
        self._pipeline: Pipeline | None = None
        self._events = _Events()
        self._pump: asyncio.Task[None] | None = None
        self._last_seq = 0

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise RuntimeError("the runner is not started")
        return self._pipeline

    # --- starting and stopping ----------------------------------------------------------------

    async def start(self) -> None:
        if self._pipeline is not None:
            return
        self.fence = self.fence.with_broadcasts_of(await asyncio.to_thread(_own_networks))
        pipeline = await asyncio.to_thread(
            Pipeline,
            self.broker_url,
            namespace=self.namespace,
            timings=self.timings,
            registry=self.registry,
            appendfsync=self.appendfsync,
            environment=self.environment,
        )
        try:
            await asyncio.to_thread(self._open_journal, pipeline)
            if self.threads > 0:
                await asyncio.to_thread(pipeline.start_worker, self.threads)
            self._last_seq = await asyncio.to_thread(pipeline.journal.last_seq)
            last_event = await asyncio.to_thread(pipeline.journal.last_event_id)
            await asyncio.to_thread(pipeline.recover)
        except BaseException:
            await asyncio.to_thread(pipeline.close, 0)
            raise
        self._pipeline = pipeline
        self._pump = asyncio.create_task(self._follow(last_event), name="ksocket-pipeline-events")
        pipeline.lifecycle.on_result = self._shortcut(asyncio.get_running_loop())

    def _open_journal(self, pipeline: Pipeline) -> None:
        if pipeline.broker.embedded is None:
            warn_unless_append_only(pipeline.broker.redis, self.broker_url)
        if pipeline.journal.open() and Identity.exists(self.identity_folder):
            log.error(
                "the journal in the broker's Redis is empty, but this agent has used one before: its Redis lost"
                " its data, and with it the operations held and the results not yet acked. This agent takes a"
                " new agent id, so that the hub counts its results (seq) afresh."
            )
            Identity(self.identity_folder).renew()

    async def stop(self, grace: float | None = None) -> None:
        """Stops the worker (running operations get ``grace`` seconds to notice) and the broker."""
        if self._pipeline is not None:
            self._pipeline.lifecycle.on_result = None
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            await asyncio.to_thread(pipeline.close, grace)

    async def __aenter__(self) -> PipelineRunner:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- OperationRunner ----------------------------------------------------------------------

    async def _redis(self, call: Callable[..., T], *args: Any) -> T:
        """A blocking journal call in a thread; a Redis that cannot be reached becomes a BrokerError."""
        try:
            return await asyncio.to_thread(call, *args)
        except redis.RedisError as exc:
            raise BrokerError(f"the broker's Redis cannot be reached: {exc}") from None

    async def submit(self, operation: Operation) -> Admission:
        return (await self.submit_many([operation]))[0]

    async def submit_many(self, operations: Sequence[Operation]) -> list[Admission]:
        # in a thread, validation too: it may parse thousands of targets or import a cloud SDK
        return await self._redis(self._submit, self.pipeline, operations)

    def _submit(self, pipeline: Pipeline, operations: Sequence[Operation]) -> list[Admission]:
        """The answers in order: those refused before admission, then the others admitted in one step."""
        checked = [self._check(pipeline, operation) for operation in operations]
        admitted = iter(self._admit(pipeline, [op for op in checked if isinstance(op, Operation)]))
        return [self._refused(pipeline, op) if isinstance(op, Refused) else next(admitted) for op in checked]

    @staticmethod
    def _refused(pipeline: Pipeline, refused: Refused) -> Admission:
        """A refusal, unless the id is known already: its stored result, or Accepted while it is held."""
        known = pipeline.journal.lookup(refused.id)
        if isinstance(known, Result):
            return known
        return Accepted(id=refused.id) if known == "held" else refused

    def _check(self, pipeline: Pipeline, operation: Operation) -> Operation | Refused:
        """The operation as the fence narrows it, or why it is refused (its params, then the fence)."""
        spec = self.registry.get(operation.name)
        if spec is None or operation.name not in pipeline.broker.actors:
            return Refused(
                id=operation.id, reason=ErrorCode.UNKNOWN_OPERATION, message=f"no operation {described(operation.name)}"
            )
        try:
            spec.validate(operation.params, self.environment)
            params = self.fence.admit(operation.name, operation.params)
        except InvalidParams as exc:
            return Refused(id=operation.id, reason=ErrorCode.INVALID_PARAMS, message=str(exc))
        except OperationFailed as exc:
            return Refused(id=operation.id, reason=ErrorCode.INVALID_PARAMS, message=f"{exc.code}: {exc}")
        return dataclasses.replace(operation, params=params)

    def _admit(self, pipeline: Pipeline, operations: list[Operation]) -> list[Admission]:
        if not operations:
            return []
        return [
            self._answer(op.id, answer)
            for op, answer in zip(operations, pipeline.admit(operations, self.max_operations), strict=True)
        ]

    def _answer(self, operation_id: str, answer: Result | JournalAdmission) -> Admission:
        if isinstance(answer, Result):
            return answer
        if answer == "acked":
            # The hub acked its result, so it has it: never run it again, and nothing more will come.
            log.info("operation %s was sent again after its result was acked: not run again", operation_id)
        if answer == "quota":
            return Refused(
                id=operation_id,
                reason=ErrorCode.QUOTA,
                message=f"{self.max_operations} operations are queued or running (connect.maxOperations)",
            )
        return Accepted(id=operation_id)

    async def cancel(self, operation_id: str) -> None:
        state = await self._redis(self.pipeline.journal.cancel, operation_id)
        log.info("cancel %s: %s", operation_id, state)

    async def unacked(self) -> list[Sequenced]:
        return await self._redis(self.pipeline.journal.outbox)

    async def next_event(self) -> Progress | Sequenced:
        return await self._events.get()

    async def acknowledge(self, seq: int) -> None:
        await self._redis(self.pipeline.journal.acknowledge, seq)

    # --- more for the CLI and tests -----------------------------------------------------------

    async def held(self) -> list[Held]:
        """The operations queued or running."""
        return await asyncio.to_thread(self.pipeline.journal.held)

    async def result(self, operation_id: str) -> Result | None:
        return await asyncio.to_thread(self.pipeline.journal.result, operation_id)

    # --- following the journal ----------------------------------------------------------------

    def _put_sequenced(self, item: Sequenced) -> None:
        """Into the outbox, unless it is there already (a result the in-process worker handed over)."""
        if item.seq > self._last_seq:
            self._last_seq = item.seq
            self._events.put(item)

    def _shortcut(self, loop: asyncio.AbstractEventLoop) -> Callable[[Result], None]:
        """What the in-process worker's threads call with each result they recorded: on the loop, the result goes
        straight into the outbox if it is the next seq the outbox expects and there is room; otherwise (records or
        another worker's results before it, or a full outbox) the journal's follower reads it as it does any."""

        def hand_over(result: Result) -> None:
            if result.seq == self._last_seq + 1 and self._events.room:
                self._put_sequenced(result)

        def from_worker(result: Result) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the next runner reads it from the journal
                loop.call_soon_threadsafe(hand_over, result)

        return from_worker

    async def _follow(self, last_event: str) -> None:
        """Moves progress, new records and new results from Redis into the outbox, until cancelled."""
        pipeline = self.pipeline
        journal = pipeline.journal
        wait = self.timings.event_wait
        next_recovery = time.monotonic() + self.timings.recover_interval
        more = False  # the last read of the journal filled the outbox: more may wait there
        while True:
            try:
                room = self._events.room
                events, found = await asyncio.to_thread(
                    _read_journal, journal, last_event, 0.0 if more else wait, self._last_seq, room
                )
                for event_id, fields in events:
                    last_event = event_id
                    if fields.get("kind") == "progress":
                        self._events.put(
                            Progress(id=fields["id"], done=int(fields["done"]), total=int(fields["total"]))
                        )
                more = bool(room) and len(found) == room
                for item in found:
                    self._put_sequenced(item)
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self.timings.recover_interval
                    await asyncio.to_thread(pipeline.recover)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the journal failed; trying again in %.1f s", wait)
                await asyncio.sleep(wait)
