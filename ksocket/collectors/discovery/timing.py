"""Timing in the spirit of nmap's: a paced send rate, a round-trip estimate per path, and a retry count
sized to the loss the scan observes.

- :class:`Pacer` lets one packet go every ``1/rate`` seconds on a fixed schedule (not a bucket that
  fills while idle), catching up after a late wake-up by at most ``max_lag`` seconds' worth of
  packets, so the rate measured over any stretch of the scan stays at the cap and a stall never
  turns into a burst.
- :class:`RttEstimator` is RFC 6298's (nmap's) ``srtt``/``rttvar``: the wait for a reply is
  ``srtt + 4·rttvar``, clamped between a floor and the scan's ``timeout``.
- :class:`RetryPolicy` decides how many tries a silent target gets: at least two, at least one
  more than the latest try that ever drew a first answer (nmap's ``max_successful_tryno + 1``),
  and enough that, at the loss rate estimated from the tries live hosts needed, fewer than
  ``expected_misses`` live hosts are expected to stay silent through all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Pacer:
    rate: float
    start: float
    max_lag: float = 0.01  # slots older than this are given up, not sent in a burst
    next_at: float = field(init=False)
    sent: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / self.rate
        self.next_at = self.start

    def ready(self, now: float) -> bool:
        return now >= self.next_at

    def consume(self, now: float) -> None:
        """Spends the slot that is due (call only when :meth:`ready`)."""
        floor = now - max(self.max_lag, 2 * self.interval)
        if self.next_at < floor:
            self.next_at = floor  # we slept through slots: give them up rather than burst
        self.next_at += self.interval
        self.sent += 1


@dataclass
class RttEstimator:
    initial: float
    floor: float
    ceiling: float
    srtt: float | None = None
    rttvar: float = 0.0
    samples: int = 0

    def sample(self, rtt: float) -> None:
        if rtt < 0 or not math.isfinite(rtt):
            return
        self.samples += 1
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
            return
        delta = rtt - self.srtt
        self.srtt += delta / 8
        self.rttvar += (abs(delta) - self.rttvar) / 4

    @property
    def timeout(self) -> float:
        if self.srtt is None:
            return min(self.initial, self.ceiling)
        return min(self.ceiling, max(self.floor, self.srtt + 4 * self.rttvar))


@dataclass
class RetryPolicy:
    max_tries: int = 10
    min_tries: int = 2
    expected_misses: float = 0.01
    found: int = 0
    extra_tries: int = 0  # sum over live hosts of the tries that went unanswered before the first answer
    max_successful_try: int = 0

    def record(self, tryno: int) -> None:
        """A target answered for the first time on try ``tryno`` (0 = the first probe)."""
        self.found += 1
        self.extra_tries += tryno
        self.max_successful_try = max(self.max_successful_try, tryno)

    @property
    def loss(self) -> float:
        """The estimated chance that one try at a live host goes unanswered (geometric MLE)."""
        if self.found == 0:
            return 0.0
        return self.extra_tries / (self.extra_tries + self.found)

    def allowed_tries(self) -> int:
        tries = max(self.min_tries, self.max_successful_try + 2)
        loss = self.loss
        if 0 < loss < 1 and self.found:
            # found · loss^T < expected_misses
            needed = math.log(self.expected_misses / self.found) / math.log(loss)
            tries = max(tries, math.ceil(needed))
        return min(self.max_tries, tries)
