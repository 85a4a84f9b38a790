"""Reading what an operator hands in (settings and credential files, JSON on the command line) within bounds.

A hostile or mistaken file must cost a one-line error, not the process: the bytes are read only
from a regular file (a FIFO would block, ``/dev/zero`` never ends) and only up to
:data:`MAX_FILE_SIZE`; a file holding a secret must be its owner's alone, as OpenSSH asks of a
private key; a parsed document may nest at most :data:`MAX_DEPTH` levels, so that nothing walking
it later meets a RecursionError. Each check raises the error the caller names, with the file in
its message, so that every caller keeps its own exception family.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from ksocket.nesting import deep_parse

MAX_FILE_SIZE = 1024 * 1024  # bytes; a settings or credential file is a few hundred
MAX_DEPTH = 64  # levels of tables and lists; the manual's files have four at most

ErrorFactory = Callable[[str], Exception]


def private_mode_problem(path: Path, mode: int) -> str | None:
    """Why a file holding a secret may not be used with ``mode``, or None when only its owner can read it."""
    if mode & 0o077:
        return f"{path}: holds a secret but is open to others (mode {mode & 0o777:04o}): run chmod 600 {path}"
    return None


def read_file(path: Path, error: ErrorFactory, *, private: bool = False) -> bytes:
    """The bytes of the regular file ``path``, at most :data:`MAX_FILE_SIZE` of them.

    With ``private`` a file that its group or others may read or write is refused. The file is
    opened without blocking (a FIFO answers at once) and checked on the open descriptor, so that
    what is checked is what is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    try:
        _check(path, os.fstat(fd).st_mode, error, private=private)
        data = _read_at_most(fd, MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        raise error(f"{path}: larger than {MAX_FILE_SIZE} bytes")
    return data


def _check(path: Path, mode: int, error: ErrorFactory, *, private: bool) -> None:
    if stat.S_ISDIR(mode):
        raise error(f"{path}: cannot read: {os.strerror(errno.EISDIR)}")
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file")
    problem = private_mode_problem(path, mode) if private else None
    if problem is not None:
        raise error(problem)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(limit - size, 64 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def depth_exceeds(document: object, limit: int = MAX_DEPTH) -> bool:
    """Whether ``document`` nests more than ``limit`` levels of mappings and lists (without recursing)."""
    pending: list[tuple[object, int]] = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, Mapping):
            children: list[object] = list(value.values())
        elif isinstance(value, list | tuple):
            children = list(value)
        else:
            continue
        if children and depth + 1 > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def json_object(text: str, what: str, error: ErrorFactory) -> dict[str, object]:
    """The JSON object ``text`` (``what`` names it in messages), nested at most :data:`MAX_DEPTH` levels."""
    try:
        with deep_parse():
            value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise error(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:  # an integer with more digits than Python converts
        raise error(f"{what} is not JSON: a number is too long") from None
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object")
    if depth_exceeds(value):
        raise error(f"{what} is nested more than {MAX_DEPTH} levels deep")
    return value
