"""Parsing what a peer or a file may nest without bound, without harm to the rest of the process.

Python's parsers (json, tomllib) recurse once per level and stop with a RecursionError near the
interpreter's limit. A cyclic garbage collection that happens down there runs other objects'
finalizers (a temporary folder's, a connection's) at that depth, where they fail with RecursionError
too and are lost (Python only reports them as unraisable). :func:`deep_parse` holds collections off
for the parse; the next allocation after it collects as usual. No I/O: the protocol core uses it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def deep_parse() -> Iterator[None]:
    """Around a parser that may recurse as deep as its input nests: no cyclic garbage collection meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
