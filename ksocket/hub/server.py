"""The hub's server: agents dial in over WebSocket, the hub hands them operations from its database.

``Hub`` is the whole controller: ``ksocket hub serve`` runs one until it is stopped, and tests
run one in-process on port 0 (``async with Hub(db_path) as hub:``). Every frame goes through
``ksocket.protocol``; the database (``ksocket.hub.store``) is the only state that outlives a
connection, and the only channel by which other processes (``ksocket hub run``) give it work.

It listens with uvicorn (``ksocket.hub.asgi``): one address serves agents and people. Every
WebSocket handshake, on any path (agents use ``ENDPOINT_PATH``), is an agent's, handled here; every
HTTP request goes to the ASGI ``web_app`` given to the hub (the operators' pages), or gets a plain
404 without one. Stopping the hub closes every agent's connection with 1001.

One connection, from handshake to close
---------------------------------------
1. A new connection must send its whole handshake request within ``auth_timeout`` seconds.
   While ``max_startups`` (``Startups``) says the hub has too many unauthenticated connections,
   a newcomer's handshake is refused with HTTP 503 (the ASGI WebSocket Denial Response). The
   hub selects the subprotocol ``ksocket.v2`` when offered, else ``ksocket.v1``; a client that
   offers neither gets HTTP 400.
2. The first frame must be ``authenticate``, at most ``AUTH_FRAME_LIMIT`` bytes (a larger one
   closes the connection with 1009), within ``auth_timeout`` seconds, else close 4400
   (a bad or other first frame gets an ``error`` frame first). Then, in this order:
   protocol version ≠ the selected subprotocol's → ``rejected`` unsupported-protocol + close 4400; unknown or revoked
   token → ``rejected`` invalid-token + close 4401; slot held by a connected agent →
   ``rejected`` slot-in-use + close 4409, unless the newcomer presents the holder's session and
   agent id: then the holder is closed (4409) and the newcomer takes its place, ``resumed``.
   With the slot free, a session equal to the slot's last one (same agent id) is resumed too;
   anything else gets a fresh session id.
3. The connection no longer counts as unauthenticated, takes frames of up to ``MAX_FRAME``
   bytes, and gets ``authenticated``, then every operation of the slot without a result, same ids (a ``cancel``
   follows those whose cancel was asked for).
4. Frames: ``heartbeat`` → ``heartbeat-ack``; ``result`` → stored, ``ack`` with its seq (a
   repeated (agent, seq), or a second result of one operation, is acked again and not stored;
   past the slot's ``slot_quota`` bytes, a ``storage-full`` failure is stored in its place);
   ``record`` (version 2 only) → stored likewise, by the same (agent, seq)
   count, in batches: records that come one right after another (within ``RECORD_LINGER``, up to
   ``RECORD_BATCH``) are stored in one transaction, then one ``ack`` for the highest seq answers them
   all (stored before any later frame's write, so a result is stored after its records);
   ``accepted`` / ``refused`` / ``progress`` → the operation's row. A result, record, ``accepted``,
   ``refused`` or ``progress`` for an operation never sent to the slot → ``error`` with code
   ``unknown-operation``, nothing stored (a result is acked all the same, so that its agent lets go
   of it). A bad frame → ``error`` (the link stays). Nothing heard for
   ``heartbeat_interval + heartbeat_timeout`` seconds → close 4408.
5. A connection's frames are answered in their order, each once what it asked is written: its write
   is queued in the database's thread (in the frames' order) as the frame is taken, and the next frame
   is taken without waiting for that write, up to ``UNANSWERED_FRAMES`` frames and ``UNANSWERED_BYTES``
   bytes not yet answered. So the writes of frames sent back to back share a group commit, and an
   ``accepted``'s write does not hold up the result behind it; an ``ack`` still only ever follows the
   commit of what it acks.

Meanwhile one poller task reads the database every ``poll_interval`` seconds (sooner when this
process queued something), queues the discoveries whose schedule is due (``ksocket.hub.schedulestore``),
sends new pending operations and asked-for cancels to connected slots, and disconnects (4401) a slot
whose token was revoked. An operation ``submit`` queues for a connected slot skips it: stored already
claimed (``Store.issue_operation``, one commit), it is sent at once, unless the slot has pending
operations queued before it (then the poller, woken, sends them all in order). A connection's
operations and cancels leave in the order they were claimed, whoever claimed them; one claimed for a
connection that has ended since goes out in its successor's backlog.

The connections and the poller use the database through a ``StoreThread``: every write is a
transaction with an fsync, in the database's own thread, so one slot's results never hold up
another's heartbeats; a result is acked once committed, the connection's later frames taken
meanwhile (step 5 above). Frames over ``PARSED_ON_LOOP`` bytes are parsed in a worker thread for
the same reason. The last heartbeat time and disconnections
are written without waiting for them. ``submit`` and ``cancel`` write through the database thread
too; the reads of callers in this process (``results``, ``operation``, ``store``) use a second
connection, on the loop.

What a connection holds
-----------------------
Before it authenticates, a connection holds a request head of at most 16 KiB (h11's limit), then
at most one first frame of ``AUTH_FRAME_LIMIT`` bytes (websockets' parser refuses a larger one from
its header, before its payload is read), and the rest of one socket read, for at most
``auth_timeout`` seconds twice (handshake, then first frame); there are at most
``max_startups.full`` such connections past their handshake request. The frame limit is set per
connection below ASGI (``ksocket.hub.asgi``); uvicorn's ``ws_max_size``, which an ASGI app cannot
change, is ``MAX_FRAME``, the limit once authenticated. The loop's "out of system resource" (no
descriptor left for ``accept``) is logged at ERROR by this module, not by asyncio's logger.
Nothing of what an agent sent outlives its handling: results go to the database, and the hub
keeps no history; records wait for their batch, at most ``RECORD_BATCH`` of them and
``RECORD_BATCH_BYTES`` of their frames, then go to the database too. The socket is read on only
once the frame read ahead has been taken (uvicorn pauses reading while a frame waits for the hub)
and frames are never compressed (one
compressed read of 256 KiB could inflate to hundreds of MiB), so a connection holds the frames
taken and not yet answered (less than ``UNANSWERED_BYTES``, then one more of any size), one more,
the rest of one socket read and the records of one batch: at most about three frames of
``MAX_FRAME`` bytes, ``UNANSWERED_BYTES`` and ``RECORD_BATCH_BYTES``, however many its agent sends.
(websockets' parser keeps the last frame read until the next one arrives: an idle agent's next
heartbeat.) What the hub sends waits while the socket's write buffer holds more than asyncio's
64 KiB high-water mark. uvicorn sends no WebSocket pings: liveness is the protocol's heartbeat.

Watching a hub
--------------
A ``HubObserver`` (none by default) hears every connection, message, bad frame and
disconnection as it happens, on the event loop; ``tests/hubtools.py`` builds its recording,
misbehaving hub on it. Callers in the same process queue work with ``submit`` / ``cancel`` and
read it back with ``results`` / ``operation``, through the database exactly as ``ksocket hub
run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from starlette.types import ASGIApp

from ksocket.hub.asgi import AUTH_FRAME_LIMIT, AgentSocket, Closed, Listener
from ksocket.hub.errors import HubError, UnknownOperation
from ksocket.hub.schedulestore import fire_due
from ksocket.hub.startups import DEFAULT_MAX_STARTUPS, StartupLimit, Startups
from ksocket.hub.store import MAX_SEQ, PENDING, OperationRecord, Store
from ksocket.hub.storethread import StoreThread
from ksocket.hub.tokens import new_session
from ksocket.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_HEARTBEAT_LOST,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SLOT_IN_USE,
    FROM_AGENT,
    MAX_FRAME,
    SUBPROTOCOLS,
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
    Operation,
    Progress,
    ProtocolError,
    Record,
    Refused,
    Rejected,
    RejectReason,
    Result,
    error_reply,
    parse,
    serialize,
    version_of,
)

__all__ = ["AUTH_FRAME_LIMIT", "ENDPOINT_PATH", "Hub", "HubObserver"]

logger = logging.getLogger(__name__)

ENDPOINT_PATH = "/api/ksocket/connect"
"""The path agents use by default; the hub accepts a connection on any path."""

UNKNOWN_OPERATION = ErrorCode.UNKNOWN_OPERATION
"""The code of the ``error`` frame that answers a result or record for an operation never sent to the slot."""

HEARTBEAT_SAVE_INTERVAL = 1.0
"""Seconds between two writes of one agent's last heartbeat time to the database."""

