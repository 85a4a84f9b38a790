"""SSH host keys remembered on first use (``$KSOCKET_HOME/var/lib/ksocket/ssh_known_hosts``).

The first key a host presents is remembered; later connections must present a remembered key, or
the host is refused with ``host-key-changed`` before any password or key is sent. A credential
file with ``hostKeyPolicy = "accept-new-keys"`` relaxes this for the hosts it serves: the new key
replaces the old ones, with a WARNING.

The file has OpenSSH's ``known_hosts`` syntax (``ADDRESS`` for port 22, ``[ADDRESS]:PORT``
otherwise, then the key type and its base64), so ``ssh-keygen -F`` and ``ssh -o
UserKnownHostsFile=`` read it. It is written whole to a private temporary file and renamed into
place (mode 0600), under a lock file, so that several threads and processes (the service and a
``ksocket inspect`` run) never lose each other's keys.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ksocket import paths
from ksocket.addresses import fold_mapped
from ksocket.errors import KsocketError

logger = logging.getLogger("ksocket.inspect.ssh")

FILE_NAME = "ssh_known_hosts"


class HostKeyStoreError(KsocketError):
    """The file of remembered keys cannot be written (permissions, a full or read-only disk, …)."""


class Verdict(Enum):
    KNOWN = "known"  # a remembered key
    NEW = "new"  # the host was unknown: its key is now remembered
    REPLACED = "replaced"  # the key changed and the policy accepted it: it replaced the old ones
    CHANGED = "changed"  # the key changed: refuse the host


@dataclass(frozen=True)
class HostKey:
    """One key in the file: the key's type (``ssh-ed25519``) and its wire form, base64-encoded."""

    algorithm: str
    data: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:…``, as ``ssh-keygen -l`` prints it."""
        try:
            raw = base64.b64decode(self.data)
        except ValueError:
            raw = self.data.encode()
        return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")

    def line(self, host: str) -> str:
        return f"{host} {self.algorithm} {self.data}"


def host_label(address: str, port: int) -> str:
    """``known_hosts``' name for a host: ``ADDRESS`` on port 22, ``[ADDRESS]:PORT`` otherwise (IPv4-mapped folded)."""
    address = fold_mapped(address)
    return address if port == 22 else f"[{address}]:{port}"


def default_path() -> Path:
    return paths.state_dir() / FILE_NAME


def _parse(text: str) -> dict[str, list[HostKey]]:
    keys: dict[str, list[HostKey]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith(("#", "@", "|")):
            continue  # comments, markers and hashed names are not this file's
        for host in fields[0].split(","):
            entry = HostKey(fields[1], fields[2])
            if entry not in keys.setdefault(host, []):
                keys[host].append(entry)
    return keys


def _render(keys: dict[str, list[HostKey]]) -> str:
    lines = ["# ksocket: SSH host keys remembered on first use (OpenSSH known_hosts syntax)"]
    for host in sorted(keys):
        lines.extend(key.line(host) for key in keys[host])
    return "\n".join(lines) + "\n"


class HostKeyStore:
    """The remembered host keys; safe to share between threads (and processes, through the file)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._cache: dict[str, list[HostKey]] = {}
        self._stamp: tuple[int, int, int] | None = None

    @property
    def path(self) -> Path:
        return self._path or default_path()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _load(self) -> dict[str, list[HostKey]]:
        """The file's keys (cached while the file is unchanged); called with the lock held."""
        stamp = self._stat()
        if stamp is None:
            self._cache, self._stamp = {}, None
        elif stamp != self._stamp:
            try:
                text = self.path.read_text("utf-8", errors="replace")
            except OSError as exc:
                logger.warning("%s: cannot read the remembered SSH host keys: %s", self.path, exc.strerror)
                text = ""
            self._cache, self._stamp = _parse(text), stamp
        return self._cache

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _save(self, keys: dict[str, list[HostKey]]) -> None:
        path = self.path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(_render(keys))
            Path(tmp).chmod(0o600)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._cache, self._stamp = keys, self._stat()

    def remembered(self, address: str, port: int) -> list[HostKey]:
        with self._lock:
            return list(self._load().get(host_label(address, port), []))

    def check(self, address: str, port: int, key: HostKey, *, accept_changed: bool = False) -> Verdict:
        """Whether ``key`` is the host's; remembers it when the host is new (or ``accept_changed``).

        Raises HostKeyStoreError when a key to remember cannot be written.
        """
        label = host_label(address, port)
        with self._lock:
            known = self._load().get(label, [])
            if key in known:
                return Verdict.KNOWN
            if known and not accept_changed:
                logger.error(
                    "%s presents the %s host key %s, not the one remembered in %s (%s): refusing it",
                    label,
                    key.algorithm,
                    key.fingerprint,
                    self.path,
                    ", ".join(old.fingerprint for old in known),
                )
                return Verdict.CHANGED
            try:
                with self._file_lock():
                    keys = {host: list(entries) for host, entries in self._load().items()}
                    current = keys.get(label, [])
                    if key in current:
                        return Verdict.KNOWN
                    if current and not accept_changed:
                        return Verdict.CHANGED
                    keys[label] = [key]
                    self._save(keys)
            except OSError as exc:
                raise HostKeyStoreError(
                    f"cannot remember host keys in {self.path}: {exc.strerror or type(exc).__name__}"
                ) from None
            if current:
                logger.warning(
                    "%s: the host key changed to %s %s; accepted (hostKeyPolicy = accept-new-keys)",
                    label,
                    key.algorithm,
                    key.fingerprint,
                )
                return Verdict.REPLACED
            logger.info("%s: remembering its %s host key %s", label, key.algorithm, key.fingerprint)
            return Verdict.NEW

    def asyncssh_known_hosts(self, host: str, address: str, port: int | None) -> tuple[list[Any], list[Any], list[Any]]:
        """asyncssh's ``known_hosts`` callable: the host's remembered keys (strict, no first use)."""
        import asyncssh

        keys = []
        for known in self.remembered(address or host, port or 22):
            with contextlib.suppress(asyncssh.KeyImportError, ValueError):
                keys.append(asyncssh.import_public_key(f"{known.algorithm} {known.data}"))
        return keys, [], []

    def forget(self, address: str, port: int) -> bool:
        """Drops a host's keys (after a legitimate reinstall); whether there were any."""
        label = host_label(address, port)
        with self._lock, self._file_lock():
            keys = {host: list(entries) for host, entries in self._load().items()}
            if keys.pop(label, None) is None:
                return False
            self._save(keys)
            return True
