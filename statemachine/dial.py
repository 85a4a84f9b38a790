"""Opening the link, step by step: proxy, DNS, TCP, TLS, WebSocket with a ``ksocket.v2`` or ``ksocket.v1`` subprotocol.

The agent's ``connecting`` state runs :func:`open_websocket`, which does all of them; ``ksocket
diagnostics connect`` runs the steps one at a time to say which of them fails. Library errors
become :class:`~ksocket.errors.LinkError` here, each with one line naming the peer and the proxy. Dialling a hub
that is not on this host over plain ``ws`` is allowed but warned about at every dial: the token
crosses the network in clear.

The proxy is ``connect.proxy`` when set (``none``: never one), otherwise the environment's as
websockets reads it (HTTPS_PROXY, HTTP_PROXY for ws://, NO_PROXY honoured); websockets dials
through it. The diagnostics' tunnel step alone uses the two functions websockets' own ``connect``
opens a tunnel with (``connect_http_proxy``, ``connect_socks_proxy``): not public API, so the
tests run them against real proxies (tests/test_diagnostics.py). A proxy's password is registered with
:mod:`ksocket.redact` and every message shows the proxy with it masked.

TLS trusts the system's store (SSL_CERT_FILE / SSL_CERT_DIR honoured) or, when that holds no
certificate at all, certifi's bundle: :func:`trust_store` says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import websockets
import websockets.proxy
from websockets.asyncio.client import ClientConnection, connect, connect_http_proxy, connect_socks_proxy
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ksocket import config, protocol, redact
from ksocket.config import Settings
from ksocket.errors import LinkError

log = logging.getLogger("ksocket.link")

TRUE_WORDS = ("1", "true", "yes", "on")


def insecure() -> bool:
    """``KSOCKET_INSECURE`` turns off certificate verification (manual 5.4.1)."""
    return os.environ.get("KSOCKET_INSECURE", "").strip().lower() in TRUE_WORDS


# the file names OpenSSL looks a CA up by in a certificate folder (c_rehash's SUBJECT-HASH.N)
HASHED_CERTIFICATE = re.compile(r"[0-9a-f]{8}\.[0-9]+")

SOCKS_VERSIONS = {"socks5": "SOCKS5", "socks5h": "SOCKS5", "socks4": "SOCKS4", "socks4a": "SOCKS4"}


@dataclass(frozen=True)
class Endpoint:
    url: str
    host: str
    port: int
    secure: bool
    proxy: str = ""  # connect.proxy: empty, the environment decides; config.NO_PROXY, never one

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
        return cls(url, parts.hostname, port, parts.scheme == "wss", settings.proxy)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1 (no lookup is made)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Proxy:
    """The proxy the link goes through, and where it was configured."""

    url: str
    origin: str  # "connect.proxy" or "the environment"
    address: websockets.proxy.Proxy

    @property
    def shown(self) -> str:
        return config.proxy_shown(self.url)

    @property
    def tunnel(self) -> str:
        return SOCKS_VERSIONS.get(self.address.scheme, "HTTP CONNECT")

    @property
    def resolves_here(self) -> bool:
        """Whether the agent resolves the hub's name (socks5://, socks4://) rather than the proxy."""
        return self.address.scheme in ("socks5", "socks4")

    def endpoint(self) -> Endpoint:
        """The proxy itself as a peer, for the steps that reach it: DNS, TCP."""
        address = self.address
        return Endpoint(self.shown, address.host, address.port, address.scheme == "https", config.NO_PROXY)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS to an https:// proxy, trusting what the hub's does; None for the other kinds."""
        return trust_store().context if self.address.scheme == "https" else None