DEFAULT_SLOT_QUOTA = 1024**3
"""Bytes of results the hub stores per slot; beyond, a result is stored as a ``storage-full`` failure."""

PARSED_ON_LOOP = 64 * 1024
"""Frames larger than this many bytes are parsed in a worker thread: 16 MiB of JSON takes the loop
tens of milliseconds, and every other slot's heartbeats with it."""

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

CLOSE_GOING_AWAY = 1001
"""The close code of every connection when the hub stops (RFC 6455)."""

STOP_GRACE = 10.0
"""Seconds a stopping hub gives its connections' handlers and the web app's requests to finish."""

RECORD_BATCH = 500
"""Records stored in one transaction (one fsync) at most."""
RECORD_BATCH_BYTES = 4 * 1024 * 1024
"""Frame bytes of the records a connection holds for its batch, at most (then they are stored)."""
RECORD_LINGER = 0.002
"""Seconds the hub waits for another record before it stores (and acks) those it holds."""


UNANSWERED_FRAMES = 256
"""Frames of a connection taken and not yet answered, at most (then the hub reads no more until one is)."""
UNANSWERED_BYTES = 1024 * 1024
"""Bytes of such frames, at most (one larger frame waits alone for its answer)."""


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(eq=False)
class _Link:
    """One authenticated connection: the slot it holds and the session it carries."""

    slot: str
    agent: str
    session: str
    ws: AgentSocket
    peer: str
    version: int
    released: bool = False
    ready: bool = False
    """``authenticated`` and its backlog are sent: it is connected, and the poller may send it new operations."""
    heartbeat_saved: float = float("-inf")
    outgoing: deque[Operation | Cancel] = field(default_factory=deque)
    """Operations and cancels claimed for this connection, in the order claimed, not yet sent."""
    sending: bool = False
    """Whether a task is sending ``outgoing`` (one at a time)."""
    turns: asyncio.Queue[tuple[Coroutine[Any, Any, None], int] | None] = field(default_factory=asyncio.Queue)
    """What answers each frame taken (and the bytes it holds meanwhile), in the frames' order; None: no more."""
    unanswered: int = 0
    """Turns queued and not yet run."""
    unanswered_bytes: int = 0
    """The bytes they hold."""
    room: asyncio.Event = field(default_factory=_set_event)
    """Set while the unanswered frames and bytes are under ``UNANSWERED_FRAMES`` and ``UNANSWERED_BYTES``."""
    records: list[Record] = field(default_factory=list)
    """Records received and not yet stored (nor acked)."""
    record_bytes: int = 0
    """The size of their frames."""


