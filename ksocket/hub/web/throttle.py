"""Login throttling: a few failures free, then a delay that doubles, per operator name and per peer address.

A pure core: :class:`LoginThrottle` is told of failures and successes and asked how long an attempt
must wait, with the time given by an injected clock; it neither sleeps nor holds a socket. The
login page refuses an attempt that must wait (and says for how long) instead of holding the
request. Its memory is bounded: past :data:`MAX_ENTRIES` keys, the oldest are forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

FREE_FAILURES: Final = 3
FIRST_DELAY: Final = 2.0
MAX_DELAY: Final = 300.0
FORGET_AFTER: Final = 3600.0
"""A key whose last failure is older than this starts afresh."""
MAX_ENTRIES: Final = 10_000


@dataclass
class _Failures:
    count: int
    last: float


class LoginThrottle:
    """Keys are such as ``("name", "alice")`` and ``("peer", "192.0.2.1")``; an attempt waits for the worst."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._now = clock
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def delay(self, count: int) -> float:
        """How long after its last failure a key that failed ``count`` times must wait."""
        if count < FREE_FAILURES:
            return 0.0
        return min(FIRST_DELAY * 2.0 ** (count - FREE_FAILURES), MAX_DELAY)

    def wait(self, keys: Iterable[tuple[str, str]]) -> float:
        """Seconds before an attempt under these keys may be tried (0: now)."""
        now = self._now()
        waits = [0.0]
        for key in keys:
            entry = self._failures.get(key)
            if entry is not None and now - entry.last < FORGET_AFTER:
                waits.append(entry.last + self.delay(entry.count) - now)
        return max(waits)

    def failed(self, keys: Iterable[tuple[str, str]]) -> None:
        now = self._now()
        for key in keys:
            entry = self._failures.pop(key, None)
            count = entry.count + 1 if entry is not None and now - entry.last < FORGET_AFTER else 1
            self._failures[key] = _Failures(count, now)
        while len(self._failures) > MAX_ENTRIES:
            self._failures.popitem(last=False)

    def succeeded(self, keys: Iterable[tuple[str, str]]) -> None:
        for key in keys:
            self._failures.pop(key, None)
