"""``ksocket diagnostics [system|config|connect|authenticate]…``: the checks of :mod:`ksocket.diagnostics`."""

from __future__ import annotations

import argparse

from ksocket import config, diagnostics
from ksocket import log as ksocket_log
from ksocket.cli.common import load_settings
from ksocket.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    # argparse refuses an empty list with choices= on nargs="*", so the names are checked by the handler
    parser.add_argument("sections", nargs="*", metavar="CHECK", help="system, config, connect or authenticate")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    unknown = [name for name in args.sections if name not in diagnostics.SECTIONS]
    if unknown:
        raise ConfigError(f"no diagnostics {unknown[0]!r}; choose from {', '.join(diagnostics.SECTIONS)}")
    # the report is the check lines: what the log says besides (the link probe giving up, say) stays in the log
    try:
        settings: config.Settings | None = load_settings(args, echo_warnings=False)
    except ConfigError:
        # the config section reports what is wrong with the file; the log goes where the defaults say
        ksocket_log.configure(config.Settings(), logfile=args.logfile, loglevel=args.loglevel, echo_warnings=False)
        settings = None
    return diagnostics.run(args.sections or list(diagnostics.DEFAULT_SECTIONS), settings)
