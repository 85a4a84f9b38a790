"""Real proxies on loopback for the link's tests: Debian's tinyproxy (HTTP CONNECT, Basic auth) and
microsocks (SOCKS5, user name and password), each started on a free port and stopped after the test.

Each proxy writes its own log; :meth:`RunningProxy.tunnels_to` counts the tunnels it opened to a
port, so that a test sees that the link went through the proxy, not only that it worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

STARTUP = 10.0
"""How long a proxy may take to accept connections (it usually takes milliseconds)."""


@dataclass(frozen=True)
class RunningProxy:
    url: str  # with the credentials when the proxy requires them
    log: Path
    request_line: str  # how the log ends the line of a client's request, with {port} for the destination's
    tunnel_line: str  # what the log says when a tunnel opened (tinyproxy's line does not name the port)

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def requests_to(self, port: int) -> int:
        """How many tunnels to 127.0.0.1:``port`` clients asked for, per the proxy's own log."""
        wanted = self.request_line.format(port=port)
        return sum(line.endswith(wanted) for line in self.lines())

    def tunnels_to(self, port: int) -> int:
        """How many tunnels to 127.0.0.1:``port`` the proxy opened (for a test whose proxy serves one hub)."""
        return min(self.requests_to(port), sum(self.tunnel_line in line for line in self.lines()))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: ./dev install adds it (SYSTEM_PACKAGES)")
    return path


@contextlib.contextmanager
def _serving(command: list[str], port: int, log: Path) -> Iterator[None]:
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _userinfo(user: str | None, password: str | None) -> str:
    return f"{user}:{password}@" if user is not None else ""


@contextlib.contextmanager
def tinyproxy(folder: Path, user: str | None = None, password: str | None = None) -> Iterator[RunningProxy]:
    """tinyproxy on 127.0.0.1, requiring Basic auth when ``user`` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log = _free_port(), folder / "tinyproxy.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 60",
        f'LogFile "{log}"',
        "LogLevel Connect",  # a line per client and per request: what tunnels_to counts
        "MaxClients 50",
        # no ConnectPort line: CONNECT to any port (the hub's is a random one)
    ]
    if user is not None:
        lines.append(f"BasicAuth {user} {password}")
    conf = folder / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")
    with _serving([_program("tinyproxy"), "-d", "-c", str(conf)], port, folder / "tinyproxy.out"):
        url = f"http://{_userinfo(user, password)}127.0.0.1:{port}"
        # tinyproxy logs each request, then on a line of its own whether it connected
        yield RunningProxy(url, log, "CONNECT 127.0.0.1:{port} HTTP/1.1", "Established connection to host")


@contextlib.contextmanager
def microsocks(folder: Path, user: str | None = None, password: str | None = None) -> Iterator[RunningProxy]:
    """microsocks (SOCKS5) on 127.0.0.1, requiring a user name and password when ``user`` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log = _free_port(), folder / "microsocks.log"
    command = [_program("microsocks"), "-i", "127.0.0.1", "-p", str(port)]
    if user is not None:
        command += ["-u", user, "-P", str(password)]
    with _serving(command, port, log):
        url = f"socks5://{_userinfo(user, password)}127.0.0.1:{port}"
        # microsocks logs a tunnel once it is open, and nothing for a refused client
        yield RunningProxy(url, log, "connected to 127.0.0.1:{port}", "connected to ")


@contextlib.asynccontextmanager
async def tls_front(proxy: RunningProxy, context: ssl.SSLContext) -> AsyncIterator[RunningProxy]:
    """``proxy`` behind TLS on another loopback port: an https:// proxy, since tinyproxy speaks no TLS.

    The front only ends the TLS and relays bytes; the proxying, and the log, are still tinyproxy's.
    """
    backend = int(proxy.url.rpartition(":")[2])

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def relay(client: asyncio.StreamReader, answer: asyncio.StreamWriter) -> None:
        upstream, request = await asyncio.open_connection("127.0.0.1", backend)
        await asyncio.gather(pipe(client, request), pipe(upstream, answer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    rest = proxy.url.partition("://")[2]
    try:
        yield dataclasses.replace(proxy, url=f"https://{rest.rpartition(':')[0]}:{port}")
    finally:
        server.close()
        await server.wait_closed()
