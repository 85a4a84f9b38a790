"""``ksocket service install|uninstall|status|start|stop|restart`` (manual 2.4).

    ksocket service install      write and register the service, then (re)start it
    ksocket service uninstall    stop and unregister the service, remove its file
    ksocket service status       one word: missing, running, stopped or processing
    ksocket service start        start it (Skip when it is running)
    ksocket service stop         stop it (Skip when it is stopped)
    ksocket service restart      restart it, or start it when it is stopped

Every command takes ``--backend systemd|upstart|nssm`` (default: what the host has). The service
runs ``ksocket connect`` from this ksocket's install prefix with this KSOCKET_HOME.
"""

from __future__ import annotations

import argparse

from ksocket.cli.common import Handler, add_command, subcommand_options
from ksocket.diagnostics import Report
from ksocket.service import BACKENDS, Backend, detect


def _backend(args: argparse.Namespace) -> Backend:
    return detect(args.backend)


def cmd_install(args: argparse.Namespace) -> int:
    return _backend(args).install(Report())


def cmd_uninstall(args: argparse.Namespace) -> int:
    return _backend(args).uninstall(Report())


def cmd_status(args: argparse.Namespace) -> int:
    print(_backend(args).status(), flush=True)
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    return _backend(args).start(Report())


def cmd_stop(args: argparse.Namespace) -> int:
    return _backend(args).stop(Report())


def cmd_restart(args: argparse.Namespace) -> int:
    return _backend(args).restart(Report())


COMMANDS: list[tuple[str, Handler, str]] = [
    ("install", cmd_install, "install the ksocket service and (re)start it"),
    ("uninstall", cmd_uninstall, "stop and uninstall the ksocket service"),
    ("status", cmd_status, "print the service's state: missing, running, stopped or processing"),
    ("start", cmd_start, "start the service (Skip when it is already running)"),
    ("stop", cmd_stop, "stop the service (Skip when it is already stopped)"),
    ("restart", cmd_restart, "restart the service (a stopped one is started)"),
]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the service's sub-commands to the ``ksocket service`` parser."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--backend", choices=list(BACKENDS), help="the init system to use (default: what this host has)"
    )
    parents = [subcommand_options(), options]
    commands = parser.add_subparsers(dest="service_command", required=True, metavar="COMMAND")
    for name, handler, help_text in COMMANDS:
        add_command(commands, name, handler, help_text, parents)
