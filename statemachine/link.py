"""The agent's link to its hub: the state machine of ``statemachine.table`` driven over a WebSocket.

Each state has one activity, a coroutine that does the state's I/O and returns the trigger to
fire next (with a reason for the log). :meth:`Link.run` runs the current state's activity,
fires its trigger, and repeats until a final state; a stop request interrupts whichever
activity is running. Keeping the activities outside the machine's callbacks means a trigger
never cancels the task that fired it, and the machine's callbacks stay bookkeeping: counting
failures, logging every state change (and telling the :class:`LinkListener`, if any), closing the
socket.

``connected`` keeps no rule of its own: a fresh :class:`~statemachine.session.Session` per connection
decides what to send and when the link is lost, and :class:`_Connection` only moves frames, time and
operations between it, the WebSocket and the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from transitions.extensions.asyncio import AsyncMachine
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ksocket import __version__, protocol
from ksocket.config import Settings
from ksocket.errors import KsocketError, LinkError
from ksocket.identity import Identity
from ksocket.protocol import Ack, Authenticate, Authenticated, Message, ProtocolError, Rejected
from statemachine import dial, table
from statemachine.policy import Clock, resume_delay
from statemachine.runner import OperationRunner
from statemachine.session import INBOUND_BACKLOG, Lost, Session

log = logging.getLogger("ksocket.link")

CLOSE_INTERNAL_ERROR = 1011  # RFC 6455: the agent cannot go on with this connection


@dataclass(frozen=True)
class Outcome:
    trigger: str
    reason: str = ""


class LinkLost(Exception):
    """Ends the ``connected`` activity; its text is the reason the link counts as lost."""

    def __init__(self, reason: str, close_code: int | None = None) -> None:
        super().__init__(reason)
        self.close_code = close_code


class LinkListener(Protocol):
    """What a test or a tool may watch: every state entered, every resume delay drawn."""

    def on_state(self, state: str) -> None: ...

    def on_delay(self, seconds: float) -> None: ...


class Link:
    """The model of the state machine: its ``state`` attribute and triggers are added by transitions."""

    state: str
    trigger: Callable[..., Awaitable[bool]]

    def __init__(
        self,
        settings: Settings,
        runner: OperationRunner,
        *,
        clock: Clock | None = None,
        identity: Identity | None = None,
        stop_after: str | None = None,
        listener: LinkListener | None = None,
        backlog: int = INBOUND_BACKLOG,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.clock = clock or Clock()
        self.identity = identity or Identity()
        self.endpoint = dial.Endpoint.from_settings(settings)
        self.stop_after = stop_after  # diagnostics: stop cleanly on reaching this state
        self.failures = 0  # failed attempts in a row, towards connect.resumeRetries
        self.attempt = 0  # the protocol's k: resume attempts since the last authenticated connection
        self.last_reason = ""
        self.listener = listener
        self.backlog = backlog  # operations and cancels a connection's session queues for the runner
        self._reached: dict[str, asyncio.Event] = {state: asyncio.Event() for state in table.STATES}
        self.websocket: ClientConnection | None = None
        self._stop = asyncio.Event()
        self._attempt_deadline = 0.0
        self.machine = AsyncMachine(
            model=self,
            states=table.STATES,
            transitions=table.TRANSITIONS,
            initial="idle",
            auto_transitions=False,
            queued=True,
            send_event=True,
            after_state_change="_log_change",
        )
        self.activities: dict[str, Callable[[], Awaitable[Outcome]]] = {
            "connecting": self._connecting,
            "authenticating": self._authenticating,
            "connected": self._connected,
            "resuming": self._resuming,
        }

    # --- callbacks named in the table ---------------------------------------------------------

    def count_failure(self, event: Any) -> None:
        self.failures += 1

    def retries_exhausted(self, event: Any) -> bool:
        return self.failures >= self.settings.resume_retries

    def start_afresh(self, event: Any) -> None:
        self.failures = 0
        self.attempt = 0

    async def _log_change(self, event: Any) -> None:
        reason = event.kwargs.get("reason", "")
        if event.event.name == "lost":
            self.last_reason = reason
        if self.listener is not None:
            self.listener.on_state(self.state)
        for state, reached in self._reached.items():
            if state == self.state:
                reached.set()
            else:
                reached.clear()
        source = event.transition.source
        log.info("link %s -> %s%s", source, self.state, f" ({reason})" if reason else "")
        if self.state in ("resuming", "stopped", "failed"):
            await self._close(protocol.CLOSE_NORMAL)

    # --- running ------------------------------------------------------------------------------

    async def wait_for(self, state: str, timeout: float = 10.0) -> None:
        """Waits until the machine is in ``state`` (for diagnostics and tests)."""
        async with asyncio.timeout(timeout):
            await self._reached[state].wait()

    def request_stop(self) -> None:
        """Asks for a clean shutdown (SIGTERM/SIGINT): close 1000, then the ``stopped`` state."""
        self._stop.set()

    async def run(self) -> int:
        """Runs until ``stopped`` (exit status 0) or ``failed`` (1, after one log line saying why)."""
        if dial.insecure() and self.endpoint.secure:
            log.warning("KSOCKET_INSECURE is set: the hub's TLS certificate is NOT verified")
        await self.trigger("start")
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while self.state not in table.FINAL_STATES:
                if self.state == self.stop_after:
                    await self.trigger("stop", reason=f"reached {self.stop_after}")
                    break
                activity = asyncio.ensure_future(self.activities[self.state]())
                await asyncio.wait({activity, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not activity.done():
                    activity.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await activity
                    await self.trigger("stop", reason="stop requested")
                    break
                outcome = activity.result()
                await self.trigger(outcome.trigger, reason=outcome.reason)
        finally:
            stop.cancel()
            await self._close(protocol.CLOSE_NORMAL)
        if self.state == "failed":
            log.error(
                "giving up after %d failed connection attempts in a row (connect.resumeRetries); last: %s",
                self.failures,
                self.last_reason,
            )
            return 1
        return 0

    async def _close(self, code: int) -> None:
        websocket, self.websocket = self.websocket, None
        if websocket is not None:
            with contextlib.suppress(Exception):
                await websocket.close(code)

    # --- activities ---------------------------------------------------------------------------

    def _remaining(self) -> float:
        return max(0.0, self._attempt_deadline - self.clock.monotonic())

    async def _connecting(self) -> Outcome:
        self._attempt_deadline = self.clock.monotonic() + self.settings.resume_timeout
        try:
            self.websocket = await dial.open_websocket(self.endpoint, self._remaining() * self.clock.scale)
        except LinkError as exc:
            return Outcome("lost", str(exc))
        return Outcome("opened", self.endpoint.url)

    async def _authenticating(self) -> Outcome:
        assert self.websocket is not None
        hello = Authenticate(
            protocol=self._version(),
            token=self.settings.token,
            name=self.settings.name,
            version=__version__,
            agent=self.identity.agent,
            session=self.identity.session,
        )
        try:
            async with self.clock.deadline(self._remaining()):
                await self.websocket.send(protocol.serialize(hello))
                answer = protocol.parse(await self.websocket.recv())
        except TimeoutError:
            return Outcome("lost", f"no answer to authenticate within connect.resumeTimeout ({self.endpoint.host})")
        except ConnectionClosed as exc:
            return Outcome("lost", f"hub closed the connection during authentication ({exc})")
        except ProtocolError as exc:
            return Outcome("lost", f"hub answered authenticate with a bad frame: {exc}")
        if isinstance(answer, Authenticated):
            resumed = self.identity.session == answer.session and answer.resumed
            self.identity.remember(answer.session)
            return Outcome("accepted", f"session resumed {answer.session}" if resumed else "new session")
        if isinstance(answer, Rejected):
            return Outcome("lost", f"rejected by the hub: {answer.reason}: {answer.message}")
        return Outcome("lost", f"hub answered authenticate with {answer.TYPE!r}")

    def _version(self) -> int:
        """The protocol version of the subprotocol the hub selected (dial refuses any other)."""
        assert self.websocket is not None
        return protocol.version_of(self.websocket.subprotocol) or protocol.PROTOCOL_VERSION

    async def _resuming(self) -> Outcome:
        self.attempt += 1
        delay = resume_delay(
            self.attempt,
            plateau=self.settings.resume_plateau,
            threshold=self.settings.resume_threshold,
            factor=self.clock.jitter(),
        )
        if self.listener is not None:
            self.listener.on_delay(delay)
        await self.clock.sleep(delay)
        return Outcome("retry", f"attempt {self.attempt} after {delay:.2f}s")

    async def _connected(self) -> Outcome:
        websocket = self.websocket
        assert websocket is not None
        # what a lost link left unread, the hub sends again: every connection starts a fresh session
        session = Session(self.settings, self.clock.monotonic(), backlog=self.backlog, version=self._version())
        try:
            await _Connection(websocket, session, self.runner, self.clock).run()
        except LinkLost as lost:
            if lost.close_code is not None:
                await self._close(lost.close_code)
            return Outcome("lost", str(lost))
        except ConnectionClosed as exc:
            return Outcome("lost", f"connection closed ({exc})")
        except KsocketError as exc:  # the runner cannot take work now (its broker is down, say)
            await self._close(CLOSE_INTERNAL_ERROR)
            return Outcome("lost", f"operation runner failed: {exc}")


class _Connection:
    """Drives one connected WebSocket through its :class:`Session`: five tasks, each moving one kind of I/O.

    The reader hands every frame to the session as it comes (while the inbound queue has room);
    the hand-over gives the queued operations to the runner in batches, and cancels one at a time; the timer
    sleeps until the session's next deadline and polls it; the result sender writes the runner's
    unacked results and records, then its progress, new records and new results; the trimmer hands
    the latest ack to the runner. Whatever the session answers is written at once. The first task to
    fail ends the connection with its exception.
    """

    def __init__(self, websocket: ClientConnection, session: Session, runner: OperationRunner, clock: Clock) -> None:
        self.websocket = websocket
        self.session = session
        self.runner = runner
        self.clock = clock
        self._arrived = asyncio.Event()  # the inbound queue may have work
        self._room = asyncio.Event()  # the inbound queue may have room
        self._tracked = asyncio.Event()  # a result went out: the session's deadline may be nearer
        self._acked = 0  # the highest seq the hub acked on this connection
        self._trimmed = 0  # the highest seq the runner was told of
        self._ack_arrived = asyncio.Event()

    async def run(self) -> NoReturn:
        """Runs until the first task fails; its exception ends the connection (a bug's, with its traceback)."""
        parts = [self._read(), self._hand_over(), self._keep_time(), self._send_results(), self._trim()]
        tasks = [asyncio.ensure_future(part) for part in parts]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        raise next(exc for task in done if (exc := task.exception()) is not None)

    async def _send(self, messages: list[Message]) -> None:
        for message in messages:
            await self.websocket.send(protocol.serialize(message))

    async def _read(self) -> None:
        """Reads every frame as it comes, so that a heartbeat-ack never waits behind a burst of operations."""
        websocket = self.websocket
        async for frame in websocket:
            now = self.clock.monotonic()
            try:
                message = protocol.parse(frame)
            except ProtocolError as exc:
                await self._send(self.session.receive_bad(exc, now))
                continue
            await self._send(self.session.receive(message, now))
            self._arrived.set()
            if isinstance(message, Ack) and message.seq > self._acked:
                self._acked = message.seq
                self._ack_arrived.set()
            await _until(lambda: self.session.has_room, self._room)
        raise LinkLost(f"hub closed the connection ({websocket.close_code} {websocket.close_reason or ''})".strip())

    async def _hand_over(self) -> None:
        """Hands operations and cancels to the runner in the order the hub sent them: the operations waiting
        together in one batch, a cancel alone."""
        while True:
            await _until(lambda: self.session.has_inbound, self._arrived)
            operations = self.session.take_operations()
            if not operations:
                cancel = self.session.take_inbound()
                self._room.set()
                await self.runner.cancel(cancel.id)
                continue
            self._room.set()
            answers = await self.runner.submit_many(operations)
            now = self.clock.monotonic()
            await self._send_tracked([sent for answer in answers for sent in self.session.admitted(answer, now)])

    async def _trim(self) -> None:
        """Has the runner forget what the hub acked: the latest ack only, as acks are cumulative, so that a hub
        acking frame by frame costs one journal write per round, not per frame."""
        self._trimmed = 0
        while True:
            await _until(lambda: self._acked > self._trimmed, self._ack_arrived)
            self._trimmed = self._acked
            await self.runner.acknowledge(self._trimmed)

    async def _keep_time(self) -> None:
        """Sleeps until the session's next deadline (or a result sent), then sends what is due."""
        while True:
            self._tracked.clear()
            due = self.session.poll(self.clock.monotonic())
            if isinstance(due, Lost):
                raise LinkLost(due.reason, due.close_code)
            await self._send(due)
            with contextlib.suppress(TimeoutError):
                async with self.clock.deadline(max(0.0, self.session.next_deadline() - self.clock.monotonic())):
                    await self._tracked.wait()

    async def _send_results(self) -> None:
        """Every unacked result and record first, in seq order; then progress, new records and results as they
        come."""
        unacked = await self.runner.unacked()
        await self._send_tracked(self.session.send_unacked(unacked, self.clock.monotonic()))
        while True:
            event = await self.runner.next_event()
            await self._send_tracked(self.session.produced(event, self.clock.monotonic()))

    async def _send_tracked(self, messages: list[Message]) -> None:
        if messages:
            self._tracked.set()
        await self._send(messages)


async def _until(ready: Callable[[], bool], signal: asyncio.Event) -> None:
    """Waits until ``ready()``; whoever may make it true sets ``signal`` after doing so."""
    while not ready():
        signal.clear()
        await signal.wait()
