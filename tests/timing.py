"""Time in the tests, scaled for slow machines.

``KSOCKET_TEST_TIMEOUT_FACTOR`` (default 1) multiplies every limit a test waits up to: the waits for a
condition (:func:`scaled`), the tools' default timeouts and pytest-timeout's per-test limit
(``tests/conftest.py``). It never stretches the time a test *expects* something to take, only how long it
is willing to wait before calling it a failure, so a loaded CI machine can be given room without
weakening any assertion: ``KSOCKET_TEST_TIMEOUT_FACTOR=3 inv test``.
"""

from __future__ import annotations

import os


def _factor() -> float:
    text = os.environ.get("KSOCKET_TEST_TIMEOUT_FACTOR", "1")
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"KSOCKET_TEST_TIMEOUT_FACTOR: {text!r} is not a number") from None
    if not value >= 1:
        raise SystemExit(f"KSOCKET_TEST_TIMEOUT_FACTOR: {text!r} must be at least 1")
    return value


FACTOR = _factor()


def scaled(seconds: float) -> float:
    """A limit of ``seconds`` on a quiet machine, stretched by the timeout factor."""
    return seconds * FACTOR
