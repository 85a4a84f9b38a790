"""Makes a peer's text inert before a person reads it: one printable line, of bounded length.

Whatever a hub or an agent sends (an operation or cancel id, an error's code and message, an agent's
name) may hold newlines that forge log lines, ANSI escapes that rewrite a terminal, or a megabyte that
fills a disk. :func:`inert` escapes every control character (``\\n``, ``\\x1b``, ``\\u2028``…) so that
the attempt stays visible, and clips the text at :data:`MAX_TEXT` characters, saying how much was cut.
It is applied where text leaves for a person: every log record's arguments and message
(:mod:`ksocket.log`), every table cell (:mod:`ksocket.cli.render`), every diagnostics detail.
"""

from __future__ import annotations

import re
from typing import Final

MAX_TEXT: Final = 256
"""Characters of one peer-supplied string that are shown."""
MAX_MESSAGE: Final = 4096
"""Characters of one whole log message that are shown (its arguments are clipped first)."""

CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
"""Characters that move the cursor, end a line or start an escape sequence somewhere, and lone
surrogates (JSON may carry them; a UTF-8 log file cannot)."""


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def inert(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` with its control characters escaped, cut after ``limit`` characters (the cut is said)."""
    cut = len(text) - limit
    shown = CONTROL.sub(_escaped, text[:limit])
    return f"{shown}...[{cut} more characters]" if cut > 0 else shown
