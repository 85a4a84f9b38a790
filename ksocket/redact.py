"""Keeps secrets out of everything a person can read: log lines, error messages, printed settings.

Every place that learns a secret (the token, a password, a passphrase, an SNMP key or community)
registers it here; the log formatter and the CLI's error printer pass their text through
:func:`redact`. Matching the values themselves, rather than guessing at field names in text,
also catches a secret that a library quotes back in its own exception.
"""

from __future__ import annotations

import re
import reprlib
import threading

MASK = "********"
# a secret shorter than this is masked only where it stands alone: a one-letter password masked inside
# every word would leave no log line readable
WHOLE_TOKEN_BELOW = 4

_lock = threading.Lock()
_secrets: set[str] = set()


def register(*values: object) -> None:
    with _lock:
        # however short, a secret is masked (at the price of masking innocent text equal to it);
        # the empty string is no secret: it is in every text
        _secrets.update(v for v in values if isinstance(v, str) and v)


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret not in text:
            continue
        if len(secret) >= WHOLE_TOKEN_BELOW:
            text = text.replace(secret, MASK)
        else:
            text = re.sub(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", MASK, text)
    return text


def mask(value: str) -> str:
    """The printed form of a secret setting: nothing when unset, the mask otherwise."""
    return MASK if value else ""


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


# a table or list is shown a few items and levels deep: its whole repr() may be gigabytes (shared
# references from YAML aliases) or too deep to build
_CONTAINERS = reprlib.Repr()
_CONTAINERS.maxlevel = 3
_CONTAINERS.maxstring = _CONTAINERS.maxother = 80


def described(value: object, *, secret: bool = False) -> str:
    """How a message shows a value: quoted (cut at 80 characters), or only its type for a secret."""
    if secret:
        return _TYPE_NAMES.get(type(value), f"a {type(value).__name__}")
    text = _CONTAINERS.repr(value) if isinstance(value, dict | list | tuple | set) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
