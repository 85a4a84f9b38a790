"""Opening the link, step by step: DNS, TCP, TLS, WebSocket with the ``ksocket.v1`` subprotocol.

The agent's ``connecting`` state runs :func:`open_websocket`, which does all four; ``ksocket
diagnostics connect`` runs the steps one at a time to say which of them fails. Library errors
become :class:`~ksocket.errors.LinkError` here, each with one line naming the peer. Dialling a hub
that is not on this host over plain ``ws`` is allowed but warned about at every dial: the token
crosses the network in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ksocket import protocol
from ksocket.config import Settings
from ksocket.errors import LinkError

log = logging.getLogger(__name__)

TRUE_WORDS = ("1", "true", "yes", "on")


def insecure() -> bool:
    """``KSOCKET_INSECURE`` turns off certificate verification (manual 5.4.1)."""
    return os.environ.get("KSOCKET_INSECURE", "").strip().lower() in TRUE_WORDS


@dataclass(frozen=True)
class Endpoint:
    url: str
    host: str
    port: int
    secure: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoint:
        if not settings.host:
            raise LinkError("connect.host is not set (ksocket config connect.host HOST)")
        url = settings.endpoint_url
        try:  # urlsplit refuses a bad [IPv6] host, .port a port out of range or not a number
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "wss" else 80)
        except ValueError as exc:
            raise LinkError(f"connect.endpoint gives {url!r}: {exc}") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise LinkError(f"connect.endpoint gives {url!r}, not a ws:// or wss:// URL")
        return cls(url, parts.hostname, port, parts.scheme == "wss")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1 (no lookup is made)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_context(endpoint: Endpoint) -> ssl.SSLContext | None:
    """The system's trust store (SSL_CERT_FILE/SSL_CERT_DIR honoured); none at all when insecure."""
    if not endpoint.secure:
        return None
    context = ssl.create_default_context()
    if insecure():
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def link_errors(step: str, endpoint: Endpoint) -> Iterator[None]:
    """Converts what the libraries raise during ``step`` into one-line LinkErrors naming the peer."""
    peer = f"{endpoint.host}:{endpoint.port}"
    try:
        yield
    except LinkError:
        raise
    except TimeoutError:
        raise LinkError(f"{step} with {peer} timed out") from None
    except ssl.SSLCertVerificationError as exc:
        raise LinkError(f"{step} with {peer} failed: {exc.verify_message or exc.reason}") from None
    except ssl.SSLError as exc:
        raise LinkError(f"{step} with {peer} failed: {exc.reason or exc}") from None
    except socket.gaierror as exc:
        raise LinkError(f"{step} of {endpoint.host} failed: {exc.strerror}") from None
    except websockets.exceptions.InvalidStatus as exc:
        raise LinkError(f"{step} with {peer} failed: HTTP {exc.response.status_code}") from None
    except websockets.exceptions.InvalidHandshake as exc:
        raise LinkError(f"{step} with {peer} failed: {exc}") from None
    except websockets.exceptions.ConnectionClosed as exc:
        raise LinkError(f"{step} with {peer}: connection closed ({exc})") from None
    except OSError as exc:
        raise LinkError(f"{step} with {peer} failed: {exc.strerror or exc}") from None


async def resolve(endpoint: Endpoint) -> list[str]:
    with link_errors("DNS forward lookup", endpoint):
        infos = await asyncio.get_running_loop().getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def open_tcp(endpoint: Endpoint, timeout: float) -> None:
    with link_errors("TCP connection", endpoint):
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def open_tls(endpoint: Endpoint, context: ssl.SSLContext, timeout: float) -> None:
    with link_errors("TLS handshake", endpoint):
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=context)
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def open_websocket(endpoint: Endpoint, timeout: float) -> ClientConnection:
    """DNS, TCP, TLS and the WebSocket handshake in one, refusing a hub that does not speak ksocket.v1."""
    if not endpoint.secure and not is_loopback(endpoint.host):
        log.warning(
            "connect.protocol is ws: the token goes to %s:%d in clear (use wss for a hub on another host)",
            endpoint.host,
            endpoint.port,
        )
    with link_errors("WebSocket handshake", endpoint):
        async with asyncio.timeout(timeout):
            websocket = await connect(
                endpoint.url,
                ssl=tls_context(endpoint),
                subprotocols=[Subprotocol(protocol.SUBPROTOCOL)],
                max_size=protocol.MAX_FRAME,
                ping_interval=None,  # the protocol's own heartbeat is the one liveness check
                close_timeout=2,
                proxy=None,
                compression=None,
            )
    if websocket.subprotocol != protocol.SUBPROTOCOL:
        await websocket.close(protocol.CLOSE_PROTOCOL_ERROR, "subprotocol ksocket.v1 required")
        raise LinkError(f"hub at {endpoint.host}:{endpoint.port} did not select subprotocol {protocol.SUBPROTOCOL}")
    return websocket