def choose_proxy(endpoint: Endpoint) -> Proxy | None:
    """``connect.proxy`` first, then the environment (websockets' reading of it, NO_PROXY included)."""
    if endpoint.proxy == config.NO_PROXY:
        return None
    url: str | None = endpoint.proxy
    origin = "connect.proxy"
    if not url:
        url, origin = websockets.proxy.get_proxy(parse_uri(endpoint.url)), "the environment"
        if url is None:
            return None
        redact.register(*config.proxy_password(url))
    try:
        return Proxy(url, origin, websockets.proxy.parse_proxy(url))
    except websockets.exceptions.InvalidProxy as exc:
        raise LinkError(f"proxy {config.proxy_shown(url)} from {origin} is not usable: {exc.msg}") from None


@dataclass(frozen=True)
class TrustStore:
    context: ssl.SSLContext
    name: str  # "system", the SSL_CERT_FILE / SSL_CERT_DIR that filled it, "certifi", or why none


def trust_store() -> TrustStore:
    """The system's CAs, or certifi's when the system has none; no verification at all when insecure."""
    context = ssl.create_default_context()
    if insecure():
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return TrustStore(context, "none: KSOCKET_INSECURE is set")
    name = _system_store(context)
    if name is not None:
        return TrustStore(context, name)
    import certifi  # here, not at the top: only a host without CAs needs it

    log.info("the system's CA store is empty: trusting certifi's bundle (%s)", certifi.where())
    return TrustStore(ssl.create_default_context(cafile=certifi.where()), "certifi")


def _system_store(context: ssl.SSLContext) -> str | None:
    """What filled ``context``'s default store: ``system`` or the variable's path; None when it is empty."""
    paths = ssl.get_default_verify_paths()
    if context.cert_store_stats()["x509_ca"]:
        return os.environ.get(paths.openssl_cafile_env) or "system"
    # a folder's certificates load only when a handshake looks one up, so count their files instead
    folders = os.environ.get(paths.openssl_capath_env) or paths.openssl_capath
    if any(_holds_certificates(folder) for folder in folders.split(os.pathsep) if folder):
        return os.environ.get(paths.openssl_capath_env) or "system"
    return None


def _holds_certificates(folder: str) -> bool:
    try:
        return any(HASHED_CERTIFICATE.fullmatch(path.name) for path in Path(folder).iterdir())
    except OSError:
        return False


@contextlib.contextmanager
def link_errors(step: str, endpoint: Endpoint, proxy: Proxy | None = None) -> Iterator[None]:
    """Converts what the libraries raise during ``step`` into one-line LinkErrors naming the peer (and proxy)."""
    peer = f"{endpoint.host}:{endpoint.port}" + (f" through proxy {proxy.shown}" if proxy else "")
    try:
        yield
    except LinkError:
        raise
    except socket.gaierror as exc:
        if proxy is None:
            raise LinkError(f"{step} of {endpoint.host} failed: {exc.strerror}") from None
        raise LinkError(f"{step} with {peer} failed: name lookup: {exc.strerror}") from None
    except (TimeoutError, OSError, websockets.exceptions.WebSocketException, ImportError) as exc:
        raise LinkError(f"{step} with {peer}{_failure(exc)}") from None


def _failure(exc: BaseException) -> str:
    """How a step ended, in the words that follow ``STEP with PEER``."""
    if isinstance(exc, TimeoutError):
        return " timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f" failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f" failed: {exc.reason or exc}"
    if isinstance(exc, websockets.exceptions.ConnectionClosed):
        return f": connection closed ({exc})"
    if isinstance(exc, websockets.exceptions.WebSocketException):
        return f" failed: {_refusal(exc)}"
    if isinstance(exc, OSError):
        return f" failed: {exc.strerror or exc}"
    return f" failed: {exc}"  # ImportError: a SOCKS proxy without python-socks


def _refusal(exc: websockets.exceptions.WebSocketException) -> str:
    """Why the hub or the proxy refused the handshake."""
    if isinstance(exc, websockets.exceptions.InvalidProxyStatus):
        status = exc.response.status_code
        # 407 is the standard's answer; tinyproxy, for one, answers 401
        hint = " (the proxy's credentials are missing or wrong)" if status in (401, 407) else ""
        return f"the proxy answered HTTP {status} {exc.response.reason_phrase}{hint}"
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, websockets.exceptions.ProxyError) and exc.__cause__ is not None:
        return f"{exc}: {exc.__cause__}"  # the SOCKS library's own reason, e.g. authentication failed
    return str(exc)


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


