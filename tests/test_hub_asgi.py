"""The hub on uvicorn: agents' WebSockets and people's HTTP on one address, and what the move kept.

A tiny Starlette app stands in for the operators' web interface. HTTP is spoken by the standard
library's client (``http.client``, in a thread), so that the hub's 400 and 503 refusals are checked
as real HTTP answers, not as what a WebSocket client makes of them. ``AgentSocket``'s close rules
are checked on scripted ASGI messages, without a server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from ksocket.hub import server
from ksocket.hub.asgi import WIRE, AgentSocket, Closed
from ksocket.hub.errors import HubError
from ksocket.hub.server import ENDPOINT_PATH, Hub
from ksocket.hub.startups import StartupLimit
from ksocket.protocol import Authenticated, HeartbeatAck
from tests.hubtools import (
    TIMEOUT,
    NotConnected,
    RawClient,
    RecordingHub,
    add_slot,
    authenticated,
    run,
    self_signed,
    until,
)

pytestmark = [pytest.mark.peer, pytest.mark.timeout(60)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "hub.db"


class Response:
    """What an HTTP client got."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body
        self.text = body.decode()


def _request(port: int, path: str, headers: dict[str, str], tls: ssl.SSLContext | None = None) -> Response:
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT, context=tls)
    try:
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        connection.close()


async def get(port: int, path: str = "/", tls: ssl.SSLContext | None = None, **headers: str) -> Response:
    """A GET by the standard library's HTTP client (HTTPS trusting ``tls``'s CAs when given)."""
    return await asyncio.to_thread(_request, port, path, headers, tls)


