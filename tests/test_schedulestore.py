"""``ksocket.hub.schedulestore``: schedules in the hub's database, fired by the poller's step at a given time."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from ksocket.hub.errors import HubError
from ksocket.hub.schedulestore import Schedules, fire_due
from ksocket.hub.store import Store
from ksocket.protocol import Result

HOUR = 3600.0


def test_a_schedule_fires_when_due_and_online_once_per_run(tmp_path: Path) -> None:
    with Store(tmp_path / "hub.db") as store:
        store.add_slot("lab")
        assert fire_due(store, ["lab"], 0.0) == []  # no schedule, no table: nothing
        schedules = Schedules(store)
        schedule_id = schedules.add("lab", {"seeds": ["198.18.0.0/29"]}, HOUR, first_due=100.0)
        assert fire_due(store, ["lab"], 99.0) == []
        assert fire_due(store, [], 100.0) == []  # offline: it waits
        (first,) = fire_due(store, ["lab"], 100.0 + 5 * HOUR)
        operation = store.operation(first)
        assert operation is not None and operation.name == "networks.discover" and operation.state == "pending"
        assert operation.params == {"seeds": ["198.18.0.0/29"]}
        (row,) = schedules.schedules()
        assert (row.id, row.next_due, row.last_operation) == (schedule_id, 100.0 + 6 * HOUR, first)

        assert fire_due(store, ["lab"], 100.0 + 7 * HOUR) == []  # due again, but its run has no result yet
        store.claim_pending(["lab"])
        store.add_result("lab", "agent-1", Result.success(id=first, seq=1, data={}))
        (second,) = fire_due(store, ["lab"], 100.0 + 7 * HOUR)
        assert second != first
        assert schedules.schedules()[0].next_due == 100.0 + 8 * HOUR


def test_a_schedule_of_a_revoked_slot_is_logged_and_waits_for_its_next_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store(tmp_path / "hub.db") as store:
        store.add_slot("lab")
        schedule_id = Schedules(store).add("lab", {}, HOUR, first_due=0.0)
        store.revoke("lab")
        assert fire_due(store, ["lab"], 10.0) == []
        assert Schedules(store).schedules()[0].next_due == HOUR
        with pytest.raises(HubError, match="slot 'lab' is revoked"):
            Schedules(store).add("lab", {}, HOUR, first_due=0.0)
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage().startswith(f"hub: schedule {schedule_id} could not queue its discovery on slot lab: ")


def test_schedules_of_a_newer_hub_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with Store(path) as store:
        store.add_slot("lab")
        Schedules(store).add("lab", {}, HOUR, first_due=0.0)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE schedule_schema SET version = 2")
    with Store(path) as store, pytest.raises(HubError, match="schedules made by a newer hub"):
        Schedules(store).add("lab", {}, HOUR, first_due=0.0)
    with Store(path) as store:
        assert len(Schedules(store).schedules()) == 1  # the refused one was not added
