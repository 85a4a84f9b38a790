"""The hub's server: agents dial in over WebSocket, the hub hands them operations from its database.

``Hub`` is the whole controller: ``ksocket hub serve`` runs one until it is stopped, and tests
run one in-process on port 0 (``async with Hub(db_path) as hub:``). Every frame goes through
``ksocket.protocol``; the database (``ksocket.hub.store``) is the only state that outlives a
connection, and the only channel by which other processes (``ksocket hub run``) give it work.

One connection, from handshake to close
---------------------------------------
1. The handshake must select the subprotocol ``ksocket.v1``; a client that does not offer it
   gets HTTP 400.
2. The first frame must be ``authenticate`` within ``auth_timeout`` seconds, else close 4400
   (a bad or other first frame gets an ``error`` frame first). Then, in this order:
   protocol version ≠ 1 → ``rejected`` unsupported-protocol + close 4400; unknown or revoked
   token → ``rejected`` invalid-token + close 4401; slot held by a connected agent →
   ``rejected`` slot-in-use + close 4409, unless the newcomer presents the holder's session and
   agent id: then the holder is closed (4409) and the newcomer takes its place, ``resumed``.
   With the slot free, a session equal to the slot's last one (same agent id) is resumed too;
   anything else gets a fresh session id.
3. ``authenticated``, then every operation of the slot without a result, same ids (a ``cancel``
   follows those whose cancel was asked for).
4. Frames: ``heartbeat`` → ``heartbeat-ack``; ``result`` → stored, ``ack`` with its seq (a
   repeated (agent, seq) is acked again, stored once); ``accepted`` / ``refused`` /
   ``progress`` → the operation's row; a bad frame → ``error`` (the link stays). Nothing heard
   for ``heartbeat_interval + heartbeat_timeout`` seconds → close 4408.

Meanwhile one poller task reads the database every ``poll_interval`` seconds (sooner when this
process queued something) and sends new pending operations and asked-for cancels to connected
slots, and disconnects (4401) a slot whose token was revoked.

The database is used synchronously from the event loop: every call is one short transaction
on a local file, and the loop is this hub's only thread.

Test knobs
----------
A thin layer on the same machinery, for tests of the agent: ``answer_heartbeats`` and
``ack_results`` (False makes a hub that stops answering those), ``drop`` (abort the slot's TCP
connection, no close frame), ``send_raw`` (any frame, even malformed), ``received`` /
``errors`` / ``close_codes`` (what the slot's agent sent), ``wait_connected`` /
``wait_disconnected`` / ``wait_received`` / ``wait_result``, and ``submit`` / ``cancel`` /
``results`` / ``operation``, which go through the database exactly as ``ksocket hub run`` does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.typing import Subprotocol

from ksocket.hub.errors import HubError, NotConnected, UnknownOperation
from ksocket.hub.store import OperationRecord, Store
from ksocket.hub.tokens import new_session
from ksocket.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_HEARTBEAT_LOST,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SLOT_IN_USE,
    FROM_AGENT,
    MAX_FRAME,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    Accepted,
    Ack,
    Authenticate,
    Authenticated,
    BadMessage,
    Cancel,
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    JSONObject,
    Message,
    Progress,
    ProtocolError,
    Refused,
    Rejected,
    RejectReason,
    Result,
    error_reply,
    parse,
    serialize,
)

__all__ = ["ENDPOINT_PATH", "BadFrame", "Hub"]

logger = logging.getLogger(__name__)

ENDPOINT_PATH = "/api/ksocket/connect"
"""The path agents use by default; the hub accepts a connection on any path."""

M = TypeVar("M", bound=Message)
T = TypeVar("T")


class BadFrame(NamedTuple):
    """A frame from an agent that ``ksocket.protocol`` refused, and why."""

    frame: str | bytes
    error: ProtocolError


HEARTBEAT_SAVE_INTERVAL = 1.0
"""Seconds between two writes of one agent's last heartbeat time to the database."""


