"""``ksocket encrypt FILE`` / ``ksocket decrypt FILE``: credential files encrypted at rest (manual 6.4.2).

An encrypted file keeps its name, so the search still finds it; its first line is :data:`MAGIC`
and the second a Fernet token (AES-128-CBC with HMAC-SHA256: a wrong key, a changed byte or a cut
file is detected, never read as garbage). The key is ``$KSOCKET_HOME/etc/ksocket/credentials.key``,
made on the first encryption, readable by its owner only. :func:`read_text` gives the text of a
credential file either way, which is how the loader reads them, and refuses one that others may
read (:func:`ksocket.bounded.read_file`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from ksocket import bounded, config, paths
from ksocket.credentials.fields import one_line
from ksocket.errors import ConfigError, CredentialError, DecryptionError

if TYPE_CHECKING:
    # cryptography's bindings take some 0.1 s to load, paid only where a file is encrypted or decrypted
    from cryptography.fernet import Fernet

logger = logging.getLogger("ksocket.credentials")

MAGIC = "#ksocket-encrypted:v1"
_MAGIC_PREFIX = b"#ksocket-encrypted:"
KEY_NAME = "credentials.key"


def default_key_path() -> Path:
    return paths.etc_dir() / KEY_NAME


def is_encrypted(data: bytes) -> bool:
    """Whether a file's bytes are in the encrypted form (of this version or another)."""
    return data.startswith(_MAGIC_PREFIX)


# --- the key ---------------------------------------------------------------------------------


def _read_key(key_path: Path) -> Fernet:
    try:
        mode = key_path.stat().st_mode
        data = key_path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"{key_path}: cannot read the credentials key: {exc.strerror}") from None
    from cryptography.fernet import Fernet

    if mode & 0o077:
        logger.warning("%s: the credentials key is readable by others; run chmod 600 on it", key_path)
    try:
        return Fernet(data.strip())
    except ValueError:
        raise CredentialError(f"{key_path}: not a credentials key (expected 32 url-safe base64 bytes)") from None


def load_key(key_path: Path | None = None, *, create: bool = False) -> Fernet:
    """The credentials key; with ``create``, made (mode 0600, folder 0700) when there is none yet.

    A new key is written to a private temporary file and linked into place, so that two processes
    encrypting at once end up sharing one key rather than one overwriting the other's.
    """
    key_path = key_path or default_key_path()
    if key_path.exists() or not create:
        return _read_key(key_path)
    tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    from cryptography.fernet import Fernet

    config.write_private(tmp, Fernet.generate_key().decode("ascii") + "\n")
    try:
        os.link(tmp, key_path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    except OSError:  # a file system without hard links
        if not key_path.exists():
            tmp.replace(key_path)
    else:
        logger.info("created the credentials key %s", key_path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(key_path)


# --- files -----------------------------------------------------------------------------------


def _credential_error(message: str) -> CredentialError:
    return CredentialError(one_line(message))


def _read_bytes(path: Path, *, private: bool = False) -> bytes:
    return bounded.read_file(path, _credential_error, private=private)


def _decode(path: Path, data: bytes) -> str:
    try:
        return config.decode(path, data)
    except ConfigError as exc:
        raise CredentialError(str(exc)) from None


def decrypt_bytes(path: Path, data: bytes, key_path: Path | None = None) -> str:
    """The plain text of the encrypted bytes ``data`` read from ``path``."""
    first, _, rest = data.partition(b"\n")
    magic = first.rstrip(b"\r").decode("utf-8", "replace")
    if magic != MAGIC:
        raise DecryptionError(one_line(f"cannot decrypt {path}: unknown format {magic!r} (expected {MAGIC})"))
    key_path = key_path or default_key_path()
    if not key_path.exists():
        raise DecryptionError(one_line(f"cannot decrypt {path}: there is no credentials key {key_path}"))
    fernet = load_key(key_path)
    from cryptography.fernet import InvalidToken

    token = rest.strip()
    try:
        if not _canonical(token):
            raise InvalidToken
        plain = fernet.decrypt(token)
    except InvalidToken:
        raise DecryptionError(one_line(f"cannot decrypt {path}: wrong key or the file was altered")) from None
    return _decode(path, plain)


def _canonical(token: bytes) -> bool:
    """Whether ``token`` is exactly the base64 of its bytes: lenient base64 decoding would ignore
    anything added after the padding, which Fernet's own check never sees."""
    try:
        return base64.urlsafe_b64encode(base64.urlsafe_b64decode(token)) == token
    except (binascii.Error, ValueError):
        return False


def read_text(path: Path | str, key_path: Path | None = None) -> str:
    """The text of a credential file, decrypted when it is encrypted.

    A file its group or others may read is refused, encrypted or not (as OpenSSH refuses such a
    private key): a file left open is a mistake to fix, and the key may be readable too.
    """
    path = Path(path)
    data = _read_bytes(path, private=True)
    if is_encrypted(data):
        return decrypt_bytes(path, data, key_path)
    return _decode(path, data)


def encrypt_file(path: Path | str, key_path: Path | None = None) -> None:
    """Encrypts a credential file in place (mode 0600), making the key on first use."""
    path = Path(path)
    data = _read_bytes(path)
    if is_encrypted(data):
        raise CredentialError(one_line(f"{path}: already encrypted (ksocket decrypt restores it)"))
    _decode(path, data)  # what cannot be read back as a credential file is not worth encrypting
    token = load_key(key_path, create=True).encrypt(data).decode("ascii")
    config.write_private(path, f"{MAGIC}\n{token}\n")
    logger.info("encrypted %s", path)


def decrypt_file(path: Path | str, key_path: Path | None = None) -> None:
    """Replaces an encrypted credential file by its plain text (mode 0600)."""
    path = Path(path)
    data = _read_bytes(path)
    if not is_encrypted(data):
        raise CredentialError(one_line(f"{path}: not encrypted (no {MAGIC} line at the top)"))
    config.write_private(path, decrypt_bytes(path, data, key_path))
    logger.info("decrypted %s", path)
