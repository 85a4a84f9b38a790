"""What every command shares: the ``--logfile``/``--loglevel`` options, a handler's type, the settings.

A command's module adds its arguments with ``configure(parser)`` and sets ``handler`` (a
:data:`Handler`) as the parser's default; :func:`load_settings` reads the config file and sets up
logging with the command line's overrides.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from ksocket import config, paths
from ksocket import log as ksocket_log

logger = logging.getLogger("ksocket.cli")

Handler = Callable[[argparse.Namespace], int]


def logging_options(default: object) -> argparse.ArgumentParser:
    """``--logfile`` and ``--loglevel``, as a parent parser."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--logfile", default=default, metavar="FILE", help="log to FILE ('-' is standard output)")
    options.add_argument(
        "--loglevel",
        default=default,
        type=str.upper,
        choices=config.LOG_LEVELS,
        metavar="LEVEL",
        help="one of " + ", ".join(config.LOG_LEVELS),
    )
    return options


def subcommand_options() -> argparse.ArgumentParser:
    """The logging options of a sub-command: a default there would overwrite the value given before its name."""
    return logging_options(argparse.SUPPRESS)


def add_command(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    help_text: str,
    parents: Sequence[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """A sub-command of ``group`` that runs ``handler`` (for the commands with commands of their own)."""
    sub = group.add_parser(name, parents=list(parents), help=help_text, description=help_text)
    sub.set_defaults(handler=handler)
    return sub


def load_settings(args: argparse.Namespace, *, echo_warnings: bool = True) -> config.Settings:
    """Reads the config file and sets up logging with the command line's overrides."""
    path = paths.config_path()
    settings = config.load(path)
    ksocket_log.configure(settings, logfile=args.logfile, loglevel=args.loglevel, echo_warnings=echo_warnings)
    if path.suffix in (".yaml", ".yml") and path.exists():
        logger.warning("%s: YAML config files are deprecated; convert it to ksocket.toml", path)
    return settings
