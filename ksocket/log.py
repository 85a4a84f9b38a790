"""Logging as the manual's settings describe it (3.1.1, 3.1.2): file or standard output, level,
format, and the logger-name filters; every line passes through :func:`ksocket.redact.redact`.

A log file is rotated by size (``logmaxbytes``, ``logbackups``), and every record's arguments and
message are made inert (:func:`ksocket.sanitise.inert`): a peer's string is clipped and its control
characters escaped, so that a hub (or an agent, in the hub's log) can neither fill the disk nor forge
a line. The formatter does it for every record, rather than each call site for its own arguments,
because a log call is the one place every peer string passes on its way to a person, and a call site
that forgets is the one the hostile peer finds; the strings themselves stay exact where they are
data (an operation id is echoed back to the hub as it came).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from ksocket import config, redact, sanitise
from ksocket.errors import ConfigError


class _Shown:
    """A log argument as it may be shown: secrets masked, then clipped and escaped (str and repr alike)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return sanitise.inert(redact.redact(str(self.value)))

    def __repr__(self) -> str:
        return sanitise.inert(redact.redact(repr(self.value)))


def _shown(value: object) -> object:
    # numbers stay numbers, for %d and %.1f; they hold no text
    return value if isinstance(value, int | float) else _Shown(value)


class RedactingFormatter(logging.Formatter):
    """Secrets masked, every argument clipped and escaped, the whole message one line of bounded length."""

    def format(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(record.__dict__)  # other handlers format the record too
        args = record.args
        if isinstance(args, Mapping):
            shown.args = {key: _shown(value) for key, value in args.items()}
        elif args:
            shown.args = tuple(_shown(value) for value in args)
        shown.msg = sanitise.inert(redact.redact(shown.getMessage()), sanitise.MAX_MESSAGE)
        shown.args = None
        return redact.redact(super().format(shown))


class NameFilter(logging.Filter):
    """Passes records of any of the named loggers (and their children); ``logfilters`` is a comma list."""

    def __init__(self, names: str) -> None:
        super().__init__()
        self.filters = [logging.Filter(n.strip()) for n in names.split(",") if n.strip()]

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.filters or any(f.filter(record) for f in self.filters)


def configure(
    settings: config.Settings,
    *,
    logfile: str | None = None,
    loglevel: str | None = None,
    echo_warnings: bool = True,
) -> None:
    """Installs the handlers for this process; ``logfile``/``loglevel`` are the command-line overrides.

    ``echo_warnings`` also shows warnings on standard error, for commands a person runs at a terminal
    whose log goes to a file.
    """
    # Settings built in code and --logfile skip the config file's checks; a bad value must not
    # become a traceback in every command (or at every log line)
    target = str(config.validate("logfile", logfile if logfile is not None else settings.logfile_path))
    level = str(config.validate("loglevel", loglevel or settings.loglevel))
    formatter = RedactingFormatter(str(config.validate("logformat", settings.logformat)))
    handlers: list[logging.Handler] = []
    if target == "-":
        handlers.append(logging.StreamHandler(sys.stdout))
    else:
        path = Path(target)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            handlers.append(_file_handler(path, settings))
        except OSError as exc:
            raise ConfigError(f"logfile: cannot open {path}: {exc.strerror or exc}") from None
        if echo_warnings:
            echo = logging.StreamHandler(sys.stderr)
            echo.setLevel(logging.WARNING)
            echo.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
            echo.addFilter(NameFilter(settings.logfilters))
            handlers.append(echo)
    for handler in handlers[:1]:
        handler.setFormatter(formatter)
        handler.addFilter(NameFilter(settings.logfilters))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _file_handler(path: Path, settings: config.Settings) -> logging.Handler:
    """The log file, rotated once it would pass ``logmaxbytes`` (0: never, for an outside logrotate)."""
    max_bytes = cast(int, config.validate("logmaxbytes", settings.log_max_bytes))
    backups = cast(int, config.validate("logbackups", settings.log_backups))
    return logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
