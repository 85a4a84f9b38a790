"""Timing in the spirit of nmap's: a paced send rate, a congestion window and a round-trip estimate per
path, and a retry count sized to the loss the scan observes.

- :class:`Pacer` lets one packet go every ``1/rate`` seconds on a fixed schedule (not a bucket that
  fills while idle), catching up after a late wake-up by at most ``max_lag`` seconds' worth of
  packets, so the rate measured over any stretch of the scan stays at the cap and a stall never
  turns into a burst.
- :class:`RttEstimator` is RFC 6298's (nmap's) ``srtt``/``rttvar``: the wait for a reply is
  ``srtt + 4·rttvar``, clamped between a floor and the scan's ``timeout``.
- :class:`Window` is a path's congestion window (nmap's ``cwnd``/``ssthresh``): how many tries may be
  in their wait at once. A try keeps its place to the end of its wait, answered or not (an answer
  comes in microseconds on a LAN, a silent target holds its place for the whole wait), so the window
  is a rate: ``cwnd`` tries per wait. It starts at its ceiling (the most the pacer can have waiting:
  ``rate`` times the longest wait), so a clean path, or one of silent addresses, is paced by ``rate``
  alone. A drop is a try that went unanswered though a later try at the same target was answered
  (nmap's drop detection by retransmit answers). When the drops are significantly more than
  ``tolerance`` of the tries they and the answers make, more than random loss explains, the window
  halves (once per epoch: only tries sent after the last decrease count); it grows on answers while
  the drops stay within ``tolerance``, by one per answer below ``ssthresh`` (slow start) and by
  ``1/cwnd`` above it, never above its ceiling nor below its floor. Retries back off (see
  :meth:`~.scheduler.Path.wait`): on a path that drops what exceeds its rate, a retry sent exactly
  one wait after its try would meet the same moment of the limiter's cycle again.
- :class:`RetryPolicy` decides how many tries a silent target gets: at least two, at least one
  more than the latest try that ever drew a first answer (nmap's ``max_successful_tryno + 1``),
  and enough that, at the loss rate estimated from the tries live hosts needed, fewer than
  ``expected_misses`` live hosts are expected to stay silent through all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DROP_TOLERANCE = 0.25  # the share of tries a path may lose before it counts as congested: random loss
DROP_CONFIDENCE = 2.5  # standard deviations above the tolerated share before the window shrinks


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
class Window:
    ceiling: float
    floor: float = 1.0
    tolerance: float = DROP_TOLERANCE
    confidence: float = DROP_CONFIDENCE
    cwnd: float = field(init=False)
    ssthresh: float = field(init=False)
    inflight: int = field(default=0, init=False)  # tries in their wait
    epoch: float = field(default=-math.inf, init=False)  # when the window last shrank
    acks: int = field(default=0, init=False)  # tries answered, sent in this epoch
    drops: int = field(default=0, init=False)  # tries lost before an answered retry, sent in this epoch
    decreases: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.floor < 1:
            raise ValueError("the floor must let one try wait")
        self.ceiling = max(self.ceiling, self.floor)
        self.cwnd = self.ssthresh = self.ceiling

    def open(self) -> bool:
        """Another try may start."""
        return self.inflight < self.cwnd

    def take(self) -> None:
        self.inflight += 1

    def release(self) -> None:
        """A try's wait is over."""
        self.inflight = max(0, self.inflight - 1)

    def answered(self, sent: float) -> None:
        """A first try sent at ``sent`` was answered."""
        if sent >= self.epoch:
            self.acks += 1
        if self.drops > self.tolerance * (self.acks + self.drops):
            return  # the path loses more than it may: no room to grow
        growth = 1.0 if self.cwnd < self.ssthresh else 1.0 / self.cwnd
        self.cwnd = min(self.ceiling, self.cwnd + growth)

    def dropped(self, lost: float, now: float, tries: int = 1) -> None:
        """``tries`` tries, the last sent at ``lost``, went unanswered, and the next one at the same target
        was answered."""
        if lost < self.epoch:
            return  # sent before the last decrease: that one already answered for it
        self.acks += 1
        self.drops += tries
        if not self.congested():
            return
        waiting = min(self.cwnd, self.inflight + 1.0)  # a window far above what is waiting means nothing
        self.cwnd = max(self.floor, waiting / 2)
        self.ssthresh = max(self.cwnd, waiting * 3 / 4)
        self.epoch = now
        self.acks = self.drops = 0
        self.decreases += 1

    def congested(self) -> bool:
        """More drops this epoch than random loss of ``tolerance`` would give, by ``confidence`` deviations."""
        tries = self.acks + self.drops
        spread = math.sqrt(tries * self.tolerance * (1 - self.tolerance))
        return self.drops - tries * self.tolerance > self.confidence * spread


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
