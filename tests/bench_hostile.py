"""Hostile-peer benchmark: what ``ksocket hub serve`` holds and how it answers while peers misbehave.

The hub runs as ``ksocket hub serve`` in its own process on loopback (its memory is read from
``/proc``), with its default limits unless a row says otherwise. Three measurements:

* 1,000 connections that never authenticate, each holding the first 4,095 bytes of a 4 KiB first
  frame: how many the hub entertains (``--max-startups``; beyond, HTTP 503) and its RSS.
* 40 results of 15 MiB from one slot (operations the hub issued), sent as fast as the hub acks
  them, by a flooding agent in another process: the hub's peak RSS.
* Meanwhile, another slot's heartbeat round trips, against the same slot's while nothing else
  happens (the reference).

And one on the agent's side: a WinRM inspection whose host answers one query with a reply of
768 MiB (the WS-Management stand-in, tests/wsmanserver.py, in a process of its own, streams it a
MiB at a time): the peak RSS of the inspecting process, beside its peak for a reply of normal size.

``python -m tests.bench hostile`` (``inv bench hostile``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ksocket import protocol
from ksocket.hub.store import Store

IDLE_CONNECTIONS = 1000
RESULTS = 40
RESULT_MIB = 15
MiB = 1024 * 1024


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of process ``pid``, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}  # type: ignore[union-attr]
    return values["VmRSS"], values["VmHWM"]


class ServedHub:
    """``ksocket hub serve`` on 127.0.0.1, port chosen by the kernel, in a process of its own."""

    def __init__(self, db: Path, *options: str) -> None:
        self.db = db
        self.options = options
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self._drainer: asyncio.Future[None] | None = None

    async def __aenter__(self) -> ServedHub:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "ksocket.cli", "hub", "serve", "--listen", "127.0.0.1:0", "--db", str(self.db), *self.options),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "KSOCKET_HOME": str(self.db.parent)},
        )
        assert self.process.stdout is not None
        while not self.url:
            line = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode()
            if not line:
                raise RuntimeError("hub serve ended before it listened")
            match = re.search(r"listening on (ws://\S+)", line)
            self.url = match.group(1) if match else ""
        self._drainer = asyncio.ensure_future(self._drain())  # its log, read so that it never blocks on it
        return self

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while await self.process.stdout.read(65536):
            pass

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        await self.process.wait()
        if self._drainer is not None:
            await self._drainer


async def authenticated(url: str, token: str, agent: str) -> ClientConnection:
    websocket = await connect(
        url, subprotocols=[Subprotocol(protocol.SUBPROTOCOL)], max_size=None, ping_interval=None, compression=None
    )
    hello = protocol.Authenticate(token=token, name="bench", version="0", agent=agent)
    await websocket.send(protocol.serialize(hello))
    answer = protocol.parse(await websocket.recv())
    assert isinstance(answer, protocol.Authenticated), answer
    return websocket


# --------------------------------------------------------------------------- unauthenticated connections


async def idle_handshake(port: int) -> asyncio.StreamWriter | None:
    """A WebSocket handshake, then 4,095 bytes of a 4,096-byte first frame; None if the hub refused it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /api/ksocket/connect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {protocol.SUBPROTOCOL}\r\n\r\n"
        ).encode()
    )
    status = await reader.readline()
    if b" 101 " not in status:
        writer.close()
        return None
    await reader.readuntil(b"\r\n\r\n")
    header = bytes([0x81, 0xFE]) + (4096).to_bytes(2, "big") + b"\0\0\0\0"  # text, masked with zeros
    writer.write(header + b"x" * 4095)
    await writer.drain()
    return writer


async def unauthenticated_case(folder: Path, *options: str) -> tuple[int, float, float]:
    """(connections the hub took, its RSS before, its RSS holding them)."""
    async with ServedHub(folder / f"idle{len(options)}.db", *options) as hub:
        port = int(hub.url.rsplit(":", 1)[1].split("/")[0])
        before, _ = rss(hub.pid)
        writers = [await idle_handshake(port) for _ in range(IDLE_CONNECTIONS)]
        await asyncio.sleep(0.5)
        holding, _ = rss(hub.pid)
        for writer in writers:
            if writer is not None:
                writer.close()
        return sum(writer is not None for writer in writers), before, holding


# --------------------------------------------------------------------------- a flooding slot


async def flood(url: str, token: str, count: int) -> None:
    """The flooding agent (in its own process): each of the ``count`` operations it is sent answered with 15 MiB."""
    websocket = await authenticated(url, token, "flooder")
    blob = "x" * (RESULT_MIB * MiB - 100)
    operations = [protocol.parse(await websocket.recv()) for _ in range(count)]

    async def acks() -> None:
        for _ in operations:
            await websocket.recv()

    acked = asyncio.ensure_future(acks())
    for seq, operation in enumerate(operations, 1):
        assert isinstance(operation, protocol.Operation)
        await websocket.send(protocol.serialize(protocol.Result.success(id=operation.id, seq=seq, data={"b": blob})))
    await acked
    await websocket.close()


async def heartbeats(websocket: ClientConnection, until: asyncio.Future[object] | None, count: int) -> list[float]:
    times: list[float] = []
    n = 0
    while (until is None and n < count) or (until is not None and not until.done()):
        n += 1
        start = time.perf_counter()
        await websocket.send(protocol.serialize(protocol.Heartbeat(n=n)))
        await websocket.recv()
        times.append(time.perf_counter() - start)
    return times


