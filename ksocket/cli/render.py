"""Tables and the progress bar of the command line, drawn by Rich.

At a terminal a table gets a ruled header and the width Rich gives it; anywhere else (a pipe, a
file, a test) it is plain text that scripts can split: no colour, no box characters, no wrapping,
columns two spaces apart, no trailing blanks. Every cell is made inert first, at a terminal or not
(:func:`ksocket.sanitise.inert`: control characters escaped, at most ``MAX_MESSAGE`` characters): a
cell may be a peer's text. The progress bar and the live status panel are drawn only at a terminal.
Rich is imported by the functions that draw, so that a command that draws nothing does not load it.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ksocket import sanitise
from ksocket.collectors.base import Document, RecordList

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.progress import Progress, TaskID

PLAIN_WIDTH = 1_000_000
"""Wide enough that no row of plain output is ever wrapped or cut."""


def _console(out: TextIO, *, terminal: bool, width: int | None = None) -> Console:
    from rich.console import Console

    # cells are shown as they are: a host's name holding "[b]" is not markup, a number is not highlighted;
    # whether ``out`` is a terminal is its own answer, not the environment's (FORCE_COLOR, TTY_COMPATIBLE)
    return Console(
        file=out,
        width=width,
        force_terminal=terminal,
        color_system="auto" if terminal else None,
        markup=False,
        highlight=False,
        emoji=False,
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO | None = None) -> None:
    """Writes ``rows`` under ``headers`` to ``out`` (standard output by default)."""
    from rich import box
    from rich.table import Table

    out = out or sys.stdout
    terminal = out.isatty()
    drawn = Table(
        box=box.SIMPLE_HEAD if terminal else None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 2, 0, 0),
        header_style="bold" if terminal else "",
    )
    for header in headers:
        drawn.add_column(header, no_wrap=not terminal)
    for row in rows:
        # a cell may be a peer's text (an agent's id, a hub's error message): inert before it is drawn
        drawn.add_row(*(sanitise.inert(str(cell), sanitise.MAX_MESSAGE) for cell in row))
    if terminal:
        _console(out, terminal=True).print(drawn)
        return
    text = io.StringIO()
    _console(text, terminal=False, width=PLAIN_WIDTH).print(drawn)
    out.write("".join(line.rstrip() + "\n" for line in text.getvalue().splitlines()))


class ProgressBar:
    """A collector context that shows ``done/total`` addresses as a bar on ``stream`` when it is a terminal.

    ``clock`` (seconds) times the bar's elapsed column; the bar leaves the screen at :meth:`close`.
    """

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.clock = clock
        self.drawn: tuple[Progress, TaskID] | None = None
        self.records = RecordList()

    def record(self, document: Document, *, key: str | None = None) -> None:
        self.records.add(document, key)

    def progress(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.drawn is None:
            self.drawn = self._start()
        bar, task = self.drawn
        bar.update(task, completed=done, total=total)

    def _start(self) -> tuple[Progress, TaskID]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("addresses"),
            TimeElapsedColumn(),
            console=_console(self.stream, terminal=True),
            transient=True,
            get_time=self.clock,
        )
        bar.start()
        return bar, bar.add_task("scan", total=None)

    def check_cancelled(self) -> None:
        return None

    def close(self) -> None:
        if self.drawn is not None:
            self.drawn[0].stop()
            self.drawn = None


class LiveStatus:
    """A panel of named counters on ``stream``, redrawn in place as they change, when it is a terminal.

    :meth:`show` sets counters (a value may be a peer's text: cells are made inert); the panel
    leaves the screen at :meth:`close`.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.counters: dict[str, str] = {}
        self.live: Live | None = None

    def show(self, **counters: object) -> None:
        self.counters.update({name: str(value) for name, value in counters.items()})
        if not self.enabled:
            return
        from rich.live import Live

        if self.live is None:
            self.live = Live(console=_console(self.stream, terminal=True), transient=True, auto_refresh=False)
            self.live.start()
        self.live.update(self._panel(), refresh=True)

    def _panel(self) -> Any:
        from rich.table import Table

        drawn = Table.grid(padding=(0, 2))
        for name, value in self.counters.items():
            drawn.add_row(name, sanitise.inert(value, sanitise.MAX_MESSAGE))
        return drawn

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
