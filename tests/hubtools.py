"""Helpers for tests that talk to the reference hub: a recording hub, a raw protocol client and a few shortcuts.

``RecordingHub`` is the reference hub with what tests of the agent need and a production hub must
not have: a history of every frame each slot's agents sent, waits for them, and knobs that make it
misbehave. ``RawClient`` is a bare WebSocket client that speaks ``ksocket.protocol`` frame by
frame, with none of the agent's machinery: the tests decide every frame it sends.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import os
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ksocket.hub.asgi import Closed
from ksocket.hub.server import Hub, HubObserver, _Link
from ksocket.hub.store import Store
from ksocket.protocol import (
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    Ack,
    Authenticate,
    Authenticated,
    Heartbeat,
    HeartbeatAck,
    Message,
    Operation,
    ProtocolError,
    Rejected,
    Result,
    parse,
    serialize,
    version_of,
)
from tests.timing import scaled

M = TypeVar("M", bound=Message)
T = TypeVar("T")

logger = logging.getLogger(__name__)

TIMEOUT = scaled(5.0)
"""How long a test waits for something that should happen (it usually takes milliseconds)."""
QUIET = 0.3
"""How long a test listens to be sure that nothing comes."""


class BadFrame(NamedTuple):
    """A frame from an agent that the hub answered with an ``error`` frame, and why."""

    frame: str | bytes
    error: ProtocolError


class NotConnected(Exception):
    """A knob that needs the slot's connection was used on a slot that has none."""


class Signal:
    """Wakes everyone waiting for the hub's state to change (a frame, a connection, a disconnection)."""

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


class RecordingHub(Hub, HubObserver):
    """A reference hub that records what every slot's agents sent, and can misbehave on request.

    The records come from the hub's observer hooks, kept for the hub's whole life (a test's worth):
    ``received`` (every message, ``authenticate`` first), ``errors`` (frames answered with an
    ``error`` frame), ``close_codes`` (one per ended connection). The knobs reach into the hub's
    connections, which production code has no way to do: ``answer_heartbeats`` and
    ``ack_results`` (False: those frames are still read and acted on, but not answered),
    ``drop`` (abort the TCP connection, no close frame) and ``send_raw`` (any frame, even
    malformed).
    """

    def __init__(self, db_path: str | os.PathLike[str], **options: Any) -> None:
        self.answer_heartbeats = True
        self.ack_results = True
        self._received: dict[str, list[Message]] = collections.defaultdict(list)
        self._errors: dict[str, list[BadFrame]] = collections.defaultdict(list)
        self._closes: dict[str, list[int | None]] = collections.defaultdict(list)
        self._signal = Signal()
        super().__init__(db_path, observer=self, **options)

    # --- the observer hooks

    def on_connect(self, slot: str, session: str) -> None:
        self._signal.fire()

    def on_message(self, slot: str, message: Message) -> None:
        self._received[slot].append(message)
        self._signal.fire()

    def on_bad_frame(self, slot: str, frame: str | bytes, error: ProtocolError) -> None:
        self._errors[slot].append(BadFrame(frame, error))
        self._signal.fire()

    def on_disconnect(self, slot: str, close_code: int | None) -> None:
        self._closes[slot].append(close_code)
        self._signal.fire()

    # --- what the slots' agents sent

    def received(self, slot: str) -> list[Message]:
        """The messages the agents of ``slot`` sent, oldest first, across connections (including their
        ``authenticate``; frames the hub answered with an ``error`` frame are in ``errors``)."""
        return list(self._received[slot])

    def errors(self, slot: str) -> list[BadFrame]:
        """The frames from the agents of ``slot`` that the hub answered with an ``error`` frame."""
        return list(self._errors[slot])

    def close_codes(self, slot: str) -> list[int | None]:
        """For each ended connection of ``slot``: the code of the agent's close frame (the hub's
        own when the hub closed first), or None when it ended without one."""
        return list(self._closes[slot])

    async def wait_connected(self, slot: str, timeout: float = TIMEOUT) -> str:
        """Waits until an agent holds ``slot``; returns its session id. TimeoutError if none does in time."""
        return await self._signal.wait_for(lambda: self.session(slot), timeout)

    async def wait_disconnected(self, slot: str, timeout: float = TIMEOUT) -> None:
        """Waits until no agent holds ``slot`` and the database says so (the hub's write of a
        disconnection is not awaited). TimeoutError if one still does after ``timeout``."""
        await self._signal.wait_for(lambda: None if self.connected(slot) else True, timeout)
        await self.db.call(Store.agent, slot)  # after the disconnection's write, in the database's thread

    async def wait_received(
        self, slot: str, kind: type[M], timeout: float = TIMEOUT, where: Callable[[M], bool] | None = None
    ) -> M:
        """The first message of type ``kind`` (matching ``where``) that ``slot`` has received."""

        def probe() -> M | None:
            for message in self._received[slot]:
                if isinstance(message, kind) and (where is None or where(message)):
                    return message
            return None

        return await self._signal.wait_for(probe, timeout)

    async def wait_result(self, op_id: str, timeout: float = TIMEOUT) -> Result:
        """The result of operation ``op_id``, once stored. TimeoutError if none comes in time."""

        def probe() -> Result | None:
            record = self.store.result_for(op_id)
            return record.to_message() if record is not None else None

        return await self._signal.wait_for(probe, timeout)

    # --- the knobs

    async def _send(self, link: _Link, message: Message) -> bool:
        """Every frame the hub sends goes through here: the answers the knobs hold back stop here."""
        if isinstance(message, HeartbeatAck) and not self.answer_heartbeats:
            return True
        if isinstance(message, Ack) and not self.ack_results:
            return True
        return await super()._send(link, message)

    def _link(self, slot: str) -> _Link:
        link = self._links.get(slot)
        if link is None:
            raise NotConnected(f"slot {slot!r} has no connected agent")
        return link

    async def drop(self, slot: str) -> None:
        """Aborts the TCP connection of ``slot`` without a close frame (a lost link), and waits
        until the hub has let go of it: the slot is free when this returns."""
        link = self._link(slot)
        logger.info("slot %s: dropping the connection of agent %s (test knob)", slot, link.agent)
        link.ws.transport.abort()
        await self._signal.wait_for(lambda: True if link.released else None, TIMEOUT)

    async def send_raw(self, slot: str, frame: str | bytes) -> None:
        """Sends ``frame`` as it is (text, or bytes as a binary frame) to the agent holding ``slot``.

        An ``operation`` frame is an operation this hub issued: the database records it as sent
        to ``slot`` (if it has no operation of that id yet), so that the hub takes its answers.
        """
        link = self._link(slot)
        if isinstance(frame, str) and '"operation"' in frame:
            self._record_issued(slot, frame)
        try:
            await link.ws.send(frame)
        except Closed:
            raise NotConnected(f"the connection of slot {slot!r} closed before the frame went out") from None

    def _record_issued(self, slot: str, frame: str) -> None:
        try:
            message = parse(frame)
        except ProtocolError:
            return
        if not isinstance(message, Operation) or self.store.operation(message.id) is not None:
            return
        now = time.time()
        self.store._db.execute(  # sent, by this knob: never pending, which the poller would send again
            "INSERT INTO operations (id, slot, name, params, created, state, updated)"
            " VALUES (?, ?, ?, ?, ?, 'sent', ?)",
            (message.id, slot, message.name, json.dumps(message.params), now, now),
        )


