"""The ``ksocket`` command line: one parser, one handler per command, errors as one line.

Handlers return the process's exit status. A :class:`~ksocket.errors.KsocketError` escaping a
handler is printed as ``ksocket: error: …`` (secrets masked) with status 2 for configuration
errors and 1 otherwise; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ksocket import __version__, config, paths, redact
from ksocket import log as ksocket_log
from ksocket.errors import ConfigError, KsocketError

logger = logging.getLogger("ksocket.cli")

Handler = Callable[[argparse.Namespace], int]


def load_settings(args: argparse.Namespace, *, echo_warnings: bool = True) -> config.Settings:
    """Reads the config file and sets up logging with the command line's overrides."""
    path = paths.config_path()
    settings = config.load(path)
    ksocket_log.configure(settings, logfile=args.logfile, loglevel=args.loglevel, echo_warnings=echo_warnings)
    if path.suffix in (".yaml", ".yml") and path.exists():
        logger.warning("%s: YAML config files are deprecated; convert it to ksocket.toml", path)
    return settings


def cmd_version(args: argparse.Namespace) -> int:
    print(__version__)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.value is not None:
        config.check_name(args.name)
        config.load(paths.config_path())  # a broken file is reported, not rewritten
        config.set_value(args.name, args.value)
        return 0
    settings = load_settings(args)
    if args.name is not None:
        print(config.display(settings, args.name, reveal=True))
        return 0
    for name in config.NAMES:
        print(f"{name}={config.display(settings, name)}")
    return 0


def cmd_credentials(args: argparse.Namespace) -> int:
    from ksocket.credentials import models, search

    settings = load_settings(args)
    models.parse_address(args.address)
    for kind in args.kind or ["ssh", "winrm", "snmp"]:
        print(f"[{kind}]")
        considered = search.explain(kind, args.address, settings.credentials_path)
        for item in considered:
            print(f"  {item.verdict:8} {item.path}  ({item.reason})")
        if not any(item.verdict == "match" for item in considered):
            print(f"  none: no {kind} credential file matches {args.address}")
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    from ksocket.credentials import crypto

    load_settings(args)
    crypto.encrypt_file(args.file)
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from ksocket.credentials import crypto

    load_settings(args)
    crypto.decrypt_file(args.file)
    return 0


def cmd_diagnostics(args: argparse.Namespace) -> int:
    from ksocket import diagnostics

    unknown = [name for name in args.sections if name not in diagnostics.SECTIONS]
    if unknown:
        raise ConfigError(f"no diagnostics {unknown[0]!r}; choose from {', '.join(diagnostics.SECTIONS)}")
    try:
        settings: config.Settings | None = load_settings(args)
    except ConfigError:
        # the config section reports what is wrong with the file; the log goes where the defaults say
        ksocket_log.configure(config.Settings(), logfile=args.logfile, loglevel=args.loglevel)
        settings = None
    return diagnostics.run(args.sections or list(diagnostics.DEFAULT_SECTIONS), settings)


def cmd_connect(args: argparse.Namespace) -> int:
    import asyncio

    from statemachine.link import Link
    from tasks.runner import PipelineRunner

    settings = load_settings(args, echo_warnings=False)

    async def serve() -> int:
        async with PipelineRunner(settings) as runner:
            link = Link(settings, runner)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, link.request_stop)
            return await link.run()

    return asyncio.run(serve())


def cmd_worker(args: argparse.Namespace) -> int:
    from tasks.worker import run_worker

    settings = load_settings(args, echo_warnings=False)
    return run_worker(settings.broker, args.threads or settings.max_running_operations)


def cmd_scan(args: argparse.Namespace) -> int:
    from ksocket import scan_cli

    return scan_cli.run_scan(args, load_settings(args))


def cmd_inspect(args: argparse.Namespace) -> int:
    from ksocket import inspect_cli

    return inspect_cli.run_inspect(args, load_settings(args))


def _common_options(default: object) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--logfile", default=default, metavar="FILE", help="log to FILE ('-' is standard output)")
    common.add_argument(
        "--loglevel",
        default=default,
        type=str.upper,
        choices=config.LOG_LEVELS,
        metavar="LEVEL",
        help="one of " + ", ".join(config.LOG_LEVELS),
    )
    return common


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; ``inspect``, ``hub`` and ``service`` get their arguments only when their
    name is among ``argv`` (the command that runs always is): importing their modules would cost every
    command its start-up time, ``ksocket scan`` included. ``ksocket --help`` lists them all the same."""
    named = set(argv)
    parser = argparse.ArgumentParser(prog="ksocket", parents=[_common_options(None)], description="The ksocket agent.")
    # a subcommand's default would overwrite the value given before the subcommand's name
    common = _common_options(argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    command("version", cmd_version, "print the version")
    sub = command("config", cmd_config, "list, read or change settings")
    sub.add_argument("name", nargs="?", help="a setting's name, e.g. connect.host")
    sub.add_argument("value", nargs="?", help="the new value to store in ksocket.toml")

    sub = command("diagnostics", cmd_diagnostics, "check the system, the config and the link to the hub")
    # argparse refuses an empty list with choices= on nargs="*", so the names are checked by the handler
    sub.add_argument("sections", nargs="*", metavar="CHECK", help="system, config, connect or authenticate")
    command("connect", cmd_connect, "run the agent: connect to the hub and take operations (the service)")
    sub = command("worker", cmd_worker, "run operations from a shared Redis broker (broker.url) for other agents")
    sub.add_argument("--threads", type=int, help="operations at once (default: connect.maxRunningOperations)")
    sub = command("scan", cmd_scan, "find the hosts on the networks around (networks.scan, locally)")
    if "scan" in named:
        from ksocket import scan_cli

        scan_cli.configure(sub)
    sub = command("inspect", cmd_inspect, "inspect one host over SSH, WinRM and SNMP")
    if "inspect" in named:
        from ksocket import inspect_cli

        inspect_cli.configure(sub)
    sub = command("credentials", cmd_credentials, "explain which credential files apply to an address")
    sub.add_argument("action", choices=["explain"])
    sub.add_argument("address")
    sub.add_argument("--kind", choices=["ssh", "winrm", "snmp"], action="append")
    for name, handler, verb in [("encrypt", cmd_encrypt, "encrypt"), ("decrypt", cmd_decrypt, "decrypt")]:
        sub = command(name, handler, f"{verb} a credential file in place")
        sub.add_argument("file", type=Path)

    sub = commands.add_parser("hub", parents=[common], help="the reference hub: a small controller for agents")
    if "hub" in named:
        from ksocket.hub import cli as hub_cli

        hub_cli.configure(sub, common)
    sub = commands.add_parser("service", parents=[common], help="install and control the ksocket service")
    if "service" in named:
        from ksocket.service import cli as service_cli

        service_cli.configure(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
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
        return 2 if getattr(exc, "code", "") == "invalid-params" else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
