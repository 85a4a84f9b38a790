"""Credential files (manual 3.2): their fields, the search for an address, encryption at rest.

fields   reading one table of a parsed file, with types, ranges and one-line errors
models   the three kinds (SSH, WinRM, SNMP) as frozen dataclasses
loader   one file: bytes, decryption, UTF-8, TOML/YAML, fields
search   which files serve an address, in the manual's order
crypto   ``ksocket encrypt`` / ``ksocket decrypt``
"""

from __future__ import annotations

from ksocket.credentials.loader import load
from ksocket.credentials.models import (
    KINDS,
    Account,
    AuthData,
    ClientKey,
    Credential,
    SNMPCredential,
    SSHAccount,
    SSHCredential,
    WinRMCredential,
)
from ksocket.credentials.search import Considered, explain, find

__all__ = [
    "KINDS",
    "Account",
    "AuthData",
    "ClientKey",
    "Considered",
    "Credential",
    "SNMPCredential",
    "SSHAccount",
    "SSHCredential",
    "WinRMCredential",
    "explain",
    "find",
    "load",
]
