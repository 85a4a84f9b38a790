"""Reading one credential file: bytes (decrypted when encrypted), UTF-8, TOML or YAML, then the fields.

The format follows the name as for ``ksocket.toml``: ``.yaml``/``.yml`` is YAML, anything else TOML.
Every failure is a one-line :class:`~ksocket.errors.CredentialError` naming the file (and the field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, overload

from ksocket import config
from ksocket.credentials import crypto
from ksocket.credentials.models import (
    Credential,
    SNMPCredential,
    SSHCredential,
    WinRMCredential,
    credential_class,
)
from ksocket.errors import ConfigError, CredentialError

Kind = Literal["ssh", "winrm", "snmp"]


def parse(kind: str, path: Path, text: str) -> Credential:
    """The credential of ``kind`` in ``text``, the content of ``path``."""
    cls = credential_class(kind)
    try:
        document = config.parse_document(path, text)
    except ConfigError as exc:
        raise CredentialError(str(exc).replace("mapping of settings", "mapping of credential fields")) from None
    return cls.from_document(path, document)


@overload
def load(kind: Literal["ssh"], path: Path | str, key_path: Path | None = None) -> SSHCredential: ...
@overload
def load(kind: Literal["winrm"], path: Path | str, key_path: Path | None = None) -> WinRMCredential: ...
@overload
def load(kind: Literal["snmp"], path: Path | str, key_path: Path | None = None) -> SNMPCredential: ...
@overload
def load(kind: str, path: Path | str, key_path: Path | None = None) -> Credential: ...
def load(kind: str, path: Path | str, key_path: Path | None = None) -> Credential:
    """Reads and checks one credential file of ``kind`` (``ssh``, ``winrm`` or ``snmp``)."""
    path = Path(path)
    credential_class(kind)  # an unknown kind is the caller's mistake, whatever the file holds
    return parse(kind, path, crypto.read_text(path, key_path))
