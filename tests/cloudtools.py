"""Loopback stand-ins for the cloud tests: a small HTTP(S) server, EC2's metadata service, a fault server.

Nothing here is a cloud. :class:`LoopbackServer` is stdlib ``http.server`` on 127.0.0.1 (HTTPS
with a test CA when given an ``ssl.SSLContext``) calling one function per request and logging every
request. :class:`Ec2MetadataServer` answers the IMDS paths the aws collector asks (IMDSv2 token
PUT, then the MACs and their VPC ids); :class:`FaultServer` answers every request with one fixed
status and body (EC2 throttling, 5xx). :class:`LoopbackGuard` refuses, and records, any connection
beyond loopback (a real metadata address, a real cloud endpoint), so that a test fails instead of
reaching one.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import pytest


@dataclass
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lowercased names
    body: bytes

    @property
    def target(self) -> str:
        return self.path + ("?" + urllib.parse.urlencode(self.query, doseq=True) if self.query else "")

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode()))


@dataclass
class Response:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, dict | list):
            return json.dumps(self.body).encode(), "application/json; charset=utf-8"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return self.body, "application/octet-stream"


Handler = Callable[[Request], Response]


class LoopbackServer:
    """An HTTP (or HTTPS) server on 127.0.0.1 that calls ``handle`` for every request."""

    def __init__(self, handle: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handle = handle
        self.log: list[Request] = []
        self.lock = threading.Lock()
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _serve(self) -> None:
                split = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    self.command,
                    urllib.parse.unquote(split.path),
                    urllib.parse.parse_qs(split.query, keep_blank_values=True),
                    {name.lower(): value for name, value in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                with owner.lock:
                    owner.log.append(request)
                try:
                    response = owner.handle(request)
                except Exception as exc:  # a bug in a test server must show, not hang the client
                    response = Response(500, {"error": {"code": "TestServerBug", "message": repr(exc)}})
                body, kind = response.encoded()
                self.send_response(response.status)
                headers = {"Content-Type": kind, **response.headers, "Content-Length": str(len(body))}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def requests(self, method: str | None = None, path_contains: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.log if (method is None or r.method == method) and path_contains in r.path]


class Ec2MetadataServer(LoopbackServer):
    """EC2's instance metadata service for one instance whose interfaces are ``interfaces`` (MAC -> VPC id).

    ``imdsv2`` True: a token PUT is answered and GETs without the token are 401 (as with
    ``HttpTokens=required``); False: the PUT is 405 (no IMDSv2) and GETs need no token.
    """

    TOKEN = "AQAEAtest-imds-token=="

    def __init__(self, interfaces: dict[str, str], *, imdsv2: bool = True) -> None:
        self.interfaces = interfaces
        self.imdsv2 = imdsv2
        super().__init__(self._answer)

    def _answer(self, request: Request) -> Response:
        if request.path == "/latest/api/token":
            if request.method != "PUT":
                return Response(405)
            if not self.imdsv2:
                return Response(405)
            if "x-aws-ec2-metadata-token-ttl-seconds" not in request.headers:
                return Response(400)
            return Response(200, self.TOKEN)
        if request.method != "GET":
            return Response(405)
        if self.imdsv2 and request.headers.get("x-aws-ec2-metadata-token") != self.TOKEN:
            return Response(401)
        prefix = "/latest/meta-data/network/interfaces/macs/"
        if request.path == "/latest/meta-data/mac":
            return Response(200, next(iter(self.interfaces)))
        if request.path == prefix:
            return Response(200, "\n".join(f"{mac}/" for mac in self.interfaces))
        if request.path.startswith(prefix) and request.path.endswith("/vpc-id"):
            mac = request.path[len(prefix) : -len("/vpc-id")]
            if mac in self.interfaces:
                return Response(200, self.interfaces[mac])
        return Response(404, "Not Found")


class FaultServer(LoopbackServer):
    """Answers every request with ``status``, ``body`` and ``headers``; ``log`` counts the attempts."""

    def __init__(self, status: int, body: bytes | str | dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.response = Response(status, body, headers or {})
        super().__init__(lambda request: self.response)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackGuard:
    """While installed, any TCP/UDP connection to an address that is not loopback fails at once and is recorded.

    That covers the metadata addresses (169.254.169.254, fd00:ec2::254, 169.254.170.2) and every real
    cloud endpoint: the cloud tests talk to 127.0.0.1 only.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []

    @staticmethod
    def _refused(address: object) -> str | None:
        if not (isinstance(address, tuple) and address and isinstance(address[0], str)):
            return None  # AF_UNIX and the like
        host = address[0].strip("[]")
        try:
            return None if ipaddress.ip_address(host.split("%")[0]).is_loopback else host
        except ValueError:
            return None if host == "localhost" else host

    def install(self, monkeypatch: pytest.MonkeyPatch) -> LoopbackGuard:
        original_connect = socket.socket.connect
        original_connect_ex = socket.socket.connect_ex
        guard = self

        def connect(sock: socket.socket, address: Any) -> None:
            host = guard._refused(address)
            if host:
                guard.attempts.append(host)
                raise OSError(errno.ENETUNREACH, f"test guard: no connection to {host}, only to loopback")
            original_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            host = guard._refused(address)
            if host:
                guard.attempts.append(host)
                return errno.ENETUNREACH
            return original_connect_ex(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        return self


def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackGuard]:
    """For a fixture: installs a :class:`LoopbackGuard`; the test fails if anything tried to leave loopback."""
    guard = LoopbackGuard().install(monkeypatch)
    yield guard
    assert guard.attempts == [], f"something tried to reach beyond loopback: {guard.attempts}"


class RecordingContext:
    """A collector context that records progress and can cancel after ``cancel_after`` progress calls."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.cancel_after = cancel_after
        self.checks = 0

    def progress(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def check_cancelled(self) -> None:
        from ksocket.collectors.base import Cancelled

        self.checks += 1
        if self.cancel_after is not None and len(self.calls) >= self.cancel_after:
            raise Cancelled()