async def open_tls(endpoint: Endpoint, timeout: float, proxy: Proxy | None = None) -> None:
    """The TLS handshake with the hub, through ``proxy``'s tunnel when there is one."""
    store = trust_store()
    with link_errors("TLS handshake", endpoint, proxy):
        async with asyncio.timeout(timeout):
            if proxy is not None:
                (await _through(endpoint, proxy, store)).close()
                return
            _, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=store.context)
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def open_tunnel(endpoint: Endpoint, proxy: Proxy, timeout: float) -> str:
    """Only the proxy's tunnel to the hub (HTTP CONNECT or the SOCKS handshake); returns which kind."""
    with link_errors(f"{proxy.tunnel} tunnel", endpoint, proxy):
        async with asyncio.timeout(timeout):
            transport = await _through(endpoint, proxy, None)
        transport.close()
    return proxy.tunnel


async def _through(endpoint: Endpoint, proxy: Proxy, store: TrustStore | None) -> asyncio.BaseTransport:
    """A connection to the hub through ``proxy``'s tunnel, TLS inside it when ``store`` is given."""
    loop = asyncio.get_running_loop()
    uri = parse_uri(endpoint.url)
    if proxy.address.scheme in SOCKS_VERSIONS:
        sock = await connect_socks_proxy(proxy.address, uri)
        context, hostname = (store.context, endpoint.host) if store is not None else (None, None)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock, ssl=context, server_hostname=hostname)
        return transport
    tunnel = await connect_http_proxy(proxy.address, uri, ssl=proxy.tls_context())
    if store is None:
        return tunnel
    inside = asyncio.Protocol()
    tunnel.set_protocol(inside)
    secured = await loop.start_tls(tunnel, inside, store.context, server_hostname=endpoint.host)
    assert secured is not None  # None only for a transport that is closing
    return secured


async def open_websocket(endpoint: Endpoint, timeout: float) -> ClientConnection:
    """Proxy, DNS, TCP, TLS and the WebSocket handshake in one, offering ksocket.v2 then ksocket.v1 and
    refusing a hub that selects neither."""
    if not endpoint.secure and not is_loopback(endpoint.host):
        log.warning(
            "connect.protocol is ws: the token goes to %s:%d in clear (use wss for a hub on another host)",
            endpoint.host,
            endpoint.port,
        )
    proxy = choose_proxy(endpoint)
    # websockets hands every proxy_* option to the proxy's connection, which only an https:// one takes
    proxy_tls = proxy.tls_context() if proxy is not None else None
    proxy_options: dict[str, Any] = {"proxy_ssl": proxy_tls} if proxy_tls is not None else {}
    if proxy is not None:
        log.debug("dialling %s through proxy %s (%s)", endpoint.url, proxy.shown, proxy.origin)
    with link_errors("WebSocket handshake", endpoint, proxy):
        async with asyncio.timeout(timeout):
            websocket = await connect(
                endpoint.url,
                ssl=trust_store().context if endpoint.secure else None,
                subprotocols=[Subprotocol(name) for name in protocol.SUBPROTOCOLS],
                max_size=protocol.MAX_FRAME,
                ping_interval=None,  # the protocol's own heartbeat is the one liveness check
                close_timeout=2,
                proxy=proxy.url if proxy is not None else None,
                compression=None,
                **proxy_options,
            )
    if protocol.version_of(websocket.subprotocol) is None:
        offered = " or ".join(protocol.SUBPROTOCOLS)
        await websocket.close(protocol.CLOSE_PROTOCOL_ERROR, f"subprotocol {offered} required")
        raise LinkError(f"hub at {endpoint.host}:{endpoint.port} did not select subprotocol {offered}")
    return websocket
