"""Link benchmark: frames per second and heartbeat round trip through the reference hub on loopback,
beside a bare ``websockets`` echo server on the same machine (the reference).

Both servers run in this process on one event loop, and both clients send the same frame:
the difference is what the hub does per frame (parse, validate, answer, record).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from ksocket import protocol
from ksocket.hub.server import Hub
from ksocket.hub.store import Store

ROUND_TRIPS = 3000
PIPELINED = 30000
HEARTBEAT = protocol.serialize(protocol.Heartbeat(n=1))


async def round_trips(websocket: ClientConnection, frame: str) -> list[float]:
    times = []
    for _ in range(ROUND_TRIPS):
        start = time.perf_counter()
        await websocket.send(frame)
        await websocket.recv()
        times.append(time.perf_counter() - start)
    return times


async def throughput(websocket: ClientConnection, frame: str) -> float:
    async def receive() -> None:
        for _ in range(PIPELINED):
            await websocket.recv()

    start = time.perf_counter()
    receiver = asyncio.ensure_future(receive())
    for _ in range(PIPELINED):
        await websocket.send(frame)
    await receiver
    return PIPELINED / (time.perf_counter() - start)


async def echo_case() -> tuple[float, list[float]]:
    async def echo(websocket: ServerConnection) -> None:
        async for message in websocket:
            await websocket.send(message)

    async with serve(echo, "127.0.0.1", 0, ping_interval=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None, compression=None) as websocket:
            return await throughput(websocket, HEARTBEAT), await round_trips(websocket, HEARTBEAT)


async def hub_case(folder: Path) -> tuple[float, list[float]]:
    with Store(folder / "hub.db") as store:
        token = store.add_slot("bench")
    async with (
        Hub(folder / "hub.db") as hub,
        connect(
            hub.url, subprotocols=[Subprotocol(protocol.SUBPROTOCOL)], ping_interval=None, compression=None
        ) as websocket,
    ):
        hello = protocol.Authenticate(token=token, name="bench", version="bench", agent="bench-agent")
        await websocket.send(protocol.serialize(hello))
        assert isinstance(protocol.parse(await websocket.recv()), protocol.Authenticated)
        return await throughput(websocket, HEARTBEAT), await round_trips(websocket, HEARTBEAT)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        cases: list[tuple[str, Callable[[], Awaitable[tuple[float, list[float]]]]]] = [
            ("websockets echo (reference)", echo_case),
            ("ksocket hub: heartbeat -> heartbeat-ack", lambda: hub_case(Path(folder))),
        ]
        rows = [(name, *asyncio.run(case())) for name, case in cases]
    print(f"\nLink on loopback: {PIPELINED} pipelined frames, {ROUND_TRIPS} sequential round trips")
    print(f"{'path':42} {'frames/s':>10} {'RTT p50 µs':>11} {'RTT p99 µs':>11} {'mean µs':>9}")
    for name, rate, rtts in rows:
        print(
            f"{name:42} {rate:10.0f} {percentile(rtts, 0.5) * 1e6:11.0f} {percentile(rtts, 0.99) * 1e6:11.0f}"
            f" {statistics.fmean(rtts) * 1e6:9.0f}"
        )
    (_, echo_rate, echo_rtts), (_, hub_rate, hub_rtts) = rows
    print(
        f"{'ratio hub / echo':42} {hub_rate / echo_rate:10.2f} "
        f"{percentile(hub_rtts, 0.5) / percentile(echo_rtts, 0.5):11.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
