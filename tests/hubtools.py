"""Helpers for tests that talk to the reference hub: a raw protocol client and a few shortcuts.

``RawClient`` is a bare WebSocket client that speaks ``ksocket.protocol`` frame by frame, with
none of the agent's machinery: the tests decide every frame it sends.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ksocket.hub.server import Hub
from ksocket.protocol import SUBPROTOCOL, Authenticate, Authenticated, Heartbeat, Message, Rejected, parse, serialize

M = TypeVar("M", bound=Message)

TIMEOUT = 5.0
"""How long a test waits for something that should happen (it usually takes milliseconds)."""
QUIET = 0.3
"""How long a test listens to be sure that nothing comes."""


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
        self, token: str, *, agent: str = "agent-1", session: str | None = None, protocol: int = 1
    ) -> Authenticated | Rejected:
        await self.send(
            Authenticate(protocol=protocol, token=token, name="ksocket", version="2.1.1", agent=agent, session=session)
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
async def hub_with_slot(db_path: Path, slot: str = "s1", **options: Any) -> AsyncIterator[tuple[Hub, str]]:
    """A running hub (``Hub(db_path, **options)``) with a slot ``slot``, and that slot's token."""
    async with Hub(db_path, **options) as hub:
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
