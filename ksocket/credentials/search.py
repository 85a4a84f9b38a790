"""Which credential files serve an address (manual 3.2.4, 3.2.5).

Under ``<credentials root>/<kind>`` the entries are taken in dictionary (code point) order; a name
starting with ``_`` is skipped, a folder is searched where it stands in that order (the manual says
"breadth first", but its example in 3.2.5 is this pre-order walk, and the example is what users
rely on), a file must end in ``.toml``, ``.yaml`` or ``.yml``. A file that passes is read whole,
and serves the address when its ``includes`` hold it and its ``excludes`` do not.

:func:`explain` says what became of every entry; :func:`find` returns the matching credentials in
order and logs as the manual describes (INFO per match, WARNING when there is none).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from ksocket.credentials import loader
from ksocket.credentials.models import (
    Credential,
    SNMPCredential,
    SSHCredential,
    WinRMCredential,
    credential_class,
    parse_address,
)
from ksocket.errors import CredentialError

logger = logging.getLogger("ksocket.credentials")

SUFFIXES = (".toml", ".yaml", ".yml")

Verdict = Literal["match", "skipped"]


@dataclass(frozen=True)
class Considered:
    """One entry the search looked at: the file, ``match`` or ``skipped``, and why."""

    path: Path
    verdict: Verdict
    reason: str
    credential: Credential | None = None
    error: CredentialError | None = None


def _skipped(path: Path, reason: str) -> Considered:
    return Considered(path, "skipped", reason)


def _walk(folder: Path, seen: set[tuple[int, int]]) -> Iterator[Path | Considered]:
    """The candidate files under ``folder`` in the manual's order, and a Considered for each skip."""
    try:
        stat = folder.stat()
        names = sorted(entry.name for entry in folder.iterdir())
    except OSError as exc:
        yield _skipped(folder, f"cannot list the folder: {exc.strerror}")
        return
    if (stat.st_dev, stat.st_ino) in seen:
        yield _skipped(folder, "folder already searched (a symbolic link leads back to it)")
        return
    seen.add((stat.st_dev, stat.st_ino))
    for name in names:
        entry = folder / name
        if name.startswith("_"):
            yield _skipped(entry, "name starts with _")
        elif entry.is_dir():
            yield from _walk(entry, seen)
        elif not name.endswith(SUFFIXES):
            yield _skipped(entry, "not a .toml/.yaml/.yml file")
        elif not entry.is_file():
            yield _skipped(entry, "not a regular file (or a broken symbolic link)")
        else:
            yield entry


def _without_path(path: Path, error: CredentialError) -> str:
    """The message of ``error`` without the file's name it starts with (``FILE:LINE: x`` is ``line LINE: x``)."""
    match = re.match(rf"{re.escape(str(path))}(?::(\d+))?: ", str(error))
    if match is None:
        return str(error)
    return (f"line {match[1]}: " if match[1] else "") + str(error)[match.end() :]


def _consider(kind: str, address: object, root: Path | str, key_path: Path | None) -> Iterator[Considered]:
    credential_class(kind)
    ip = parse_address(address)
    folder = Path(root) / kind
    if not folder.is_dir():
        yield _skipped(folder, "no such folder")
        return
    for item in _walk(folder, set()):
        if isinstance(item, Considered):
            yield item
            continue
        try:
            credential = loader.load(kind, item, key_path)
        except CredentialError as exc:
            yield Considered(item, "skipped", f"invalid: {_without_path(item, exc)}", error=exc)
            continue
        rejected = credential.rejects(ip)
        if rejected is not None:
            yield Considered(item, "skipped", rejected, credential)
        else:
            note = credential.note()
            yield Considered(item, "match", f"match: {note}" if note else "match", credential)


def explain(kind: str, address: object, root: Path | str, *, key_path: Path | None = None) -> list[Considered]:
    """What the search makes of every entry under ``root/kind`` for ``address``, in search order.

    Logs nothing; an invalid address or kind raises CredentialError.
    """
    return list(_consider(kind, address, root, key_path))


@overload
def find(
    kind: Literal["ssh"],
    address: object,
    root: Path | str,
    *,
    key_path: Path | None = None,
    warn_unmatched: bool = True,
) -> list[SSHCredential]: ...
@overload
def find(
    kind: Literal["winrm"],
    address: object,
    root: Path | str,
    *,
    key_path: Path | None = None,
    warn_unmatched: bool = True,
) -> list[WinRMCredential]: ...
@overload
def find(
    kind: Literal["snmp"],
    address: object,
    root: Path | str,
    *,
    key_path: Path | None = None,
    warn_unmatched: bool = True,
) -> list[SNMPCredential]: ...
@overload
def find(
    kind: str, address: object, root: Path | str, *, key_path: Path | None = None, warn_unmatched: bool = True
) -> list[Credential]: ...
def find(
    kind: str, address: object, root: Path | str, *, key_path: Path | None = None, warn_unmatched: bool = True
) -> list[Any]:
    """The credentials serving ``address``, in the order to try them (manual 3.2.4).

    Each match is logged at INFO, an invalid file at ERROR (and skipped), no match at WARNING (unless
    ``warn_unmatched`` is false: a caller that counts them and says so once, as a discovery does).
    """
    found: list[Credential] = []
    for item in _consider(kind, address, root, key_path):
        if item.error is not None:
            logger.error("skipping the invalid credential file: %s", item.error)
        elif item.verdict == "match" and item.credential is not None:
            logger.info("%s credential file %s matches %s", kind, item.path, address)
            found.append(item.credential)
    if not found and warn_unmatched:
        logger.warning("no credential file matches %s for %s", address, kind)
    return found
