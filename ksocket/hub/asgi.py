"""The hub's listener: uvicorn serving one ASGI app, agents' WebSockets to the hub and HTTP to a web app.

``Listener`` runs uvicorn's HTTP/1.1 (h11) and WebSocket (websockets' sans-I/O protocol) code on
sockets of its own (``loop.create_server``, so that a busy port is an ``OSError`` to report, not
uvicorn's exit, and the hub's ``SSLContext`` is used as it is). Every WebSocket handshake, on any
path, goes to the hub as an ``AgentSocket``; every HTTP request (and the lifespan, when there is a
web app) goes to the web app, or gets a plain 404 without one. Nothing here parses HTTP.

Two small subclasses of uvicorn's protocols keep what the hub promised under websockets' server:

- ``_HTTPProtocol`` closes a connection that has not sent a whole request within the handshake
  timeout (uvicorn only times out connections idle *between* requests, and any byte, even of a
  request that never ends, stops that timer), and logs requests on the hub's
  ``ksocket.hub.access`` logger with their paths cut before the query string.
- ``_AgentProtocol`` reads frames of at most ``AUTH_FRAME_LIMIT`` bytes until the hub lifts the limit
  to uvicorn's ``ws_max_size`` (an ASGI app cannot change it per connection), logs on the hub's
  filtered ``ksocket.hub.websockets`` logger (websockets logs every frame at DEBUG, and the first
  carries a token), and hands the hub the lever on that limit, with the transport, in the scope's
  ``ksocket.wire`` extension (a ``Wire``).

``AgentSocket`` is what the hub's connection handling needs of a WebSocket, over ASGI messages:
``recv`` / ``send`` / ``close`` (``Closed`` once it is closed), the offered subprotocols, ``accept`` /
``refuse`` (a real HTTP answer, by the ASGI WebSocket Denial Response extension), the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.server import ServerProtocol

from ksocket.hub.errors import HubError

if TYPE_CHECKING:
    import h11

__all__ = ["AUTH_FRAME_LIMIT", "AgentSocket", "Closed", "Listener"]

AUTH_FRAME_LIMIT = 4096
"""Largest first frame, in bytes: an ``authenticate`` is a few hundred."""

WIRE = "ksocket.wire"
"""The scope extension by which ``_AgentProtocol`` hands the hub its ``Wire``."""

NOT_FOUND = PlainTextResponse("ksocket hub: no web interface here; agents connect to /api/ksocket/connect\n", 404)


class _QuietLog(logging.Filter):
    """websockets' and uvicorn's WebSocket log lines, less those the hub already says better and any
    line that holds a secret: websockets logs every frame at DEBUG (``authenticate`` carries a token)
    and every header line of a handshake (a browser's would carry its cookie)."""

    SAID_BETTER = frozenset(
        {
            "connection open",
            "connection closed",
            "connection rejected (%d %s)",
            "HTTP response sent (%d %s)",
            '%s - "WebSocket %s" [accepted]',
            '%s - "WebSocket %s" %d',
            '%s - "WebSocket %s" 403',
        }
    )
    SECRET_HEADERS = ("< cookie:", "< authorization:", "< proxy-authorization:")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.SAID_BETTER:
            return False
        if record.levelno > logging.DEBUG:
            return True
        line = record.getMessage()
        return '"token"' not in line and not line.lower().startswith(self.SECRET_HEADERS)


class _PathOnly(logging.Filter):
    """An access log line names the path, never the query string (where a secret could stand)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:  # client, method, path, version, status
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).partition("?")[0], version, status)
        return True


websockets_logger = logging.getLogger("ksocket.hub.websockets")
websockets_logger.addFilter(_QuietLog())
access_logger = logging.getLogger("ksocket.hub.access")
access_logger.addFilter(_PathOnly())


class Closed(Exception):
    """The WebSocket is closed: ``code`` is the agent's close code (the hub's, when the hub closed
    first), None when it ended without a close frame."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"connection closed ({code})" if code is not None else "connection lost")
        self.code = code