@dataclass(eq=False)
class _Link:
    """One authenticated connection: the slot it holds and the session it carries."""

    slot: str
    agent: str
    session: str
    ws: ServerConnection
    peer: str
    released: asyncio.Event = field(default_factory=asyncio.Event)
    heartbeat_saved: float = float("-inf")


class _Signal:
    """Wakes everyone waiting for the hub's state to change (a frame, a connection, a drop)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, probe: Callable[[], T | None], timeout: float) -> T:
        """The first value of ``probe()`` that is not None; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                event = self._event
                value = probe()
                if value is not None:
                    return value
                await event.wait()


class _WebsocketsLog(logging.Filter):
    """websockets' own log lines, less those the hub already says better and any frame that
    holds a token (websockets logs every frame at DEBUG, and ``authenticate`` carries one)."""

    SAID_BETTER = frozenset(
        {"connection open", "connection closed", "server listening on %s", "server closing", "server closed"}
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.SAID_BETTER:
            return False
        return record.levelno > logging.DEBUG or '"token"' not in record.getMessage()


_websockets_logger = logging.getLogger("ksocket.hub.websockets")
_websockets_logger.addFilter(_WebsocketsLog())


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return str(address)


def _decode(frame: str | bytes) -> Message:
    if isinstance(frame, bytes):
        raise BadMessage(f"{BadMessage.code}: binary frame; every frame must be a text frame of JSON")
    return parse(frame)


def _safe(exc: ProtocolError) -> ProtocolError:
    """A parse error fit for the log and the error reply (which websockets logs too): a token of the
    wrong shape is not quoted back."""
    if '"token"' not in str(exc):
        return exc
    return BadMessage(f'{BadMessage.code}: field "token" of "authenticate" is malformed')


class Hub:
    """The reference hub. Use as ``async with Hub(db_path) as hub:``; ``hub.port`` is the bound port.

    ``host`` / ``port`` are where to listen (port 0: any free port; with a host name that
    resolves to several addresses, ``port`` reports the first socket's). ``ssl_context`` makes
    it ``wss``. Times are in seconds.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        heartbeat_interval: float = 60.0,
        heartbeat_timeout: float = 30.0,
        auth_timeout: float = 60.0,
        poll_interval: float = 0.05,
        history: int = 10_000,
    ) -> None:
        self.db_path = db_path
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.auth_timeout = auth_timeout
        self.poll_interval = poll_interval
        self.answer_heartbeats = True
        """False: heartbeats are still read, but never answered (a hub that went quiet)."""
        self.ack_results = True
        """False: results are still stored, but never acked (the agent will send them again)."""
        self._history = history
        self._links: dict[str, _Link] = {}
        self._received: dict[str, collections.deque[Message]] = {}
        self._errors: dict[str, collections.deque[BadFrame]] = {}
        self._closes: dict[str, collections.deque[int | None]] = {}
        self._signal = _Signal()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self._store: Store | None = None

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._store = Store(self.db_path)
        self._store.reset_connections()
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                ssl=self.ssl_context,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                select_subprotocol=self._select_subprotocol,
                ping_interval=None,  # liveness is the protocol's heartbeat, not WebSocket pings
                max_size=MAX_FRAME,
                logger=_websockets_logger,
            )
        except OSError as exc:
            self._store.close()
            self._store = None
            raise HubError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._poller = asyncio.create_task(self._poll(), name="ksocket-hub-poller")
        logger.info("hub listening on %s (database %s)", self.url, self.db_path)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if self._server is not None:
            self._server.close()  # closes every connection with 1001 and waits for the handlers
            await self._server.wait_closed()
            self._server = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._store is not None:
            self._store.close()
            self._store = None
        logger.info("hub stopped")

    @property
    def store(self) -> Store:
        """The hub's open database (between start and stop)."""
        if self._store is None:
            raise HubError("the hub is not running")
        return self._store

    @property
    def url(self) -> str:
        """Where agents connect: ``ws[s]://HOST:PORT/api/ksocket/connect``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.ssl_context else 'ws'}://{host}:{self.port}{ENDPOINT_PATH}"

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ one connection

    def _select_subprotocol(self, ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol:
        """``ksocket.v1``, or HTTP 400 for a client that does not offer it."""
        if SUBPROTOCOL in offered:
            return Subprotocol(SUBPROTOCOL)
        logger.info(
            "connection from %s refused: it does not offer subprotocol %s (offered: %s)",
            _peer(ws),
            SUBPROTOCOL,
            ", ".join(offered) or "none",
        )
        raise NegotiationError(f"the hub speaks subprotocol {SUBPROTOCOL} only")

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        if ws.subprotocol != SUBPROTOCOL:  # websockets refuses such handshakes already; be sure anyway
            await ws.close(CLOSE_PROTOCOL_ERROR, f"subprotocol {SUBPROTOCOL} required")
            return
        auth = await self._first_frame(ws, peer)
        if auth is None:
            return
        admitted = await self._admit(ws, peer, auth)
        if admitted is None:
            return
        link, resumed, backlog = admitted
        try:
            await ws.send(serialize(Authenticated(session=link.session, resumed=resumed)))
            for op in backlog:
                await ws.send(serialize(op.to_message()))
                if op.cancel_requested is not None:
                    await ws.send(serialize(Cancel(id=op.id)))
            if backlog:
                logger.info("slot %s: sent %d operation(s) without a result", link.slot, len(backlog))
            await self._converse(link)
        except ConnectionClosed as exc:
            self._closed(link, exc)
        finally:
            self._release(link)

    async def _first_frame(self, ws: ServerConnection, peer: str) -> Authenticate | None:
        try:
            frame = await asyncio.wait_for(ws.recv(), self.auth_timeout)
        except TimeoutError:
            logger.info("connection from %s closed: no authenticate within %g s", peer, self.auth_timeout)
            await ws.close(CLOSE_PROTOCOL_ERROR, "no authenticate in time")
            return None
        except ConnectionClosed:
            logger.info("connection from %s closed before it authenticated", peer)
            return None
        try:
            message = _decode(frame)
            if not isinstance(message, Authenticate):
                raise BadMessage(f'{BadMessage.code}: the first frame must be "authenticate", not "{message.TYPE}"')
        except ProtocolError as exc:
            safe = _safe(exc)
            logger.info("connection from %s closed: bad first frame: %s", peer, safe)
            try:
                await ws.send(serialize(error_reply(safe)))
            except ConnectionClosed:
                return None
            await ws.close(CLOSE_PROTOCOL_ERROR, "the first frame must be authenticate")
            return None
        return message

    async def _reject(self, ws: ServerConnection, peer: str, reason: RejectReason, text: str, code: int) -> None:
        logger.info("connection from %s rejected: %s (%s)", peer, reason, text)
        try:
            await ws.send(serialize(Rejected(reason=reason, message=text)))
        except ConnectionClosed:
            return
        await ws.close(code, reason)

    async def _admit(
        self, ws: ServerConnection, peer: str, auth: Authenticate
    ) -> tuple[_Link, bool, list[OperationRecord]] | None:
        """Checks the authenticate frame; on success the link holds its slot when this returns.

        Everything from the token check to taking the slot runs without yielding to the event
        loop, so two connections never both take one slot and the poller never sends an
        operation that is also in the backlog.
        """
        if auth.protocol != PROTOCOL_VERSION:
            text = f"this hub speaks protocol version {PROTOCOL_VERSION}, not {auth.protocol}"
            await self._reject(ws, peer, ErrorCode.UNSUPPORTED_PROTOCOL, text, CLOSE_PROTOCOL_ERROR)
            return None
        store = self.store
        slot = store.slot_for_token(auth.token)
        if slot is None:
            await self._reject(ws, peer, ErrorCode.INVALID_TOKEN, "unknown or revoked token", CLOSE_AUTH_FAILED)
            return None
        self._record(self._received, slot).append(auth)
        holder = self._links.get(slot)
        if holder is not None:
            if auth.session != holder.session or auth.agent != holder.agent:
                text = f"slot {slot} is held by a connected agent ({holder.agent})"
                await self._reject(ws, peer, ErrorCode.SLOT_IN_USE, text, CLOSE_SLOT_IN_USE)
                return None
            logger.info("slot %s: session %s resumed from %s; closing its old connection", slot, holder.session, peer)
            self._release(holder)
            self._spawn(holder.ws.close(CLOSE_SLOT_IN_USE, "replaced by a resumed connection"))
            session, resumed = holder.session, True
        else:
            last = store.agent(slot)
            resumable = None if last is None else (last.session, last.agent)
            resumed = auth.session is not None and resumable == (auth.session, auth.agent)
            session = auth.session if resumed and auth.session is not None else new_session()
        backlog = store.claim_backlog(slot)
        link = _Link(slot=slot, agent=auth.agent, session=session, ws=ws, peer=peer)
        self._links[slot] = link
        store.agent_connected(slot, agent=auth.agent, version=auth.version, name=auth.name, session=session)
        self._signal.fire()
        logger.info(
            "slot %s: agent %s (%s %s) connected from %s, session %s (%s)",
            slot,
            auth.agent,
            auth.name,
            auth.version,
            peer,
            session,
            "resumed" if resumed else "new",
        )
        return link, resumed, backlog

    async def _converse(self, link: _Link) -> None:
        """Reads the link's frames until it closes or goes quiet for too long."""
        loop = asyncio.get_running_loop()
        limit = self.heartbeat_interval + self.heartbeat_timeout
        heard = loop.time()
        while True:
            remaining = heard + limit - loop.time()
            if remaining <= 0:
                logger.info("slot %s: nothing heard from agent %s for %g s; dropping it", link.slot, link.agent, limit)
                self._release(link)
                await link.ws.close(CLOSE_HEARTBEAT_LOST, "heartbeat lost")
                return
            try:
                frame = await asyncio.wait_for(link.ws.recv(), remaining)
            except TimeoutError:
                continue
            heard = loop.time()
            await self._on_frame(link, frame)

    def _closed(self, link: _Link, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else None
        self._record(self._closes, link.slot).append(code)
        if self._links.get(link.slot) is link:
            how = f"close code {code}" if code is not None else "without a close frame"
            logger.info("slot %s: agent %s disconnected (%s)", link.slot, link.agent, how)

    def _release(self, link: _Link) -> None:
        """The link no longer holds its slot (idempotent)."""
        if link.released.is_set():
            return
        link.released.set()
        if self._links.get(link.slot) is link:
            del self._links[link.slot]
            if self._store is not None:
                self._store.agent_disconnected(link.slot, link.session)
        self._signal.fire()

    async def _send(self, link: _Link, message: Message) -> bool:
        try:
            await link.ws.send(serialize(message))
        except ConnectionClosed:
            return False
        return True

    async def _on_frame(self, link: _Link, frame: str | bytes) -> None:
        try:
            message = _decode(frame)
        except ProtocolError as exc:
            self._record(self._errors, link.slot).append(BadFrame(frame, exc))
            self._signal.fire()
            safe = _safe(exc)
            logger.info("slot %s: bad frame from agent %s: %s", link.slot, link.agent, safe)
            await self._send(link, error_reply(safe))
            return
        self._record(self._received, link.slot).append(message)
        self._signal.fire()
        store = self.store
        if isinstance(message, Heartbeat):
            now = asyncio.get_running_loop().time()
            if now - link.heartbeat_saved >= HEARTBEAT_SAVE_INTERVAL:  # a durable write per frame stalls the loop
                link.heartbeat_saved = now
                store.agent_heartbeat(link.slot, link.session)
            if self.answer_heartbeats:
                await self._send(link, HeartbeatAck(n=message.n))
        elif isinstance(message, Result):
            await self._on_result(link, message)
        elif isinstance(message, Accepted):
            if not store.mark_accepted(link.slot, message.id):
                logger.debug("slot %s: accepted for operation %s, which is not waiting", link.slot, message.id)
        elif isinstance(message, Refused):
            if store.mark_refused(link.slot, message.id, message.reason, message.message):
                logger.info(
                    "slot %s: operation %s refused: %s: %s", link.slot, message.id, message.reason, message.message
                )
        elif isinstance(message, Progress):
            store.mark_progress(link.slot, message.id, message.done, message.total)
        elif isinstance(message, ErrorMessage):
            logger.warning("slot %s: agent %s reports %s: %s", link.slot, link.agent, message.code, message.message)
        else:
            if isinstance(message, Authenticate):
                text = "already authenticated; authenticate is only the first frame"
            else:
                assert not isinstance(message, FROM_AGENT)
                text = f'"{message.TYPE}" is a message of the hub, not of an agent'
            self._record(self._errors, link.slot).append(BadFrame(frame, BadMessage(f"bad-message: {text}")))
            await self._send(link, ErrorMessage(code=BadMessage.code, message=text))

    async def _on_result(self, link: _Link, result: Result) -> None:
        try:
            new = self.store.add_result(link.slot, link.agent, result)
        except HubError as exc:
            await self._send(link, ErrorMessage(code=BadMessage.code, message=str(exc)))
            return
        self._signal.fire()
        if new:
            outcome = "ok" if result.ok else f"failed: {result.error.code if result.error else '?'}"
            logger.info("slot %s: result seq %d for operation %s (%s)", link.slot, result.seq, result.id, outcome)
        else:
            logger.debug("slot %s: result seq %d already received; acking it again", link.slot, result.seq)
        if self.ack_results:
            await self._send(link, Ack(seq=result.seq))

    # ------------------------------------------------------------------ the poller

    async def _poll(self) -> None:
        while True:
            try:
                await self._poll_once()
            except Exception:
                logger.exception("hub: reading the database failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    async def _poll_once(self) -> None:
        slots = list(self._links)
        if not slots:
            return
        store = self.store
        for slot in store.revoked_among(slots):
            link = self._links[slot]
            logger.info("slot %s: token revoked; disconnecting agent %s", slot, link.agent)
            self._release(link)
            self._spawn(link.ws.close(CLOSE_AUTH_FAILED, "token revoked"))
        for op in store.claim_pending(slots):
            link_or_none = self._links.get(op.slot)
            if link_or_none is not None and await self._send(link_or_none, op.to_message()):
                logger.info("slot %s: sent operation %s (%s)", op.slot, op.id, op.name)
        for op in store.claim_cancels(slots):
            link_or_none = self._links.get(op.slot)
            if link_or_none is not None and await self._send(link_or_none, Cancel(id=op.id)):
                logger.info("slot %s: sent cancel of operation %s", op.slot, op.id)

    # ------------------------------------------------------------------ the API for callers and tests

    def _record(self, table: dict[str, collections.deque[T]], slot: str) -> collections.deque[T]:
        if slot not in table:
            table[slot] = collections.deque(maxlen=self._history)
        return table[slot]

    def connected(self, slot: str) -> bool:
        """Whether an authenticated agent holds ``slot`` now."""
        return slot in self._links

    def session(self, slot: str) -> str | None:
        """The session id of the connection holding ``slot``, or None."""
        link = self._links.get(slot)
        return link.session if link is not None else None

    async def wait_connected(self, slot: str, timeout: float = 5.0) -> str:
        """Waits until an agent holds ``slot``; returns its session id. TimeoutError if none does in time."""
        return await self._signal.wait_for(lambda: self.session(slot), timeout)

    async def wait_disconnected(self, slot: str, timeout: float = 5.0) -> None:
        """Waits until no agent holds ``slot``. TimeoutError if one still does after ``timeout``."""
        await self._signal.wait_for(lambda: True if slot not in self._links else None, timeout)

    async def drop(self, slot: str) -> None:
        """Aborts the TCP connection of ``slot`` without a close frame (a lost link), and waits
        until the hub has let go of it: the slot is free when this returns."""
        link = self._links.get(slot)
        if link is None:
            raise NotConnected(f"slot {slot!r} has no connected agent")
        logger.info("slot %s: dropping the connection of agent %s (test knob)", slot, link.agent)
        link.ws.transport.abort()
        await asyncio.wait_for(link.released.wait(), 5.0)

    async def send_raw(self, slot: str, frame: str | bytes) -> None:
        """Sends ``frame`` as it is (text, or bytes as a binary frame) to the agent holding ``slot``."""
        link = self._links.get(slot)
        if link is None:
            raise NotConnected(f"slot {slot!r} has no connected agent")
        try:
            await link.ws.send(frame)
        except ConnectionClosed:
            raise NotConnected(f"the connection of slot {slot!r} closed before the frame went out") from None

    def received(self, slot: str) -> list[Message]:
        """The messages the agents of ``slot`` sent, oldest first, across connections
        (including their ``authenticate``; frames that failed to parse are in ``errors``)."""
        return list(self._received.get(slot, ()))

    def errors(self, slot: str) -> list[BadFrame]:
        """The frames from the agents of ``slot`` that the hub answered with an ``error`` frame."""
        return list(self._errors.get(slot, ()))

    def close_codes(self, slot: str) -> list[int | None]:
        """For each ended connection of ``slot``: the code of the agent's close frame (an echo of
        the hub's when the hub closed first), or None when it ended without one."""
        return list(self._closes.get(slot, ()))

    async def wait_received(
        self, slot: str, kind: type[M], timeout: float = 5.0, where: Callable[[M], bool] | None = None
    ) -> M:
        """The first message of type ``kind`` (matching ``where``) that ``slot`` has received."""

        def probe() -> M | None:
            for message in self._received.get(slot, ()):
                if isinstance(message, kind) and (where is None or where(message)):
                    return message
            return None

        return await self._signal.wait_for(probe, timeout)

    async def submit(self, slot: str, name: str, params: JSONObject | None = None, id: str | None = None) -> str:
        """Queues operation ``name`` for ``slot`` in the database, as ``ksocket hub run`` does; returns its id.

        It is sent at once if an agent holds the slot, else when one connects.
        """
        op_id = self.store.add_operation(slot, name, params, id)
        self._wake.set()
        return op_id

    async def cancel(self, op_id: str) -> str:
        """Asks for operation ``op_id`` to be cancelled; returns its state afterwards
        (``cancelled`` if it had not been sent yet; else a ``cancel`` frame goes out)."""
        state = self.store.request_cancel(op_id)
        self._wake.set()
        return state

    def operation(self, op_id: str) -> OperationRecord:
        """The operation's row: state, refusal reason, progress."""
        record = self.store.operation(op_id)
        if record is None:
            raise UnknownOperation(f"no operation with id {op_id!r}")
        return record

    def results(self, slot: str) -> list[Result]:
        """Every result stored for ``slot``, in the order received (each (agent, seq) once)."""
        return [record.to_message() for record in self.store.results(slot)]

    async def wait_result(self, op_id: str, timeout: float = 5.0) -> Result:
        """The result of operation ``op_id``, once stored. TimeoutError if none comes in time."""

        def probe() -> Result | None:
            record = self.store.result_for(op_id)
            return record.to_message() if record is not None else None

        return await self._signal.wait_for(probe, timeout)
