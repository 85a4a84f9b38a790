"""A listener that records what a link went through, for tests that assert on its walk."""

from __future__ import annotations


class Recorder:
    """Every state the link entered and every resume delay it drew, in order."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.delays: list[float] = []

    def on_state(self, state: str) -> None:
        self.states.append(state)

    def on_delay(self, seconds: float) -> None:
        self.delays.append(seconds)