async def upgrade(port: int, subprotocols: list[str]) -> Response:
    """A WebSocket handshake request, answered by anything but 101 (http.client cannot go on after one)."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    if subprotocols:
        headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
    return await get(port, ENDPOINT_PATH, **headers)


def operators_app(events: list[str]) -> Starlette:
    """A stand-in for the operators' pages: ``/`` greets, and the lifespan is noted in ``events``."""

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello operator ({request.url.scheme}://…{request.url.path})")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    return Starlette(routes=[Route("/", home)], lifespan=lifespan)


# --------------------------------------------------------------------------- one address, two kinds of client


def test_a_web_app_answers_http_on_the_port_where_an_agent_is_connected(db: Path) -> None:
    token = add_slot(db)
    events: list[str] = []

    async def main() -> None:
        async with Hub(db, web_app=operators_app(events)) as hub:
            assert events == ["startup"]
            client, _ = await authenticated(hub.url, token)
            page = await get(hub.port, "/")
            assert (page.status, page.text) == (200, "hello operator (http://…/)")
            assert "date" in page.headers and "server" not in page.headers
            assert (await get(hub.port, "/nowhere")).status == 404  # the web app's own 404
            await client.heartbeat(1)
            assert await client.expect(HeartbeatAck) == HeartbeatAck(n=1)  # the agent's link is untouched
            assert hub.connected("s1")
        assert events == ["startup", "shutdown"]

    run(main())


def test_with_tls_the_web_app_is_served_over_https_beside_wss(db: Path, tmp_path: Path) -> None:
    token = add_slot(db)
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with Hub(db, ssl_context=server_context, web_app=operators_app([])) as hub:
            client = await RawClient.open(hub.url, ssl_context=client_context)
            assert isinstance(await client.authenticate(token), Authenticated)
            page = await get(hub.port, "/", tls=client_context)
            assert (page.status, page.text) == (200, "hello operator (https://…/)")

    run(main())


def test_without_a_web_app_http_gets_a_short_plain_404(db: Path) -> None:
    async def main() -> None:
        async with Hub(db) as hub:
            page = await get(hub.port, "/")
            assert page.status == 404
            assert page.headers["content-type"].startswith("text/plain")
            assert ENDPOINT_PATH.encode() in page.body and len(page.body) < 200

    run(main())


def test_a_web_app_that_fails_to_start_stops_the_hub_from_starting(db: Path) -> None:
    @contextlib.asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no templates")
        yield

    async def main() -> None:
        hub = Hub(db, web_app=Starlette(lifespan=broken))
        with pytest.raises(HubError, match="web app failed to start"):
            await hub.start()
        async with Hub(db) as again:  # nothing was left open
            assert again.port

    run(main())


# --------------------------------------------------------------------------- refusals are real HTTP answers


def test_a_handshake_without_a_ksocket_subprotocol_is_an_http_400(db: Path) -> None:
    async def main() -> None:
        async with Hub(db) as hub:
            for offered in ([], ["chat"]):
                answer = await upgrade(hub.port, offered)
                assert answer.status == 400
                assert b"ksocket.v2 or ksocket.v1" in answer.body
                assert answer.headers["content-type"].startswith("text/plain")

    run(main())


def test_a_handshake_beyond_max_startups_is_an_http_503_and_a_freed_place_is_taken_again(db: Path) -> None:
    token = add_slot(db)

    async def main() -> None:
        async with Hub(db, max_startups=StartupLimit.parse("1")) as hub:
            idle = await RawClient.open(hub.url)
            answer = await upgrade(hub.port, ["ksocket.v2"])
            assert answer.status == 503 and b"too many connections" in answer.body
            assert isinstance(await idle.authenticate(token), Authenticated)
            assert (await upgrade(hub.port, [])).status == 400  # counted again, then refused for its subprotocol
            await RawClient.open(hub.url)  # the 400 freed its place

    run(main())


def test_a_connection_that_sends_no_whole_request_in_time_is_closed(db: Path) -> None:
    async def main() -> None:
        async with Hub(db, auth_timeout=0.3) as hub:
            loop = asyncio.get_running_loop()
            for opening in (b"", b"GET /api/ksocket/connect HTTP/1.1\r\nHost: x\r\n"):  # silent; a half request
                reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
                writer.write(opening)
                start = loop.time()
                assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed, with nothing said
                assert loop.time() - start < TIMEOUT
                writer.close()

    run(main())


# --------------------------------------------------------------------------- logs


def test_no_token_cookie_or_query_string_reach_any_log_line(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = add_slot(db)
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async with Hub(db, web_app=operators_app([])) as hub:
            client, _ = await authenticated(hub.url, token)
            await client.heartbeat(1)
            await client.expect(HeartbeatAck)
            assert (await get(hub.port, f"/?code={token}")).status == 200
            headers = {"Cookie": f"session={token}", "Authorization": f"Bearer {token}"}
            async with connect(hub.url, subprotocols=[Subprotocol("ksocket.v2")], additional_headers=headers):
                pass

    run(main())
    server_lines = [record.getMessage() for record in caplog.records if record.name != "websockets.client"]
    assert not [line for line in server_lines if token in line]
    assert any(line.startswith("< user-agent:") for line in server_lines)  # the handshake's other headers are
    names = {record.name for record in caplog.records}
    assert "ksocket.hub.websockets" in names  # websockets' frame log, on the hub's filtered logger
    access = [record.getMessage() for record in caplog.records if record.name == "ksocket.hub.access"]
    assert any('"GET / HTTP/1.1" 200' in line for line in access), access
    assert not any("WebSocket" in record.getMessage() for record in caplog.records if record.name.startswith("uvicorn"))


# --------------------------------------------------------------------------- AgentSocket on scripted ASGI messages


class FakeWire:
    def __init__(self) -> None:
        self.close_frame_seen = False
        self.lifted = False

    def lift_frame_limit(self) -> None:
        self.lifted = True


def scripted(*received: dict[str, Any]) -> tuple[AgentSocket, list[dict[str, Any]], FakeWire]:
    """A socket whose ``receive`` gives ``received`` in order (after ``websocket.connect``); what it sends is kept."""
    messages = iter([{"type": "websocket.connect"}, *received])
    sent: list[dict[str, Any]] = []
    wire = FakeWire()

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "websocket", "client": ("::1", 5), "subprotocols": ["a", "b"], "extensions": {WIRE: wire}}
    return run(AgentSocket.connect(scope, receive, send)), sent, wire


def test_an_agent_socket_reports_a_lost_connection_without_a_code_and_an_agents_close_with_its_own() -> None:
    async def ends(socket: AgentSocket) -> int | None:
        assert await socket.recv() == "hello"
        with pytest.raises(Closed) as closed:
            await socket.recv()
        with pytest.raises(Closed):  # and stays closed, with nothing more read
            await socket.send("late")
        return closed.value.code

    lost, _, _ = scripted(
        {"type": "websocket.receive", "text": "hello"}, {"type": "websocket.disconnect", "code": 1005}
    )
    assert (run(ends(lost)), lost.close_code, lost.peer, lost.offered) == (None, None, "[::1]:5", ["a", "b"])

    left, _, wire = scripted(
        {"type": "websocket.receive", "text": "hello"}, {"type": "websocket.disconnect", "code": 4000}
    )
    wire.close_frame_seen = True
    assert run(ends(left)) == left.close_code == 4000


def test_an_agent_socket_closed_by_the_hub_reports_the_hubs_code_and_sends_nothing_more() -> None:
    sock, sent, wire = scripted()

    async def main() -> None:
        await sock.accept("b")
        sock.lift_frame_limit()
        await sock.send(b"\x00")
        await sock.close(4409, "replaced")
        await sock.close(1001)  # once only
        with pytest.raises(Closed) as closed:
            await sock.send("late")
        assert closed.value.code == 4409

    run(main())
    assert sock.subprotocol == "b" and wire.lifted
    assert [message["type"] for message in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["bytes"] == b"\x00" and sent[2]["code"] == 4409


def test_an_agent_socket_refuses_a_handshake_with_a_plain_http_answer() -> None:
    sock, sent, _ = scripted()
    run(sock.refuse(503, "busy\n"))
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 503
    assert sent[1] == {"type": "websocket.http.response.body", "body": b"busy\n"}
    with pytest.raises(Closed):
        run(sock.recv())


def test_the_hub_stops_while_a_web_request_and_an_agent_are_connected(db: Path) -> None:
    token = add_slot(db)

    async def main() -> None:
        async with Hub(db, web_app=operators_app([])) as hub:
            client, _ = await authenticated(hub.url, token)
            keep_alive = socket.create_connection(("127.0.0.1", hub.port))  # an idle HTTP connection
        assert await client.closed() == 1001
        keep_alive.settimeout(TIMEOUT)
        assert keep_alive.recv(1) == b""  # closed by the stop
        keep_alive.close()

    run(main())


def test_a_stop_is_not_held_for_ever_by_an_agent_that_reads_nothing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's writes to an agent that stopped reading wait on a full socket: after the stop's grace,
    its connection is aborted and the stop ends."""
    token = add_slot(db)
    monkeypatch.setattr(server, "STOP_GRACE", 0.5)

    async def main() -> None:
        hub = RecordingHub(db)
        await hub.start()
        client = RawClient(await connect(hub.url, subprotocols=[Subprotocol("ksocket.v2")], max_queue=1))
        assert isinstance(await client.authenticate(token), Authenticated)

        async def flood() -> None:
            while True:
                await hub.send_raw("s1", "x" * 1024 * 1024)

        flooding = asyncio.create_task(flood())
        await until(lambda: _write_stalled(hub))
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(hub.stop(), TIMEOUT)
        assert loop.time() - start < TIMEOUT
        with pytest.raises(NotConnected):
            await flooding

    run(main())


def _write_stalled(hub: RecordingHub) -> bool:
    return hub._link("s1").ws.transport.get_write_buffer_size() > 64 * 1024  # above asyncio's high-water mark
