"""``ksocket.hub.schedule``: when a discovery's schedule fires, with the time given (no clock, no database)."""

from __future__ import annotations

import pytest

from ksocket.hub.schedule import Firing, Schedule, firings, format_duration, next_due, parse_duration

HOUR = 3600.0


def schedule(next_at: float = 0.0, *, last: str | None = None, slot: str = "lab") -> Schedule:
    return Schedule(1, slot, {"seeds": ["198.18.0.0/24"]}, HOUR, next_at, last)


def fire(s: Schedule, now: float, online: tuple[str, ...] = ("lab",), unfinished: tuple[str, ...] = ()):
    return firings([s], now, online=online, unfinished=unfinished)


@pytest.mark.parametrize(("text", "seconds"), [("1m", 60), ("30m", 1800), ("6h", 21600), ("1d", 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["30s", "0m", "1.5h", "6 hours", "", "h", "-1d"])
def test_a_wrong_duration_is_one_clear_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like 30m, 6h or 1d .*at least 1m\), got") as caught:
        parse_duration(text)
    assert "\n" not in str(caught.value)


def test_next_due_is_on_the_grid_after_now() -> None:
    assert next_due(100.0, HOUR, 50.0) == 100.0  # not due yet: stays
    assert next_due(100.0, HOUR, 100.0) == 100.0 + HOUR
    assert next_due(100.0, HOUR, 100.0 + HOUR - 1) == 100.0 + HOUR
    assert next_due(100.0, HOUR, 100.0 + HOUR) == 100.0 + 2 * HOUR


def test_a_due_schedule_fires_and_is_due_a_period_later() -> None:
    assert fire(schedule(0.0), -1.0) == []
    assert fire(schedule(0.0), 0.0) == [Firing(schedule(0.0), HOUR)]


def test_a_hub_down_for_ten_periods_fires_once_then_keeps_the_grid() -> None:
    back = 10 * HOUR + 120.0  # the hub starts again ten periods and two minutes late
    (firing,) = fire(schedule(0.0), back)
    assert firing.next_due == 11 * HOUR
    after = schedule(firing.next_due, last="op-1")
    assert fire(after, back + 1.0) == []  # not once per missed period
    assert fire(after, 11 * HOUR) == [Firing(after, 12 * HOUR)]


def test_a_slot_offline_for_three_periods_gets_it_once_when_it_comes_back() -> None:
    s = schedule(0.0, last="op-0")
    for period in range(3):
        assert fire(s, period * HOUR + 1.0, online=()) == []  # offline: it stays due, it does not pile up
    (firing,) = fire(s, 3 * HOUR + 5.0)
    assert firing.next_due == 4 * HOUR
    assert fire(schedule(firing.next_due, last="op-1"), 3 * HOUR + 6.0) == []


def test_a_run_still_unfinished_gets_no_second_run_behind_it() -> None:
    s = schedule(HOUR, last="op-1")
    assert fire(s, 2.5 * HOUR, unfinished=("op-1",)) == []
    assert fire(s, 3.5 * HOUR, unfinished=("op-1",)) == []
    (firing,) = fire(s, 3.6 * HOUR, unfinished=())  # finished: one run, the next on the grid
    assert firing.next_due == 4 * HOUR
    other = schedule(HOUR, last="op-2")
    assert fire(other, 2 * HOUR, unfinished=("op-1",)) == [Firing(other, 3 * HOUR)]  # another's run is no obstacle