@dataclass(frozen=True)
class Wire:
    """What the hub needs of a connection below ASGI."""

    transport: asyncio.Transport
    """The TCP (or TLS) transport under it."""
    _protocol: ServerProtocol
    _max_size: int

    def lift_frame_limit(self) -> None:
        """Frames of up to uvicorn's ``ws_max_size`` from the next one on (``AUTH_FRAME_LIMIT`` until then)."""
        self._protocol.max_message_size = self._max_size

    @property
    def close_frame_seen(self) -> bool:
        """Whether a close frame was sent or received (else the connection was lost)."""
        return self._protocol.close_sent is not None or self._protocol.close_rcvd is not None


class _AgentProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with the first frame bounded and the hub's logger."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = websockets_logger
        self.conn.logger = websockets_logger
        self.conn.debug = websockets_logger.isEnabledFor(logging.DEBUG)
        self.conn.max_message_size = AUTH_FRAME_LIMIT

    async def run_asgi(self) -> None:
        extensions: dict[str, Any] = self.scope["extensions"]
        extensions[WIRE] = Wire(self.transport, self.conn, self.config.ws_max_size)
        await super().run_asgi()


class _HTTPProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the first request and the hub's access log."""

    def __init__(self, *args: Any, handshake_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_timeout = handshake_timeout
        self.access_logger = access_logger
        self.access_log = access_logger.hasHandlers()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self._handshake_timeout, self._first_request_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._deadline.cancel()  # the request is whole; and the timer would keep this protocol alive
        super().handle_websocket_upgrade(event)

    def _first_request_late(self) -> None:
        if self.scope is None and not self.transport.is_closing():  # uvicorn sets the scope once a request is whole
            self.transport.close()


class AgentSocket:
    """An agent's WebSocket, as the hub's connection handling uses it (over ASGI messages)."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._wire: Wire = scope["extensions"][WIRE]
        self._open = True
        self.offered: list[str] = list(scope.get("subprotocols", []))
        """The subprotocols the client offered."""
        self.subprotocol: str | None = None
        """The subprotocol accepted."""
        self.peer = _peer(scope.get("client"))
        """``host:port`` of the client."""
        self.close_code: int | None = None
        """Once closed: the agent's close code (the hub's, when the hub closed first); None without a close frame."""

    @classmethod
    async def connect(cls, scope: Scope, receive: Receive, send: Send) -> Self:
        """The socket of a ``websocket`` scope, its handshake waiting for ``accept`` or ``refuse``."""
        message = await receive()
        assert message["type"] == "websocket.connect", message
        return cls(scope, receive, send)

    @property
    def transport(self) -> asyncio.Transport:
        """The TCP (or TLS) transport under it: for tests that cut it or watch its reading."""
        return self._wire.transport

    def lift_frame_limit(self) -> None:
        """Frames of up to ``MAX_FRAME`` bytes from the next one on (``AUTH_FRAME_LIMIT`` until then)."""
        self._wire.lift_frame_limit()

    async def accept(self, subprotocol: str) -> None:
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol})
        self.subprotocol = subprotocol

    async def refuse(self, status: int, text: str) -> None:
        """Answers the handshake with HTTP ``status`` and ``text``, and closes the connection."""
        self._open = False
        await self._send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await self._send({"type": "websocket.http.response.body", "body": text.encode()})

    async def recv(self) -> str | bytes:
        """The next frame; ``Closed`` when there is none."""
        if not self._open:
            raise Closed(self.close_code)
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text: str | None = message.get("text")
            return text if text is not None else bytes(message["bytes"])
        self._open = False
        if self.close_code is None and self._wire.close_frame_seen:
            self.close_code = int(message.get("code", 1005))
        raise Closed(self.close_code)

    async def send(self, frame: str | bytes) -> None:
        """Sends a text frame (``str``) or a binary one (``bytes``); ``Closed`` if the connection is."""
        if not self._open:
            raise Closed(self.close_code)
        key = "text" if isinstance(frame, str) else "bytes"
        try:
            await self._send({"type": "websocket.send", key: frame})
        except OSError:  # uvicorn's ClientDisconnected
            self._open = False
            raise Closed(self.close_code) from None

    async def close(self, code: int, reason: str = "") -> None:
        """Sends a close frame (once); the connection ends when the agent answers it, or 10 s later."""
        if not self._open:
            return
        self._open = False
        self.close_code = code
        with contextlib.suppress(OSError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


def _peer(client: tuple[str, int] | None) -> str:
    if client is None:
        return "unknown peer"
    host = f"[{client[0]}]" if ":" in client[0] else client[0]
    return f"{host}:{client[1]}"


AgentHandler = Callable[[AgentSocket], Awaitable[None]]


@dataclass(frozen=True)
class _Dispatch:
    """The ASGI app the listener serves: WebSockets to the hub, the rest to the web app."""

    agents: AgentHandler
    web_app: ASGIApp | None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.agents(await AgentSocket.connect(scope, receive, send))
        elif self.web_app is not None:
            await self.web_app(scope, receive, send)
        elif scope["type"] == "http":
            await NOT_FOUND(scope, receive, send)


class Listener:
    """uvicorn on the hub's sockets, from ``start`` to ``stop``.

    ``max_frame`` is the largest frame once the hub lifts an agent's limit; ``handshake_timeout``
    the time a new connection has to send a whole request. A web app gets the lifespan protocol.
    """

    def __init__(
        self, agents: AgentHandler, web_app: ASGIApp | None, *, max_frame: int, handshake_timeout: float
    ) -> None:
        self._config = uvicorn.Config(
            _Dispatch(agents, web_app),
            http=_HTTPProtocol,
            ws=_AgentProtocol,
            ws_max_size=max_frame,
            ws_ping_interval=None,  # liveness is the protocol's heartbeat, not WebSocket pings
            ws_ping_timeout=None,
            ws_per_message_deflate=False,  # agents never offer it, and one compressed read could inflate 1000-fold
            lifespan="on" if web_app is not None else "off",
            log_config=None,  # the process's logging stays as ksocket.log made it
            proxy_headers=False,  # the peer is the socket's: no header may claim another address
            server_header=False,
        )
        self._handshake_timeout = handshake_timeout
        self._uvicorn = uvicorn.Server(self._config)
        self._server: asyncio.Server | None = None
        self._clock: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> list[socket.socket]:
        """Listens; returns the listening sockets. ``OSError`` when it cannot, ``HubError`` when the web app
        fails to start."""
        config = self._config
        config.load()
        lifespan = self._uvicorn.lifespan = config.lifespan_class(config)
        await lifespan.startup()
        if lifespan.should_exit:
            raise HubError("the web app failed to start (see the log)")
        state = self._uvicorn.server_state

        def protocol() -> asyncio.Protocol:
            return _HTTPProtocol(
                config=config, server_state=state, app_state=lifespan.state, handshake_timeout=self._handshake_timeout
            )

        try:
            self._server = await asyncio.get_running_loop().create_server(protocol, host, port, ssl=ssl_context)
        except OSError:
            await lifespan.shutdown()
            raise
        self._clock = asyncio.create_task(self._uvicorn.main_loop(), name="ksocket-hub-http-clock")  # Date headers
        return list(self._server.sockets)

    def close(self) -> None:
        """Stops accepting connections."""
        if self._server is not None:
            self._server.close()

    async def stop(self, grace: float) -> None:
        """Stops accepting connections, ends idle HTTP connections, lets the running requests and WebSocket
        handlers finish for ``grace`` seconds, and closes what is left: gracefully when all finished in
        time, else by cancelling them and aborting every connection (a peer that reads nothing could
        otherwise hold a write, and the stop, for ever)."""
        self.close()
        state = self._uvicorn.server_state
        for connection in list(state.connections):
            if isinstance(connection, H11Protocol):  # a WebSocket's close is the hub's (1001)
                connection.shutdown()
        late: set[asyncio.Task[None]] = set()
        if state.tasks:
            _, late = await asyncio.wait(set(state.tasks), timeout=grace)
        for connection in list(state.connections):
            if late:
                connection.transport.abort()
            else:
                connection.shutdown()
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if self._clock is not None:
            self._clock.cancel()
            await asyncio.gather(self._clock, return_exceptions=True)
        await self._uvicorn.lifespan.shutdown()
        if self._server is not None:
            await self._server.wait_closed()