async def flood_case(folder: Path, count: int) -> tuple[list[float], list[float], float, float, float, float]:
    """(idle RTTs, flooded RTTs, flood seconds, RSS before, peak RSS, database MiB) for ``count`` results."""
    db = folder / f"flood{count}.db"
    with Store(db) as store:
        flooder_token, watcher_token = store.add_slot("flooder"), store.add_slot("watcher")
        for _ in range(count):
            store.add_operation("flooder", "system.info")
    async with ServedHub(db) as hub:
        watcher = await authenticated(hub.url, watcher_token, "watcher")
        idle = await heartbeats(watcher, None, 2000)
        before, _ = rss(hub.pid)
        start = time.perf_counter()
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench_hostile", "--flood", hub.url, flooder_token, str(count)
        )
        done = asyncio.ensure_future(flooder.wait())
        flooded = await heartbeats(watcher, done, 0)
        seconds = time.perf_counter() - start
        _, peak = rss(hub.pid)
        await watcher.close()
    return idle, flooded, seconds, before, peak, db.stat().st_size / MiB


WINRM_REPLY_MIB = 768
WINRM_SNIPPET = """
import asyncio, json, re, sys
from pathlib import Path
from ksocket.collectors.base import NullContext
from ksocket.collectors.inspect.winrm import WinRMInspector
from ksocket.credentials.models import Account, WinRMCredential
credential = WinRMCredential(path=Path("/bench.toml"), port=int(sys.argv[1]), allow_basic_over_http=True,
                             account=Account(username="Administrator", password="bench-Passw0rd"))
document = asyncio.run(WinRMInspector().inspect("127.0.0.1", credential, NullContext()))
peak = int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
print(json.dumps({"peak": peak, "errors": [e["message"] for e in document["errors"]]}))
"""


def winrm_case(folder: Path, huge: bool) -> tuple[float, str]:
    """The inspecting process's peak RSS (MiB) and its first error note, the server in another process."""
    import json
    import multiprocessing
    import subprocess

    ready: multiprocessing.Queue[int] = multiprocessing.Queue()
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=_serve_winrm, args=(folder, huge, ready, stop))
    server.start()
    try:
        port = ready.get(timeout=30)
        done = subprocess.run(
            [sys.executable, "-c", WINRM_SNIPPET, str(port)], capture_output=True, text=True, timeout=300, check=True
        )
    finally:
        stop.set()
        server.join(30)
    measured = json.loads(done.stdout)
    return measured["peak"], (measured["errors"] or ["-"])[0]


def _serve_winrm(folder: Path, huge: bool, ready: object, stop: object) -> None:
    from tests import wsmanserver

    wsmanserver.HUGE_REPLY = WINRM_REPLY_MIB * MiB
    options = {"huge_receive_of": "disks"} if huge else {}
    users = {"Administrator": "bench-Passw0rd"}
    with wsmanserver.WSManServer(folder, users=users, auth=("basic",), **options) as running:
        ready.put(running.port)  # type: ignore[attr-defined]
        stop.wait()  # type: ignore[attr-defined]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        default = asyncio.run(unauthenticated_case(folder))
        unlimited = asyncio.run(unauthenticated_case(folder, "--max-startups", str(2 * IDLE_CONNECTIONS)))
        floods = {count: asyncio.run(flood_case(folder, count)) for count in (RESULTS // 4, RESULTS)}
        winrm = {huge: winrm_case(folder, huge) for huge in (False, True)}
    print("\nHub under hostile peers (ksocket hub serve on loopback, its own process)")
    print(f"{'unauthenticated connections':44} {'taken':>6} {'RSS before MiB':>15} {'RSS holding MiB':>16}")
    for label, (taken, rss_before, rss_holding) in (
        (f"{IDLE_CONNECTIONS} x 4 KiB, --max-startups default", default),
        (f"{IDLE_CONNECTIONS} x 4 KiB, --max-startups {2 * IDLE_CONNECTIONS}", unlimited),
    ):
        print(f"{label:44} {taken:6d} {rss_before:15.1f} {rss_holding:16.1f}")
    heading = f"results of {RESULT_MIB} MiB from one slot"
    print(f"{heading:44} {'s':>6} {'RSS before MiB':>15} {'RSS peak MiB':>16}")
    for count, (_, _, seconds, before, peak, db_mib) in floods.items():
        print(f"{f'{count} ({db_mib:.0f} MiB stored)':44} {seconds:6.1f} {before:15.1f} {peak:16.1f}")
    idle, flooded = floods[RESULTS][:2]
    print(f"{'another slot heartbeat RTT':44} {'n':>6} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9} {'mean µs':>9}")
    for label, rtts in (("idle hub (reference)", idle), (f"while one slot sends {RESULTS} results", flooded)):
        print(
            f"{label:44} {len(rtts):6d} {percentile(rtts, 0.5) * 1e6:9.0f} {percentile(rtts, 0.99) * 1e6:9.0f}"
            f" {max(rtts) * 1e6:9.0f} {statistics.fmean(rtts) * 1e6:9.0f}"
        )
    print("\nAgent: one WinRM inspection (the WS-Management stand-in in its own process)")
    print(f"{'reply':44} {'peak RSS MiB':>13}  note")
    for huge, (peak, note) in winrm.items():
        label = f"one query answered with {WINRM_REPLY_MIB} MiB" if huge else "every reply of normal size"
        print(f"{label:44} {peak:13.1f}  {note}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--flood"]:
        asyncio.run(flood(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        raise SystemExit(0)
    raise SystemExit(main())
