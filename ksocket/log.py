"""Logging as the manual's settings describe it (3.1.1, 3.1.2): file or standard output, level,
format, and the logger-name filters; every line passes through :func:`ksocket.redact.redact`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ksocket import config, redact
from ksocket.errors import ConfigError


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact.redact(super().format(record))


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
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
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
