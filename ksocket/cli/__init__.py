"""The ``ksocket`` command line: one table of commands, each one a module, and errors as one line.

:data:`COMMANDS` names each command's module and its one-line help. ``ksocket --help`` lists them
from the table alone; a command's module is imported, and adds its arguments and handler with
``configure(parser)``, only when argparse reaches that command's name, so that ``ksocket version``
does not pay for the scanner's or the hub's imports.

Handlers return the process's exit status. A :class:`~ksocket.errors.KsocketError` escaping a
handler is printed as ``ksocket: error: …`` (secrets masked) with status 2 for configuration
errors and invalid parameters, 1 otherwise; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ksocket import redact
from ksocket.cli.common import Handler, logging_options, subcommand_options
from ksocket.errors import ConfigError, KsocketError
from ksocket.protocol import ErrorCode


class Command(NamedTuple):
    module: str
    help: str
    configure: str = "configure"
    """The module's function that adds the command's arguments and handler to its parser."""


COMMANDS: dict[str, Command] = {
    "version": Command("ksocket.cli.version", "print the version"),
    "config": Command("ksocket.cli.config", "list, read or change settings"),
    "diagnostics": Command("ksocket.cli.diagnostics", "check the system, the config and the link to the hub"),
    "connect": Command("ksocket.cli.connect", "run the agent: connect to the hub and take operations (the service)"),
    "worker": Command("ksocket.cli.worker", "run operations from a shared Redis broker (broker.url) for other agents"),
    "scan": Command("ksocket.cli.scan", "find the hosts on the networks around (networks.scan, locally)"),
    "inspect": Command("ksocket.cli.inspect", "inspect one host over SSH, WinRM and SNMP"),
    "discover": Command("ksocket.cli.discover", "find hosts round by round, learning from each (networks.discover)"),
    "credentials": Command("ksocket.cli.credentials", "explain which credential files apply to an address"),
    "encrypt": Command("ksocket.cli.encrypt", "encrypt a credential file in place"),
    "decrypt": Command("ksocket.cli.encrypt", "decrypt a credential file in place", "configure_decrypt"),
    "hub": Command("ksocket.cli.hub", "the reference hub: a small controller for agents"),
    "service": Command("ksocket.cli.service", "install and control the ksocket service"),
}


if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # generic only in the type stubs
    SubParsers = argparse._SubParsersAction


class ConfiguredWhenNamed(SubParsers):
    """The commands' sub-parsers, each given its arguments by its module when argparse reaches its name."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list)
        command = COMMANDS.get(values[0])
        if command is not None:
            configure = getattr(importlib.import_module(command.module), command.configure)
            configure(self.choices[values[0]])
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, each command's arguments still to be added by its module (one parse per parser)."""
    parser = argparse.ArgumentParser(prog="ksocket", parents=[logging_options(None)], description="The ksocket agent.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=ConfiguredWhenNamed)
    common = subcommand_options()
    for name, command in COMMANDS.items():
        commands.add_parser(name, parents=[common], help=command.help, description=command.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # output that fit in the buffer meets a closed pipe only here
        return status
    except BrokenPipeError:
        # the reader left (``| head``): stop quietly, as the shell's tools do on SIGPIPE; standard
        # output goes to devnull so that the interpreter's last flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except ConfigError as exc:
        print(f"ksocket: error: {redact.redact(str(exc))}", file=sys.stderr)
        return 2
    except KsocketError as exc:
        print(f"ksocket: error: {redact.redact(str(exc))}", file=sys.stderr)
        return 2 if getattr(exc, "code", "") == ErrorCode.INVALID_PARAMS else 1
    except KeyboardInterrupt:
        return 130
