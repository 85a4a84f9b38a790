"""Slot tokens: made once, shown once, kept only as a SHA-256 hash.

A token is ``ks1_`` and ``secrets.token_urlsafe(32)`` (256 random bits); the prefix keeps it from
starting with ``-``, which a command line would take for an option (``ksocket config connect.token``).
The hub stores its SHA-256 hex digest and compares digests with :func:`hmac.compare_digest`; the
token itself is printed once by ``ksocket hub token add`` and never written to the database or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    return "ks1_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def matches(token: str, token_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), token_hash)


def new_session() -> str:
    """A session id: names one agent's run of connections on a slot; not a secret by itself."""
    return secrets.token_hex(16)
