"""How many unauthenticated connections the hub entertains at once: OpenSSH's ``MaxStartups``.

A sans-I/O core: ``Startups`` counts the connections between their WebSocket handshake and
their authentication (or close), and says whether one more may start. With the limit
``START:RATE:FULL``, below START every newcomer is admitted; from START on, a newcomer is
refused with probability RATE % at START, rising linearly to 100 % at FULL; at FULL and above,
every one is. A plain ``N`` means ``N:100:N``: a cap. The random early refusals keep a flood of
idle handshakes from reaching FULL quickly while an agent's resume still gets in now and then.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_STARTUPS", "StartupLimit", "Startups"]


@dataclass(frozen=True)
class StartupLimit:
    start: int
    rate: int
    """Percent refused at ``start``."""
    full: int

    def __post_init__(self) -> None:
        if not (1 <= self.start <= self.full and 1 <= self.rate <= 100):
            raise ValueError(f"max-startups {self} must satisfy 1 <= START <= FULL and 1 <= RATE <= 100")

    @classmethod
    def parse(cls, text: str) -> StartupLimit:
        """``START:RATE:FULL`` or ``N``; ValueError for anything else."""
        parts = text.split(":")
        if len(parts) not in (1, 3) or not all(part.isdigit() for part in parts):
            raise ValueError(f"expected START:RATE:FULL or N, got {text!r}")
        if len(parts) == 1:
            return cls(int(parts[0]), 100, int(parts[0]))
        return cls(int(parts[0]), int(parts[1]), int(parts[2]))

    def __str__(self) -> str:
        return f"{self.start}:{self.rate}:{self.full}"


DEFAULT_MAX_STARTUPS = StartupLimit(100, 30, 400)
"""Agents authenticate in milliseconds, so even a fleet resuming at once after a hub restart stays
below 100; 400 first frames of at most a few KiB each are a few MiB."""


class Startups:
    """The count of unauthenticated connections and the decision to admit one more."""

    def __init__(self, limit: StartupLimit, *, chance: Callable[[], float] = random.random) -> None:
        self.limit = limit
        self.pending = 0
        self._chance = chance

    def refusal_odds(self) -> float:
        """The probability (0 to 1) that a newcomer is refused now."""
        start, rate, full = self.limit.start, self.limit.rate, self.limit.full
        if self.pending < start:
            return 0.0
        if self.pending >= full:
            return 1.0
        return (rate + (100 - rate) * (self.pending - start) / (full - start)) / 100

    def begin(self) -> bool:
        """Whether a newcomer may start; if so it counts until ``end``."""
        odds = self.refusal_odds()
        if odds > 0 and self._chance() < odds:
            return False
        self.pending += 1
        return True

    def end(self) -> None:
        """A connection counted by ``begin`` authenticated or closed."""
        self.pending -= 1