class HubObserver:
    """What a hub reports as it happens; subclass it and override the calls you need.

    Each call is made on the hub's event loop, in the middle of the hub's handling of a
    connection: it must return at once and must not raise. A connection's calls come in the
    order of its frames: ``on_message`` with its ``authenticate``, ``on_connect`` once it holds
    the slot and has been sent ``authenticated`` and its backlog, ``on_message`` /
    ``on_bad_frame`` for every later frame, ``on_disconnect``.
    """

    def on_connect(self, slot: str, session: str) -> None:
        """An agent now holds ``slot``, with ``session``."""

    def on_message(self, slot: str, message: Message) -> None:
        """A message from the agent of ``slot``, once the hub has acted on it (the database
        holds a result it took when this is called) and before it answers; the first is the
        ``authenticate`` that named the slot's token, even if the slot is then refused."""

    def on_bad_frame(self, slot: str, frame: str | bytes, error: ProtocolError) -> None:
        """A frame from the agent of ``slot`` that the hub answers with an ``error`` frame."""

    def on_disconnect(self, slot: str, close_code: int | None) -> None:
        """A connection of ``slot`` ended, and no longer holds it: ``close_code`` is the code of the
        agent's close frame (the hub's own when the hub closed first), None without one."""


def _batch_full(link: _Link) -> bool:
    return len(link.records) >= RECORD_BATCH or link.record_bytes >= RECORD_BATCH_BYTES


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
    it ``wss``. Times are in seconds. ``observer`` hears what happens (``HubObserver``).
    ``max_startups`` bounds the unauthenticated connections (``ksocket.hub.startups``).
    ``web_app`` (an ASGI app, e.g. Starlette's) answers every HTTP request on the same address,
    and gets the lifespan protocol: started before the hub listens, shut down after it stops.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        heartbeat_interval: float = 60.0,
        heartbeat_timeout: float = 30.0,
        auth_timeout: float = 10.0,
        poll_interval: float = 0.05,
        observer: HubObserver | None = None,
        max_startups: StartupLimit = DEFAULT_MAX_STARTUPS,
        slot_quota: int | None = DEFAULT_SLOT_QUOTA,
        web_app: ASGIApp | None = None,
    ) -> None:
        self.db_path = db_path
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.auth_timeout = auth_timeout
        self.poll_interval = poll_interval
        self.slot_quota = slot_quota
        self._observer = observer or HubObserver()
        self._startups = Startups(max_startups)
        self._unauthenticated: set[AgentSocket] = set()
        self._refused_startups = 0
        self._loop_handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None
        self._links: dict[str, _Link] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._web_app = web_app
        self._listener: Listener | None = None
        self._poller: asyncio.Task[None] | None = None
        self._store: Store | None = None
        self._db: StoreThread | None = None

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._store = Store(self.db_path)
        self._store.reset_connections()
        self._db = await StoreThread.open(self.db_path)
        loop = asyncio.get_running_loop()
        self._loop_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._on_loop_exception)
        listener = Listener(self._handle, self._web_app, max_frame=MAX_FRAME, handshake_timeout=self.auth_timeout)
        try:
            sockets = await listener.start(self.host, self.port, self.ssl_context)
        except (OSError, HubError) as exc:
            await self._db.close()
            self._db = None
            self._store.close()
            self._store = None
            loop.set_exception_handler(self._loop_handler)
            if isinstance(exc, HubError):
                raise
            raise HubError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self._listener = listener
        self.port = sockets[0].getsockname()[1]
        self._poller = asyncio.create_task(self._poll(), name="ksocket-hub-poller")
        logger.info("hub listening on %s (database %s)", self.url, self.db_path)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if self._listener is not None:
            self._listener.close()
            for ws in [*self._unauthenticated, *(link.ws for link in self._links.values())]:
                self._spawn(ws.close(CLOSE_GOING_AWAY, "hub stopping"))  # its handler ends when it is sent
            await self._listener.stop(grace=STOP_GRACE)
            self._listener = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self._store is not None:
            self._store.close()
            self._store = None
        asyncio.get_running_loop().set_exception_handler(self._loop_handler)
        logger.info("hub stopped")

    @property
    def store(self) -> Store:
        """The hub's open database (between start and stop)."""
        if self._store is None:
            raise HubError("the hub is not running")
        return self._store

    @property
    def db(self) -> StoreThread:
        """The database as the hub's connections use it: off the event loop (between start and stop)."""
        if self._db is None:
            raise HubError("the hub is not running")
        return self._db

    @property
    def url(self) -> str:
        """Where agents connect: ``ws[s]://HOST:PORT/api/ksocket/connect``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.ssl_context else 'ws'}://{host}:{self.port}{ENDPOINT_PATH}"

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's own errors: running out of descriptors is the hub's to say, at ERROR; the rest as before."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            logger.error(
                "hub: cannot accept connections: %s (descriptor limit %d, %d connections waiting to authenticate)",
                exc.strerror or exc,
                soft,
                self._startups.pending,
            )
        elif self._loop_handler is not None:
            self._loop_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    # ------------------------------------------------------------------ one connection

    def _begin_startup(self, ws: AgentSocket) -> bool:
        """Counts the newcomer as unauthenticated; False when there are too many."""
        if not self._startups.begin():
            if self._refused_startups == 0:
                logger.warning(
                    "refusing new connections: %d are waiting to authenticate (max-startups %s)",
                    self._startups.pending,
                    self._startups.limit,
                )
            self._refused_startups += 1
            return False
        if self._refused_startups:
            logger.info("accepting connections again (%d refused)", self._refused_startups)
            self._refused_startups = 0
        self._unauthenticated.add(ws)
        return True

    def _end_startup(self, ws: AgentSocket) -> None:
        """The connection no longer counts as unauthenticated: it authenticated or closed (idempotent)."""
        if ws in self._unauthenticated:
            self._unauthenticated.discard(ws)
            self._startups.end()

    def _select_subprotocol(self, ws: AgentSocket) -> str | None:
        """The newest ksocket subprotocol offered, or None (and a log line) for a client that offers none."""
        for name in SUBPROTOCOLS:
            if name in ws.offered:
                return name
        logger.info(
            "connection from %s refused: it does not offer subprotocol %s (offered: %s)",
            ws.peer,
            " or ".join(SUBPROTOCOLS),
            ", ".join(ws.offered) or "none",
        )
        return None

    async def _handle(self, ws: AgentSocket) -> None:
        """One WebSocket connection, from its handshake to its end."""
        if not self._begin_startup(ws):
            await ws.refuse(503, "too many connections waiting to authenticate; try again later\n")
            return
        try:
            subprotocol = self._select_subprotocol(ws)
            if subprotocol is None:
                await ws.refuse(400, f"the hub speaks subprotocol {' or '.join(SUBPROTOCOLS)} only\n")
                return
            await ws.accept(subprotocol)
            auth = await self._first_frame(ws)
            if auth is not None:
                await self._serve(ws, auth)
        finally:
            self._end_startup(ws)

    async def _serve(self, ws: AgentSocket, auth: Authenticate) -> None:
        """An agent's connection from its ``authenticate`` on."""
        admitted = await self._admit(ws, auth)
        if admitted is None:
            return
        link, resumed, backlog = admitted
        self._end_startup(ws)
        ws.lift_frame_limit()  # read only when the next frame begins: none has yet
        try:
            await ws.send(serialize(Authenticated(session=link.session, resumed=resumed)))
            for op in backlog:
                await ws.send(serialize(op.to_message()))
                if op.cancel_requested is not None:
                    await ws.send(serialize(Cancel(id=op.id)))
            if backlog:
                logger.info("slot %s: sent %d operation(s) without a result", link.slot, len(backlog))
            link.ready = True
            self._observer.on_connect(link.slot, link.session)
            await self._converse(link)
        except Closed as exc:
            self._closed(link, exc)
        finally:
            if self._db is not None and link.records:  # kept; the agent sends them again, as they are unacked
                self.db.post(Store.add_records, link.slot, link.agent, link.records, quota=self.slot_quota)
            self._release(link)
            self._observer.on_disconnect(link.slot, ws.close_code)

    async def _first_frame(self, ws: AgentSocket) -> Authenticate | None:
        peer = ws.peer
        try:
            frame = await asyncio.wait_for(ws.recv(), self.auth_timeout)
        except TimeoutError:
            logger.info("connection from %s closed: no authenticate within %g s", peer, self.auth_timeout)
            await ws.close(CLOSE_PROTOCOL_ERROR, "no authenticate in time")
            return None
        except Closed:
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
            except Closed:
                return None
            await ws.close(CLOSE_PROTOCOL_ERROR, "the first frame must be authenticate")
            return None
        return message

    async def _reject(self, ws: AgentSocket, reason: RejectReason, text: str, code: int) -> None:
        logger.info("connection from %s rejected: %s (%s)", ws.peer, reason, text)
        try:
            await ws.send(serialize(Rejected(reason=reason, message=text)))
        except Closed:
            return
        await ws.close(code, reason)

    async def _admit(self, ws: AgentSocket, auth: Authenticate) -> tuple[_Link, bool, list[OperationRecord]] | None:
        """Checks the authenticate frame; on success the link holds its slot when this returns.

        The database is read first; from the check of the slot's holder to taking the slot
        nothing yields to the event loop, so two connections never both take one slot. The
        poller leaves the link alone until its backlog is sent (``ready``), so it never sends an
        operation that is also in the backlog.
        """
        version = version_of(ws.subprotocol)
        if auth.protocol != version:
            text = f"this link speaks protocol version {version} (subprotocol {ws.subprotocol}), not {auth.protocol}"
            await self._reject(ws, ErrorCode.UNSUPPORTED_PROTOCOL, text, CLOSE_PROTOCOL_ERROR)
            return None
        db = self.db
        slot = await db.call(Store.slot_for_token, auth.token)
        if slot is None:
            await self._reject(ws, ErrorCode.INVALID_TOKEN, "unknown or revoked token", CLOSE_AUTH_FAILED)
            return None
        last = await db.call(Store.agent, slot)
        self._observer.on_message(slot, auth)
        holder = self._links.get(slot)
        if holder is not None:
            if auth.session != holder.session or auth.agent != holder.agent:
                text = f"slot {slot} is held by a connected agent ({holder.agent})"
                await self._reject(ws, ErrorCode.SLOT_IN_USE, text, CLOSE_SLOT_IN_USE)
                return None
            logger.info(
                "slot %s: session %s resumed from %s; closing its old connection", slot, holder.session, ws.peer
            )
            self._release(holder)
            self._spawn(holder.ws.close(CLOSE_SLOT_IN_USE, "replaced by a resumed connection"))
            session, resumed = holder.session, True
        else:
            resumable = None if last is None else (last.session, last.agent)
            resumed = auth.session is not None and resumable == (auth.session, auth.agent)
            session = auth.session if resumed and auth.session is not None else new_session()
        link = _Link(slot=slot, agent=auth.agent, session=session, ws=ws, peer=ws.peer, version=auth.protocol)
        self._links[slot] = link
        db.post(Store.agent_connected, slot, agent=auth.agent, version=auth.version, name=auth.name, session=session)
        backlog = await db.call(Store.claim_backlog, slot)
        logger.info(
            "slot %s: agent %s (%s %s) connected from %s, session %s (%s)",
            slot,
            auth.agent,
            auth.name,
            auth.version,
            ws.peer,
            session,
            "resumed" if resumed else "new",
        )
        return link, resumed, backlog

    async def _converse(self, link: _Link) -> None:
        """Takes the link's frames until it closes or goes quiet for too long, while a task of its own sends
        their answers, in order, each once what it answers is written (:meth:`_answer`); then lets that task
        answer every frame taken, the connection closed or not (the observer hears of each)."""
        answering = asyncio.create_task(self._answer(link))
        try:
            await self._take_frames(link)
        finally:
            link.turns.put_nowait(None)
            await answering

    async def _take_frames(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        limit = self.heartbeat_interval + self.heartbeat_timeout
        heard = loop.time()
        while True:
            await link.room.wait()  # bounds what the answers still to send hold
            remaining = heard + limit - loop.time()
            if remaining <= 0:
                logger.info("slot %s: nothing heard from agent %s for %g s; dropping it", link.slot, link.agent, limit)
                self._release(link)
                await link.ws.close(CLOSE_HEARTBEAT_LOST, "heartbeat lost")
                return
            try:
                # holding records, wait for more only briefly (cancelling recv loses nothing)
                frame = await asyncio.wait_for(
                    link.ws.recv(), min(remaining, RECORD_LINGER) if link.records else remaining
                )
            except TimeoutError:
                self._flush_records(link)
                continue
            heard = loop.time()
            await self._on_frame(link, frame)
            del frame  # an idle connection keeps nothing of its last frame (up to MAX_FRAME)

    async def _answer(self, link: _Link) -> None:
        """Runs the link's turns in the order of its frames until told to stop (None); a failure ends the
        connection without a close frame, as one out of the handler does (uvicorn closes the socket)."""
        try:
            while (turn := await link.turns.get()) is not None:
                reply, weight = turn
                await reply
                link.unanswered -= 1
                link.unanswered_bytes -= weight
                if link.unanswered < UNANSWERED_FRAMES and link.unanswered_bytes < UNANSWERED_BYTES:
                    link.room.set()
        except Exception:
            link.room.set()
            link.ws.transport.close()  # the frames' reading ends, and the handler with this error
            raise
        finally:
            while not link.turns.empty():  # a stopping hub's: never to be run
                left = link.turns.get_nowait()
                if left is not None:
                    left[0].close()

    def _take_turn(self, link: _Link, reply: Coroutine[Any, Any, None], weight: int) -> None:
        """Queues ``reply`` to run once the answers to every frame taken before are sent; ``weight``: the bytes
        it holds meanwhile."""
        link.unanswered += 1
        link.unanswered_bytes += weight
        if link.unanswered >= UNANSWERED_FRAMES or link.unanswered_bytes >= UNANSWERED_BYTES:
            link.room.clear()
        link.turns.put_nowait((reply, weight))

    def _closed(self, link: _Link, exc: Closed) -> None:
        code = exc.code
        if self._links.get(link.slot) is link:
            how = f"close code {code}" if code is not None else "without a close frame"
            logger.info("slot %s: agent %s disconnected (%s)", link.slot, link.agent, how)

    def _release(self, link: _Link) -> None:
        """The link no longer holds its slot (idempotent)."""
        if link.released:
            return
        link.released = True
        if self._links.get(link.slot) is link:
            del self._links[link.slot]
            if self._db is not None:
                self._db.post(Store.agent_disconnected, link.slot, link.session)

    async def _send(self, link: _Link, message: Message) -> bool:
        try:
            await link.ws.send(serialize(message))
        except Closed:
            return False
        return True

    async def _on_frame(self, link: _Link, frame: str | bytes) -> None:
        """Does what the frame asks (its write queued in the database's thread) and queues its turn to answer."""
        try:
            message = await asyncio.to_thread(_decode, frame) if len(frame) > PARSED_ON_LOOP else _decode(frame)
            if not isinstance(message, Record) or _batch_full(link):
                self._flush_records(link)
            link.record_bytes += len(frame) if isinstance(message, Record) else 0
            reply = self._act(link, message)
        except ProtocolError as exc:
            reply = self._refuse_frame(link, frame, exc)
        self._take_turn(link, reply, len(frame))

    async def _refuse_frame(self, link: _Link, frame: str | bytes, exc: ProtocolError) -> None:
        self._observer.on_bad_frame(link.slot, frame, exc)
        safe = _safe(exc)
        logger.info("slot %s: bad frame from agent %s: %s", link.slot, link.agent, safe)
        await self._send(link, error_reply(safe))

    async def _reply(self, link: _Link, message: Message, *answers: Message) -> None:
        """The observer hears ``message`` (acted on), then the answers go out."""
        self._observer.on_message(link.slot, message)
        for answer in answers:
            await self._send(link, answer)

    def _act(self, link: _Link, message: Message) -> Coroutine[Any, Any, None]:
        """Does what ``message`` asks of the hub (a write is queued in the database's thread); returns its turn:
        what answers it once written. BadMessage for a message an agent has no business sending now."""
        if isinstance(message, Heartbeat):
            return self._reply(link, message, self._on_heartbeat(link, message))
        if isinstance(message, Result):
            stored = self.db.queue(Store.add_result, link.slot, link.agent, message, quota=self.slot_quota)
            return self._answer_result(link, message, stored)
        if isinstance(message, Record) and link.version >= 2:
            return self._reply(link, message, *self._on_record(link, message))
        if isinstance(message, Accepted | Refused | Progress):
            return self._answer_operation_state(link, message, self._write_operation_state(link, message))
        if isinstance(message, ErrorMessage):
            logger.warning("slot %s: agent %s reports %s: %s", link.slot, link.agent, message.code, message.message)
        elif isinstance(message, Authenticate):
            raise BadMessage(f"{BadMessage.code}: already authenticated; authenticate is only the first frame")
        elif isinstance(message, Record):
            raise BadMessage(f'{BadMessage.code}: "record" is a message of protocol version 2, not {link.version}')
        else:
            assert not isinstance(message, FROM_AGENT)
            raise BadMessage(f'{BadMessage.code}: "{message.TYPE}" is a message of the hub, not of an agent')
        return self._reply(link, message)

    def _on_heartbeat(self, link: _Link, heartbeat: Heartbeat) -> HeartbeatAck:
        now = asyncio.get_running_loop().time()
        if now - link.heartbeat_saved >= HEARTBEAT_SAVE_INTERVAL:  # not a durable write per frame; never awaited
            link.heartbeat_saved = now
            self.db.post(Store.agent_heartbeat, link.slot, link.session)
        return HeartbeatAck(n=heartbeat.n)

    def _write_operation_state(self, link: _Link, message: Accepted | Refused | Progress) -> asyncio.Future[bool]:
        """Queues the write of the operation's new state (UnknownOperation if it was never sent to this slot)."""
        if isinstance(message, Accepted):
            return self.db.queue(Store.mark_accepted, link.slot, message.id)
        if isinstance(message, Refused):
            return self.db.queue(Store.mark_refused, link.slot, message.id, message.reason, message.message)
        return self.db.queue(Store.mark_progress, link.slot, message.id, message.done, message.total)

    async def _answer_operation_state(
        self, link: _Link, message: Accepted | Refused | Progress, written: asyncio.Future[bool]
    ) -> None:
        """Nothing to answer once the new state is written; an ``unknown-operation`` error if the operation was
        never sent to this slot."""
        try:
            changed = await written
        except UnknownOperation as exc:
            await self._reply(link, message, self._unknown(link, message, exc))
            return
        if isinstance(message, Accepted) and not changed:
            logger.debug("slot %s: accepted for operation %s, which is not waiting", link.slot, message.id)
        elif isinstance(message, Refused) and changed:
            logger.info("slot %s: operation %s refused: %s: %s", link.slot, message.id, message.reason, message.message)
        await self._reply(link, message)

    def _unknown(self, link: _Link, message: Message, exc: UnknownOperation) -> ErrorMessage:
        logger.info("slot %s: %s from agent %s refused: %s", link.slot, message.TYPE, link.agent, exc)
        return ErrorMessage(code=UNKNOWN_OPERATION, message=f"{message.TYPE} not taken: {exc}")

    async def _answer_result(self, link: _Link, result: Result, stored: asyncio.Future[bool]) -> None:
        """The ``ack``, once the result is committed."""
        try:
            new = await stored
        except UnknownOperation as exc:  # not stored, and never will be: the agent need not send it again
            await self._reply(link, result, self._unknown(link, result, exc), Ack(seq=result.seq))
            return
        except HubError as exc:
            await self._reply(link, result, ErrorMessage(code=BadMessage.code, message=str(exc)))
            return
        if new:
            outcome = "ok" if result.ok else f"failed: {result.error.code if result.error else '?'}"
            logger.info("slot %s: result seq %d for operation %s (%s)", link.slot, result.seq, result.id, outcome)
        else:
            logger.debug("slot %s: result seq %d already received; acking it again", link.slot, result.seq)
        await self._reply(link, result, Ack(seq=result.seq))

    def _on_record(self, link: _Link, record: Record) -> list[ErrorMessage]:
        """Holds the record for the next batch (see :meth:`_flush_records`)."""
        if record.seq > MAX_SEQ:
            return [ErrorMessage(code=BadMessage.code, message=f"seq {record.seq} is larger than the hub can store")]
        link.records.append(record)
        return []

    def _flush_records(self, link: _Link) -> None:
        """Queues the records the link holds for one transaction (in the database's thread), and the turn that
        acks them once committed (:meth:`_answer_records`)."""
        records, link.records = link.records, []
        weight, link.record_bytes = link.record_bytes, 0
        if records:
            stored = self.db.queue(Store.add_records, link.slot, link.agent, records, quota=self.slot_quota)
            self._take_turn(link, self._answer_records(link, records, stored), weight)

    async def _answer_records(
        self, link: _Link, records: list[Record], stored: asyncio.Future[tuple[int, set[str]]]
    ) -> None:
        """One ack for the records stored together (acks are cumulative); records of an operation never sent
        to the slot are not stored, each such operation answered ``unknown-operation``, and acked all the same,
        as such a result is."""
        try:
            new, unknown = await stored
        except HubError as exc:
            await self._send(link, ErrorMessage(code=BadMessage.code, message=str(exc)))
            return
        if new < len(records):
            logger.debug(
                "slot %s: %d records not stored (repeated, unknown or past the quota)", link.slot, len(records) - new
            )
        for op_id in sorted(unknown):
            await self._send(
                link,
                self._unknown(
                    link, records[0], UnknownOperation(f"operation {op_id!r} was never sent to slot {link.slot}")
                ),
            )
        await self._send(link, Ack(seq=max(record.seq for record in records)))

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
        slots = [slot for slot, link in self._links.items() if link.ready]
        if not slots:
            return
        db = self.db
        for slot in await db.call(Store.revoked_among, slots):
            link = self._links.get(slot)
            if link is None:
                continue
            logger.info("slot %s: token revoked; disconnecting agent %s", slot, link.agent)
            self._release(link)
            self._spawn(link.ws.close(CLOSE_AUTH_FAILED, "token revoked"))
        await db.call(fire_due, slots)
        await self._claim(Store.claim_pending, OperationRecord.to_message)
        await self._claim(Store.claim_cancels, lambda op: Cancel(id=op.id))

    async def _claim(
        self,
        claim: Callable[[Store, list[str]], list[OperationRecord]],
        frame: Callable[[OperationRecord], Operation | Cancel],
    ) -> None:
        """Claims for the connected slots (their links taken in the step that queues the claim) and sends."""
        links = {slot: link for slot, link in self._links.items() if link.ready}
        if links:
            for op in await self.db.call(claim, list(links)):
                if self._queue_frames(links[op.slot], [frame(op)]):
                    self._spawn(self._send_queued(links[op.slot]))

    def _queue_frames(self, link: _Link, messages: Iterable[Operation | Cancel]) -> bool:
        """Queues what was just claimed for ``link`` after what was claimed for it before; True when the caller
        is to send them (:meth:`_send_queued`), no one else being at it.

        Called as soon as the claim's answer is back, with no await in between: answers come back in the order
        of the claims, so frames leave in that order too, whoever claimed them (the poller, ``submit``). If the
        link no longer holds its slot, its successor's backlog (claimed after) holds what was claimed for it."""
        if self._links.get(link.slot) is not link:
            return False
        link.outgoing.extend(messages)
        if link.sending:
            return False
        link.sending = True
        return True

    async def _send_queued(self, link: _Link) -> None:
        """Sends the link's queued frames until none is left (the one sender of them at a time); cancelled
        half-way (a ``submit``'s caller gave up), it hands what is left to a task of its own."""
        handed_over = False
        try:
            while link.outgoing:
                message = link.outgoing[0]
                sent = await self._send(link, message)  # cancelled, it has written nothing: it waits before it writes
                link.outgoing.popleft()
                if not sent:
                    continue
                if isinstance(message, Operation):
                    logger.info("slot %s: sent operation %s (%s)", link.slot, message.id, message.name)
                else:
                    logger.info("slot %s: sent cancel of operation %s", link.slot, message.id)
        except asyncio.CancelledError:
            handed_over = bool(link.outgoing)
            if handed_over:
                self._spawn(self._send_queued(link))
            raise
        finally:
            if not handed_over:
                link.sending = False

    # ------------------------------------------------------------------ the API for callers

    def connected(self, slot: str) -> bool:
        """Whether an authenticated agent holds ``slot`` now (told so, and sent its backlog)."""
        return self.session(slot) is not None

    def session(self, slot: str) -> str | None:
        """The session id of the connected agent holding ``slot``, or None."""
        link = self._links.get(slot)
        return link.session if link is not None and link.ready else None

    async def submit(self, slot: str, name: str, params: JSONObject | None = None, id: str | None = None) -> str:
        """Queues operation ``name`` for ``slot`` in the database, as ``ksocket hub run`` does; returns its id.

        It is sent at once if an agent holds the slot, else when one connects. With the slot's agent connected,
        the operation is stored already claimed and sent straight away (by this call, unless frames claimed
        before it are being sent: it then leaves after them), unless operations queued before it are still
        pending: then the poller, woken, sends them and it in order.
        """
        link = self._links.get(slot)
        if link is None or not link.ready:
            op_id = await self.db.call(Store.add_operation, slot, name, params, id)
            self._wake.set()
            return op_id
        op = await self.db.call(Store.issue_operation, slot, name, params, id)
        if op.state == PENDING:
            self._wake.set()
        elif self._queue_frames(link, [op.to_message()]):
            await self._send_queued(link)
        return op.id

    async def cancel(self, op_id: str) -> str:
        """Asks for operation ``op_id`` to be cancelled; returns its state afterwards
        (``cancelled`` if it had not been sent yet; else a ``cancel`` frame goes out)."""
        state = await self.db.call(Store.request_cancel, op_id)
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

    def records(self, op_id: str) -> list[Record]:
        """Every record stored for operation ``op_id`` from the slot it was sent to, in seq order."""
        return [stored.to_message() for stored in self.store.records(op_id)]
