"""The hub's server: agents dial in over WebSocket, the hub hands them operations from its database.

``Hub`` is the whole controller: ``ksocket hub serve`` runs one until it is stopped, and tests
run one in-process on port 0 (``async with Hub(db_path) as hub:``). Every frame goes through
``ksocket.protocol``; the database (``ksocket.hub.store``) is the only state that outlives a
connection, and the only channel by which other processes (``ksocket hub run``) give it work.

One connection, from handshake to close
---------------------------------------
1. The handshake selects the subprotocol ``ksocket.v2`` when offered, else ``ksocket.v1``; a
   client that offers neither gets HTTP 400.
2. The first frame must be ``authenticate`` within ``auth_timeout`` seconds, else close 4400
   (a bad or other first frame gets an ``error`` frame first). Then, in this order:
   protocol version ≠ the selected subprotocol's → ``rejected`` unsupported-protocol + close 4400; unknown or revoked
   token → ``rejected`` invalid-token + close 4401; slot held by a connected agent →
   ``rejected`` slot-in-use + close 4409, unless the newcomer presents the holder's session and
   agent id: then the holder is closed (4409) and the newcomer takes its place, ``resumed``.
   With the slot free, a session equal to the slot's last one (same agent id) is resumed too;
   anything else gets a fresh session id.
3. ``authenticated``, then every operation of the slot without a result, same ids (a ``cancel``
   follows those whose cancel was asked for).
4. Frames: ``heartbeat`` → ``heartbeat-ack``; ``result`` → stored, ``ack`` with its seq (a
   repeated (agent, seq) is acked again, stored once); ``record`` (version 2 only) → stored
   likewise, by the same (agent, seq) count, in batches: records that come one right after another
   (within ``RECORD_LINGER``, up to ``RECORD_BATCH``) are stored in one transaction, then one ``ack``
   for the highest seq answers them all (before any other frame is handled, so a result is stored
   after its records); ``accepted`` / ``refused`` /
   ``progress`` → the operation's row; a bad frame → ``error`` (the link stays). Nothing heard
   for ``heartbeat_interval + heartbeat_timeout`` seconds → close 4408.

Meanwhile one poller task reads the database every ``poll_interval`` seconds (sooner when this
process queued something) and sends new pending operations and asked-for cancels to connected
slots, and disconnects (4401) a slot whose token was revoked.

The database is used synchronously from the event loop: every call is one short transaction
on a local file, and the loop is this hub's only thread.

What a connection holds
-----------------------
Nothing of what an agent sent outlives its handling: results go to the database, and the hub
keeps no history; records wait for their batch, at most ``RECORD_BATCH`` of them and
``RECORD_BATCH_BYTES`` of their frames, then go to the database too. The socket is read on only
once the frame read ahead has been taken (``max_queue=0``) and frames are never compressed (one
compressed read of 256 KiB could inflate to hundreds of MiB), so a connection holds the frame
being handled, one more, the rest of one socket read and the records of one batch: at most about
three frames of ``MAX_FRAME`` bytes and ``RECORD_BATCH_BYTES``, however many its agent sends.
(websockets' parser keeps the last frame read until the next one arrives: an idle agent's next
heartbeat.) What the hub sends waits behind websockets' 32 KiB write limit.

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
import logging
import os
import ssl
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.typing import Subprotocol

from ksocket.hub.errors import HubError, UnknownOperation
from ksocket.hub.store import MAX_SEQ, OperationRecord, Store
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

__all__ = ["ENDPOINT_PATH", "Hub", "HubObserver"]

logger = logging.getLogger(__name__)

ENDPOINT_PATH = "/api/ksocket/connect"
"""The path agents use by default; the hub accepts a connection on any path."""

HEARTBEAT_SAVE_INTERVAL = 1.0
"""Seconds between two writes of one agent's last heartbeat time to the database."""

RECORD_BATCH = 500
"""Records stored in one transaction (one fsync) at most."""
RECORD_BATCH_BYTES = 4 * 1024 * 1024
"""Frame bytes of the records a connection holds for its batch, at most (then they are stored)."""
RECORD_LINGER = 0.002
"""Seconds the hub waits for another record before it stores (and acks) those it holds."""


@dataclass(eq=False)
class _Link:
    """One authenticated connection: the slot it holds and the session it carries."""

    slot: str
    agent: str
    session: str
    ws: ServerConnection
    peer: str
    version: int
    released: bool = False
    heartbeat_saved: float = float("-inf")
    records: list[Record] = field(default_factory=list)
    """Records received and not yet stored (nor acked)."""
    record_bytes: int = 0
    """The size of their frames."""


