"""``ksocket.cli.render``: plain tables off a terminal, Rich's at one, and the progress bar only at one."""

from __future__ import annotations

import io

from ksocket.cli import render


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_plain_table_is_columns_two_spaces_apart_without_trailing_blanks() -> None:
    out = io.StringIO()
    render.table(("SLOT", "STATE", "LAST HEARTBEAT"), [("s1", "connected", "-"), ("slot-22", "never", "x")], out)
    assert out.getvalue() == (
        "SLOT     STATE      LAST HEARTBEAT\n"
        "s1       connected  -\n"
        "slot-22  never      x\n"
    )  # fmt: skip


def test_a_plain_table_shows_cells_as_they_are_and_never_wraps() -> None:
    out = io.StringIO()
    long = "x" * 500
    render.table(("NAME", "NOTE"), [("[bold]host[/bold]", long), ("😀 :smile:", "-")], out)
    lines = out.getvalue().splitlines()
    assert lines[1].split() == ["[bold]host[/bold]", long]
    assert lines[2].split() == ["😀", ":smile:", "-"]
    assert "\x1b" not in out.getvalue()


def test_a_table_without_rows_is_its_header() -> None:
    out = io.StringIO()
    render.table(("ID", "SLOT"), [], out)
    assert out.getvalue() == "ID  SLOT\n"


def test_at_a_terminal_the_table_has_a_ruled_header() -> None:
    out = Terminal()
    render.table(("ID", "SLOT"), [("1", "s1")], out)
    text = out.getvalue()
    assert "ID" in text and "s1" in text and "─" in text


def test_the_progress_bar_draws_nothing_off_a_terminal() -> None:
    err = io.StringIO()
    bar = render.ProgressBar(err)
    bar.progress(3, 10)
    bar.close()
    assert err.getvalue() == ""


def test_the_progress_bar_shows_the_count_at_a_terminal_and_leaves_when_closed() -> None:
    err = Terminal()
    bar = render.ProgressBar(err, clock=lambda: 0.0)
    bar.progress(0, 256)
    bar.progress(256, 256)
    bar.check_cancelled()
    bar.close()
    assert "256/256" in err.getvalue()
    bar.close()  # a second close is harmless
