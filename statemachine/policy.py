"""Timing policy of the link, kept apart from I/O so that tests can scale or record time.

The resume delay follows protocol.md: attempt k waits
``min(resumeThreshold, 2 ** (min(k, resumePlateau) - 1))`` seconds scaled by a random factor
in [0.5, 1.0].
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import AbstractAsyncContextManager


def resume_delay(attempt: int, *, plateau: int, threshold: float, factor: float) -> float:
    """The wait before resume attempt ``attempt`` (1, 2, …); ``factor`` is the draw from [0.5, 1.0]."""
    if attempt < 1:
        raise ValueError(f"attempts count from 1, got {attempt}")
    return min(threshold, 2.0 ** (min(attempt, plateau) - 1)) * factor


class Clock:
    """Time as the link sees it, in the protocol's seconds.

    ``scale`` maps those seconds to real ones: tests run a 60 s heartbeat in 60 ms with 0.001.
    """

    def __init__(self, *, scale: float = 1.0, rng: random.Random | None = None) -> None:
        self.scale = scale
        self._rng = rng or random.SystemRandom()

    def monotonic(self) -> float:
        return time.monotonic() / self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.scale)

    def deadline(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds * self.scale)

    def jitter(self) -> float:
        """A random factor in [0.5, 1.0] for the resume delay."""
        return self._rng.uniform(0.5, 1.0)
