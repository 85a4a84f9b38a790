"""Lifecycle's outcome survives a Redis outage at the moment it is recorded (no Redis: a journal stand-in)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from dramatiq.middleware import SkipMessage

from ksocket.collectors.base import default_environment
from ksocket.protocol import Result
from tasks.journal import decode_result
from tasks.middleware import Lifecycle


class OutageJournal:
    """Refuses the first ``outage`` writes as a Redis that went away would, then takes them."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.finished: list[tuple[str, str]] = []
        self.requeues: list[str] = []

    def _write(self) -> None:
        if self.outage:
            self.outage -= 1
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def finish(self, op_id: str, outcome: str, delivery: object = None) -> Result:
        self._write()
        self.finished.append((op_id, outcome))
        return decode_result(op_id, len(self.finished), outcome)

    def requeued(self, op_id: str, attempt: str) -> None:
        self._write()
        self.requeues.append(op_id)


BROKER: Any = SimpleNamespace(actors={})  # knows no continuation actor


def message(failed: bool = False) -> Any:
    return SimpleNamespace(args=["op-1"], actor_name="test.body", failed=failed, options={})


def test_an_outcome_refused_by_redis_is_recorded_once_redis_is_back() -> None:
    journal = OutageJournal(outage=3)
    lifecycle = Lifecycle(journal, default_environment())  # type: ignore[arg-type]
    lifecycle.after_process_message(BROKER, message(failed=True), exception=RuntimeError("failed for good"))  # type: ignore[arg-type]
    assert journal.outage == 0
    assert [op_id for op_id, _ in journal.finished] == ["op-1"]


def test_a_requeue_refused_by_redis_is_recorded_once_redis_is_back() -> None:
    journal = OutageJournal(outage=2)
    lifecycle = Lifecycle(journal, default_environment())  # type: ignore[arg-type]
    lifecycle.after_process_message(BROKER, message(failed=False), exception=RuntimeError("try again"))  # type: ignore[arg-type]
    assert journal.requeues == ["op-1"] and journal.finished == []


def test_a_stopping_worker_gives_up_and_leaves_the_message_to_run_again() -> None:
    journal = OutageJournal(outage=10**6)
    lifecycle = Lifecycle(journal, default_environment())  # type: ignore[arg-type]
    stopper = threading.Timer(0.2, lifecycle.stopping.set)
    stopper.start()
    with pytest.raises(redis.ConnectionError):
        lifecycle.after_process_message(BROKER, message(failed=True), exception=RuntimeError("failed for good"))  # type: ignore[arg-type]
    assert journal.finished == []


def test_a_message_its_admission_started_runs_without_a_start_and_is_released_if_the_worker_stops() -> None:
    journal = OutageJournal(outage=0)  # it has no start(): calling one fails the test
    lifecycle = Lifecycle(journal, default_environment())  # type: ignore[arg-type]
    started = message()
    lifecycle.started_at_admission(started, "worker/m-1")
    lifecycle.before_process_message(BROKER, started)
    assert lifecycle._attempts == {"op-1": "worker/m-1"}  # renewed, and ended, as any attempt
    lifecycle._forget_attempt("op-1")  # as its outcome would
    enqueued: list[str] = []
    broker: Any = SimpleNamespace(actors={}, enqueue=enqueued.append)
    lifecycle.stopping.set()
    stopped = message()
    stopped.copy = lambda: "a copy for the next worker"
    lifecycle.started_at_admission(stopped, "worker/m-2")
    with pytest.raises(SkipMessage):
        lifecycle.before_process_message(broker, stopped)
    assert journal.requeues == ["op-1"]  # released first: the next worker need not wait out its lease
    assert enqueued == ["a copy for the next worker"] and lifecycle._attempts == {}
