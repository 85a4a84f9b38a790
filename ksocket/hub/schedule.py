"""Schedules of discoveries: when one fires, as pure functions of the time (no clock, no database).

A schedule runs ``networks.discover`` with its params on one slot every ``every`` seconds, on a grid
from its first due time. At a time ``now`` (:func:`firings`), a schedule fires when it is due, its slot is
online and its previous operation is finished; it then is due next at the first point of its grid after
``now`` (:func:`next_due`). Hence:

- a hub that was down for ten periods fires each overdue schedule once when it is back, not ten times;
- a slot that is offline when its schedule is due gets it when it comes back, once;
- a schedule whose previous run is unfinished waits for it (no second run is stacked behind it), then
  fires once.

``ksocket.hub.schedulestore`` keeps the schedules in the hub's database and the hub's poller fires them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

MIN_EVERY: Final = 60.0
"""The shortest period: one minute."""
_UNITS: Final = {"m": 60, "h": 3600, "d": 86400}
_DURATION: Final = re.compile(r"([1-9][0-9]{0,5})([mhd])")


def parse_duration(text: str) -> float:
    """``30m``, ``6h``, ``1d`` in seconds; ValueError (one line) for anything else or below a minute."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a duration like 30m, 6h or 1d (minutes, hours, days; at least 1m), got {text!r}")
    return float(int(match[1]) * _UNITS[match[2]])


def format_duration(seconds: float) -> str:
    """The shortest of ``Nd``, ``Nh``, ``Nm`` that says ``seconds`` exactly (else minutes)."""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds / 60:g}m"


@dataclass(frozen=True)
class Schedule:
    id: int
    slot: str
    params: Mapping[str, Any]
    every: float
    next_due: float
    last_operation: str | None
    """The operation it queued last (None before its first run)."""


@dataclass(frozen=True)
class Firing:
    """``schedule`` fires now; it is due next at ``next_due``."""

    schedule: Schedule
    next_due: float


def next_due(due: float, every: float, now: float) -> float:
    """The first point of the grid ``due + k * every`` after ``now`` (``due`` itself while it is ahead)."""
    if now < due:
        return due
    return due + (math.floor((now - due) / every) + 1) * every


def firings(
    schedules: Iterable[Schedule], now: float, *, online: Collection[str], unfinished: Collection[str]
) -> list[Firing]:
    """The schedules that fire at ``now``: due, their slot among ``online``, their last operation not among
    ``unfinished`` (the ids of operations without a result yet)."""
    return [
        Firing(schedule, next_due(schedule.next_due, schedule.every, now))
        for schedule in schedules
        if schedule.next_due <= now and schedule.slot in online and schedule.last_operation not in unfinished
    ]