class HubObserver:
    """What a hub reports as it happens; subclass it and override the calls you need.

    Each call is made on the hub's event loop, in the middle of the hub's handling of a
    connection: it must return at once and must not raise. A connection's calls come in the
    order of its frames: ``on_message`` with its ``authenticate``, ``on_connect`` once it holds
    the slot, ``on_message`` / ``on_bad_frame`` for every later frame, ``on_disconnect``.
    """

    def on_connect(self, slot: str, session: str) -> None:
        """An agent now holds ``slot``, with ``session``."""

    def on_message(self, slot: str, message: Message) -> None:
        """A message from the agent of ``slot``, once the hub has acted on it (the database
        holds a result when this is called) and before it answers; the first is the
        ``authenticate`` that named the slot's token, even if the slot is then refused."""

    def on_bad_frame(self, slot: str, frame: str | bytes, error: ProtocolError) -> None:
        """A frame from the agent of ``slot`` that the hub answers with an ``error`` frame."""

    def on_disconnect(self, slot: str, close_code: int | None) -> None:
        """A connection of ``slot`` ended, and no longer holds it: ``close_code`` is the code of the
        agent's close frame (an echo of the hub's when the hub closed first), None without one."""


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


def _batch_full(link: _Link) -> bool:
    return len(link.records) >= RECORD_BATCH or link.record_bytes >= RECORD_BATCH_BYTES


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
    it ``wss``. Times are in seconds. ``observer`` hears what happens (``HubObserver``).
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
        observer: HubObserver | None = None,
    ) -> None:
        self.db_path = db_path
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.auth_timeout = auth_timeout
        self.poll_interval = poll_interval
        self._observer = observer or HubObserver()
        self._links: dict[str, _Link] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self._store: Store | None = None

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
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                ssl=self.ssl_context,
                subprotocols=[Subprotocol(name) for name in SUBPROTOCOLS],
                select_subprotocol=self._select_subprotocol,
                ping_interval=None,  # liveness is the protocol's heartbeat, not WebSocket pings
                max_size=MAX_FRAME,
                max_queue=0,  # read on only once the frame read ahead is taken: memory bounded in bytes
                compression=None,  # agents never offer it, and one compressed read could inflate 1000-fold
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
        """The newest ksocket subprotocol offered, or HTTP 400 for a client that offers none."""
        for name in SUBPROTOCOLS:
            if name in offered:
                return Subprotocol(name)
        known = " or ".join(SUBPROTOCOLS)
        logger.info(
            "connection from %s refused: it does not offer subprotocol %s (offered: %s)",
            _peer(ws),
            known,
            ", ".join(offered) or "none",
        )
        raise NegotiationError(f"the hub speaks subprotocol {known} only")

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        if version_of(ws.subprotocol) is None:  # websockets refuses such handshakes already; be sure anyway
            await ws.close(CLOSE_PROTOCOL_ERROR, f"subprotocol {' or '.join(SUBPROTOCOLS)} required")
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
            if self._store is not None:  # what arrived is kept; the agent sends it again, as it is unacked
                self._store_records(link)
            self._release(link)
            close = ws.protocol.close_rcvd
            self._observer.on_disconnect(link.slot, close.code if close is not None else None)

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
        version = version_of(ws.subprotocol)
        if auth.protocol != version:
            text = f"this link speaks protocol version {version} (subprotocol {ws.subprotocol}), not {auth.protocol}"
            await self._reject(ws, peer, ErrorCode.UNSUPPORTED_PROTOCOL, text, CLOSE_PROTOCOL_ERROR)
            return None
        store = self.store
        slot = store.slot_for_token(auth.token)
        if slot is None:
            await self._reject(ws, peer, ErrorCode.INVALID_TOKEN, "unknown or revoked token", CLOSE_AUTH_FAILED)
            return None
        self._observer.on_message(slot, auth)
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
        link = _Link(slot=slot, agent=auth.agent, session=session, ws=ws, peer=peer, version=auth.protocol)
        self._links[slot] = link
        store.agent_connected(slot, agent=auth.agent, version=auth.version, name=auth.name, session=session)
        self._observer.on_connect(slot, session)
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
                # holding records, wait for more only briefly (cancelling recv loses nothing)
                frame = await asyncio.wait_for(
                    link.ws.recv(), min(remaining, RECORD_LINGER) if link.records else remaining
                )
            except TimeoutError:
                await self._flush_records(link)
                continue
            heard = loop.time()
            await self._on_frame(link, frame)
            del frame  # an idle connection keeps nothing of its last frame (up to MAX_FRAME)

    def _closed(self, link: _Link, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else None
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
            if self._store is not None:
                self._store.agent_disconnected(link.slot, link.session)

    async def _send(self, link: _Link, message: Message) -> bool:
        try:
            await link.ws.send(serialize(message))
        except ConnectionClosed:
            return False
        return True

    async def _on_frame(self, link: _Link, frame: str | bytes) -> None:
        try:
            message = _decode(frame)
            if not isinstance(message, Record) or _batch_full(link):
                await self._flush_records(link)
            link.record_bytes += len(frame) if isinstance(message, Record) else 0
            answer = self._act(link, message)
        except ProtocolError as exc:
            self._observer.on_bad_frame(link.slot, frame, exc)
            safe = _safe(exc)
            logger.info("slot %s: bad frame from agent %s: %s", link.slot, link.agent, safe)
            await self._send(link, error_reply(safe))
            return
        self._observer.on_message(link.slot, message)
        if answer is not None:
            await self._send(link, answer)

    def _act(self, link: _Link, message: Message) -> Message | None:
        """Does what ``message`` asks of the hub; returns the answer to send, if any.
        BadMessage for a message an agent has no business sending now."""
        if isinstance(message, Heartbeat):
            return self._on_heartbeat(link, message)
        if isinstance(message, Result):
            return self._on_result(link, message)
        if isinstance(message, Record) and link.version >= 2:
            return self._on_record(link, message)
        if isinstance(message, Accepted | Refused | Progress):
            self._on_operation_state(link, message)
        elif isinstance(message, ErrorMessage):
            logger.warning("slot %s: agent %s reports %s: %s", link.slot, link.agent, message.code, message.message)
        elif isinstance(message, Authenticate):
            raise BadMessage(f"{BadMessage.code}: already authenticated; authenticate is only the first frame")
        elif isinstance(message, Record):
            raise BadMessage(f'{BadMessage.code}: "record" is a message of protocol version 2, not {link.version}')
        else:
            assert not isinstance(message, FROM_AGENT)
            raise BadMessage(f'{BadMessage.code}: "{message.TYPE}" is a message of the hub, not of an agent')
        return None

    def _on_heartbeat(self, link: _Link, heartbeat: Heartbeat) -> HeartbeatAck:
        now = asyncio.get_running_loop().time()
        if now - link.heartbeat_saved >= HEARTBEAT_SAVE_INTERVAL:  # a durable write per frame stalls the loop
            link.heartbeat_saved = now
            self.store.agent_heartbeat(link.slot, link.session)
        return HeartbeatAck(n=heartbeat.n)

    def _on_operation_state(self, link: _Link, message: Accepted | Refused | Progress) -> None:
        store = self.store
        if isinstance(message, Accepted):
            if not store.mark_accepted(link.slot, message.id):
                logger.debug("slot %s: accepted for operation %s, which is not waiting", link.slot, message.id)
        elif isinstance(message, Refused):
            if store.mark_refused(link.slot, message.id, message.reason, message.message):
                logger.info(
                    "slot %s: operation %s refused: %s: %s", link.slot, message.id, message.reason, message.message
                )
        else:
            store.mark_progress(link.slot, message.id, message.done, message.total)

    def _on_result(self, link: _Link, result: Result) -> Ack | ErrorMessage:
        try:
            new = self.store.add_result(link.slot, link.agent, result)
        except HubError as exc:
            return ErrorMessage(code=BadMessage.code, message=str(exc))
        if new:
            outcome = "ok" if result.ok else f"failed: {result.error.code if result.error else '?'}"
            logger.info("slot %s: result seq %d for operation %s (%s)", link.slot, result.seq, result.id, outcome)
        else:
            logger.debug("slot %s: result seq %d already received; acking it again", link.slot, result.seq)
        return Ack(seq=result.seq)

    def _on_record(self, link: _Link, record: Record) -> ErrorMessage | None:
        """Holds the record for the next batch (see :meth:`_flush_records`)."""
        if record.seq > MAX_SEQ:
            return ErrorMessage(code=BadMessage.code, message=f"seq {record.seq} is larger than the hub can store")
        link.records.append(record)
        return None

    def _store_records(self, link: _Link) -> int | None:
        """Stores the records the link holds, in one transaction; returns the highest seq, None if none."""
        records, link.records = link.records, []
        link.record_bytes = 0
        if not records:
            return None
        new = self.store.add_records(link.slot, link.agent, records)
        if new < len(records):
            logger.debug("slot %s: %d records already received", link.slot, len(records) - new)
        return max(record.seq for record in records)

    async def _flush_records(self, link: _Link) -> None:
        """Stores the records the link holds, then acks them (one ack: acks are cumulative)."""
        seq = self._store_records(link)
        if seq is not None:
            await self._send(link, Ack(seq=seq))

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

    # ------------------------------------------------------------------ the API for callers

    def connected(self, slot: str) -> bool:
        """Whether an authenticated agent holds ``slot`` now."""
        return slot in self._links

    def session(self, slot: str) -> str | None:
        """The session id of the connection holding ``slot``, or None."""
        link = self._links.get(slot)
        return link.session if link is not None else None

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

    def records(self, op_id: str) -> list[Record]:
        """Every record stored for operation ``op_id`` from the slot it was sent to, in seq order."""
        return [stored.to_message() for stored in self.store.records(op_id)]
