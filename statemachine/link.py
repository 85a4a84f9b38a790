"""The agent's link to its hub: the state machine of ``statemachine.table`` driven over a WebSocket.

Each state has one activity, a coroutine that does the state's I/O and returns the trigger to
fire next (with a reason for the log). :meth:`Link.run` runs the current state's activity,
fires its trigger, and repeats until a final state; a stop request interrupts whichever
activity is running. Keeping the activities outside the machine's callbacks means a trigger
never cancels the task that fired it, and the machine's callbacks stay bookkeeping: counting
failures, logging every state change, closing the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from transitions.extensions.asyncio import AsyncMachine
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ksocket import __version__, protocol
from ksocket.config import Settings
from ksocket.errors import KsocketError, LinkError, ProtocolError
from ksocket.identity import Identity
from ksocket.protocol import (
    Ack,
    Authenticate,
    Authenticated,
    Cancel,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    Message,
    Operation,
    Progress,
    Rejected,
    Result,
)
from statemachine import dial, table
from statemachine.policy import Clock, resume_delay
from statemachine.runner import OperationRunner

log = logging.getLogger("ksocket.link")

CLOSE_INTERNAL_ERROR = 1011  # RFC 6455: the agent cannot go on with this connection
INBOUND_BACKLOG = 1000
"""Operations and cancels read from the hub but not yet handed to the runner; when it is full,
reading waits, and TCP slows the hub down."""


@dataclass(frozen=True)
class Outcome:
    trigger: str
    reason: str = ""


class LinkLost(Exception):
    """Ends the ``connected`` activity; its text is the reason the link counts as lost."""

    def __init__(self, reason: str, close_code: int | None = None) -> None:
        super().__init__(reason)
        self.close_code = close_code


@dataclass
class _InFlight:
    result: Result
    sent_at: float
    tries: int = 1


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
        self.history: list[str] = []
        self.delays: list[float] = []
        self._reached: dict[str, asyncio.Event] = {state: asyncio.Event() for state in table.STATES}
        self.websocket: ClientConnection | None = None
        self._stop = asyncio.Event()
        self._attempt_deadline = 0.0
        self._heartbeat_acks: dict[int, asyncio.Event] = {}
        self._in_flight: dict[int, _InFlight] = {}
        self._stored: asyncio.Queue[Result] = asyncio.Queue()
        self._inbound: asyncio.Queue[Operation | Cancel] = asyncio.Queue(INBOUND_BACKLOG)
        self._last_heard = 0.0
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
        self.history.append(self.state)
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

    async def _resuming(self) -> Outcome:
        self.attempt += 1
        delay = resume_delay(
            self.attempt,
            plateau=self.settings.resume_plateau,
            threshold=self.settings.resume_threshold,
            factor=self.clock.jitter(),
        )
        self.delays.append(delay)
        await self.clock.sleep(delay)
        return Outcome("retry", f"attempt {self.attempt} after {delay:.2f}s")

    async def _connected(self) -> Outcome:
        websocket = self.websocket
        assert websocket is not None
        self._heartbeat_acks.clear()
        self._in_flight.clear()
        self._stored = asyncio.Queue()
        self._inbound = asyncio.Queue(INBOUND_BACKLOG)  # what a lost link left unread, the hub sends again
        self._last_heard = self.clock.monotonic()
        parts = [
            self._receive(websocket),
            self._hand_over(websocket),
            self._heartbeat(websocket),
            self._send_results(websocket),
            self._watch_requests(websocket),
        ]
        tasks = [asyncio.ensure_future(part) for part in parts]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        error = next(exc for task in done if (exc := task.exception()) is not None)
        if isinstance(error, LinkLost):
            if error.close_code is not None:
                await self._close(error.close_code)
            return Outcome("lost", str(error))
        if isinstance(error, ConnectionClosed):
            return Outcome("lost", f"connection closed ({error})")
        if isinstance(error, KsocketError):  # the runner cannot take work now (its broker is down, say)
            await self._close(CLOSE_INTERNAL_ERROR)
            return Outcome("lost", f"operation runner failed: {error}")
        raise error  # a bug: let it surface with its traceback

    # --- the parts of ``connected`` -----------------------------------------------------------

    async def _send(self, websocket: ClientConnection, message: Message) -> None:
        await websocket.send(protocol.serialize(message))

    async def _receive(self, websocket: ClientConnection) -> None:
        """Reads every frame as it comes, so that a heartbeat-ack never waits behind a burst of operations."""
        async for frame in websocket:
            self._last_heard = self.clock.monotonic()
            try:
                message = protocol.parse(frame)
            except ProtocolError as exc:
                log.warning("bad frame from the hub: %s", exc)
                await self._send(websocket, protocol.error_reply(exc))
                continue
            await self._dispatch(websocket, message)
        raise LinkLost(f"hub closed the connection ({websocket.close_code} {websocket.close_reason or ''})".strip())

    async def _dispatch(self, websocket: ClientConnection, message: Message) -> None:
        if isinstance(message, Operation | Cancel):
            await self._inbound.put(message)  # in arrival order: a cancel must find its operation admitted
        elif isinstance(message, HeartbeatAck):
            waiter = self._heartbeat_acks.get(message.n)
            if waiter is not None:
                waiter.set()
        elif isinstance(message, Ack):
            for seq in [s for s in self._in_flight if s <= message.seq]:
                del self._in_flight[seq]
            await self.runner.acknowledge(message.seq)
        elif isinstance(message, ErrorMessage):
            log.warning("the hub reports an error: %s: %s", message.code, message.message)
        else:
            await self._send(
                websocket, ErrorMessage(code="bad-message", message=f"{message.TYPE!r} is not sent to an agent")
            )

    async def _hand_over(self, websocket: ClientConnection) -> None:
        """Hands operations and cancels to the runner one at a time, in the order the hub sent them."""
        while True:
            message = await self._inbound.get()
            if isinstance(message, Cancel):
                await self.runner.cancel(message.id)
                continue
            answer = await self.runner.submit(message)
            if isinstance(answer, Result):
                self._stored.put_nowait(answer)  # results leave in seq order, from _send_results alone
            else:
                await self._send(websocket, answer)

    async def _heartbeat(self, websocket: ClientConnection) -> None:
        n = 0
        while True:
            await self.clock.sleep(self.settings.heartbeat_interval)
            n += 1
            acked = self._heartbeat_acks[n] = asyncio.Event()
            await self._send(websocket, Heartbeat(n=n))
            try:
                await self._await_ack(n, acked)
            finally:
                del self._heartbeat_acks[n]

    async def _await_ack(self, n: int, acked: asyncio.Event) -> None:
        """Heartbeat-ack ``n``, or at least some frame from the hub, within heartbeatTimeout.

        A hub whose frames keep coming is alive even if its ack is not read yet: with the inbound
        backlog full, the reader takes a frame only as the runner admits one.
        """
        timeout = self.settings.heartbeat_timeout
        sent_at = self.clock.monotonic()
        while not acked.is_set():
            remaining = max(sent_at, self._last_heard) + timeout - self.clock.monotonic()
            if remaining <= 0:
                raise LinkLost(
                    f"heartbeat lost: no heartbeat-ack {n} within {timeout:g}s", protocol.CLOSE_HEARTBEAT_LOST
                )
            with contextlib.suppress(TimeoutError):
                async with self.clock.deadline(remaining):
                    await acked.wait()

    async def _send_result(self, websocket: ClientConnection, result: Result) -> None:
        self._in_flight[result.seq] = _InFlight(result, self.clock.monotonic())
        await self._send(websocket, result)

    async def _send_results(self, websocket: ClientConnection) -> None:
        """Every unacked result first, in seq order; then progress and new results as they come.

        This is the only sender of results on a connection: the hub's ack is cumulative, so a result
        sent ahead of a lower unacked one (say, a stored result answering a re-sent operation) would
        have the hub ack, and the journal forget, results the hub never received.
        """
        last_sent = 0
        for result in await self.runner.unacked():
            await self._send_result(websocket, result)
            last_sent = result.seq
        event_task: asyncio.Future[Progress | Result] = asyncio.ensure_future(self.runner.next_event())
        stored_task: asyncio.Future[Result] = asyncio.ensure_future(self._stored.get())
        try:
            while True:
                pending: set[asyncio.Future[Any]] = {event_task, stored_task}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stored_task.done():
                    stored = stored_task.result()
                    stored_task = asyncio.ensure_future(self._stored.get())
                    # Sent already on this link: send it again. Above last_sent it has not left yet, and
                    # the in-order stream below sends it after every lower seq; sending it now would
                    # have the hub ack lower results it never received.
                    if stored.seq <= last_sent:
                        await self._send_result(websocket, stored)
                if event_task.done():
                    event = event_task.result()
                    event_task = asyncio.ensure_future(self.runner.next_event())
                    if isinstance(event, Progress):
                        await self._send(websocket, event)
                    elif event.seq > last_sent:  # lower ones went out with the unacked
                        last_sent = event.seq
                        await self._send_result(websocket, event)
        finally:
            event_task.cancel()
            stored_task.cancel()

    async def _watch_requests(self, websocket: ClientConnection) -> None:
        """A result not acked within requestTimeout is sent again, requestRetries times at most."""
        timeout = self.settings.request_timeout
        while True:
            await self.clock.sleep(min(timeout / 4, 1.0))
            now = self.clock.monotonic()
            for seq, flight in sorted(self._in_flight.items()):
                if now - flight.sent_at < timeout:
                    continue
                if flight.tries > self.settings.request_retries:
                    raise LinkLost(
                        f"result {seq} not acked after {self.settings.request_retries} retries",
                        protocol.CLOSE_HEARTBEAT_LOST,
                    )
                flight.tries += 1
                flight.sent_at = now
                await self._send(websocket, flight.result)