class RawClient:
    """One WebSocket connection to a hub; ``recv`` parses, ``send`` serializes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(
        cls, url: str, *, subprotocols: list[str] | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> RawClient:
        offered = [Subprotocol(p) for p in (subprotocols if subprotocols is not None else [SUBPROTOCOL])]
        ws = await connect(url, subprotocols=offered or None, ssl=ssl_context, open_timeout=TIMEOUT)
        return cls(ws)

    async def send(self, message: Message) -> None:
        await self.ws.send(serialize(message))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self, timeout: float = TIMEOUT) -> Message:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        return parse(frame)

    async def expect(self, kind: type[M], timeout: float = TIMEOUT) -> M:
        """The next message, which must be a ``kind``."""
        message = await self.recv(timeout)
        assert isinstance(message, kind), f"expected {kind.TYPE}, got {message!r}"
        return message

    async def nothing(self, timeout: float = QUIET) -> None:
        """Asserts that no message arrives within ``timeout`` seconds."""
        try:
            message = await self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no message, got {message!r}")

    async def authenticate(
        self, token: str, *, agent: str = "agent-1", session: str | None = None, protocol: int | None = None
    ) -> Authenticated | Rejected:
        """Authenticates with ``protocol``, by default the version of the subprotocol the hub selected."""
        version = protocol if protocol is not None else version_of(self.ws.subprotocol) or PROTOCOL_VERSION
        await self.send(
            Authenticate(protocol=version, token=token, name="ksocket", version="2.1.1", agent=agent, session=session)
        )
        reply = await self.recv()
        assert isinstance(reply, Authenticated | Rejected), reply
        return reply

    async def heartbeat(self, n: int) -> None:
        await self.send(Heartbeat(n=n))

    async def closed(self, timeout: float = TIMEOUT) -> int | None:
        """Waits for the connection to end (discarding frames); the close code the hub sent, or None."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    await self.ws.recv()
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        await self.ws.close()


async def authenticated(
    url: str, token: str, *, agent: str = "agent-1", session: str | None = None
) -> tuple[RawClient, str]:
    """A client that has authenticated; also returns its session id."""
    client = await RawClient.open(url)
    reply = await client.authenticate(token, agent=agent, session=session)
    assert isinstance(reply, Authenticated), reply
    return client, reply.session


@asynccontextmanager
async def hub_with_slot(db_path: Path, slot: str = "s1", **options: Any) -> AsyncIterator[tuple[RecordingHub, str]]:
    """A running hub (``RecordingHub(db_path, **options)``) with a slot ``slot``, and that slot's token."""
    async with RecordingHub(db_path, **options) as hub:
        yield hub, hub.store.add_slot(slot)


async def until(condition: Callable[[], object], timeout: float = TIMEOUT) -> None:
    """Waits until ``condition()`` is true (checked every 10 ms); TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def new_agent_id() -> str:
    return str(uuid.uuid4())


async def ksocket(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """``python -m ksocket.cli ARGS`` in another process, without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ksocket.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` and its key, as PEM files in ``folder``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "hub.crt", folder / "hub.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a test's scenario on a fresh event loop, failing it after 30 s."""
    return asyncio.run(asyncio.wait_for(coro, 30))


def add_slot(db: Path, name: str = "s1") -> str:
    """Adds a slot to the hub database ``db``; returns its token."""
    with Store(db) as store:
        return store.add_slot(name)
