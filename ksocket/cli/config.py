"""``ksocket config [NAME [VALUE]]``: every setting as ``name=value``, one value, or a value stored.

``ksocket config connect.token -`` reads the value from standard input (without echo at a terminal),
so that a secret never stands in the process list or the shell's history; ``-`` means standard input
only for a setting that holds a secret (``logfile -`` is standard output, as ever).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from ksocket import config, redact
from ksocket.cli.common import load_settings
from ksocket.errors import ConfigError

FROM_STDIN = "-"
MAX_SECRET = 4096
"""Characters of a secret read from standard input."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a setting's name, e.g. connect.host")
    parser.add_argument(
        "value", nargs="?", help="the new value to store in ksocket.toml (- reads a secret from standard input)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.value is not None:
        secret_from_stdin = args.value == FROM_STDIN and config.holds_secret(args.name)
        store(args.name, read_secret(args.name) if secret_from_stdin else args.value)
        return 0
    settings = load_settings(args)
    if args.name is not None:
        print(config.display(settings, args.name, reveal=True))
        return 0
    for name in config.NAMES:
        print(f"{name}={config.display(settings, name)}")
    return 0


def store(name: str, raw: str) -> None:
    """Stores the value even in a file that holds invalid ones, and says what the file still gets wrong."""
    stored = config.set_value(name, raw)
    if stored.backup is not None:
        print(f"ksocket: converted the YAML file to {stored.path}; it is kept as {stored.backup}", file=sys.stderr)
    for problem in stored.problems:
        print(f"ksocket: warning: {stored.path}: {redact.redact(problem)}", file=sys.stderr)


def read_secret(name: str) -> str:
    """One line from standard input: typed without echo at a terminal, or piped (``< file``, ``printf … |``)."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"{name}: ")
    else:
        line = sys.stdin.readline(MAX_SECRET + 1)
        if len(line.rstrip("\r\n")) > MAX_SECRET:
            raise ConfigError(f"{name}: more than {MAX_SECRET} characters on standard input")
        value = line.rstrip("\r\n")
    if not value:
        raise ConfigError(f"{name}: nothing read from standard input; the setting is unchanged")
    return value
