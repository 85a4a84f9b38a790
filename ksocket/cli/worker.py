"""``ksocket worker [BROKER_URL] [--threads N]``: the agent's operations served from a shared Redis.

The broker is BROKER_URL, else ``KSOCKET_BROKER``, else ``broker.url`` of the settings; the threads
``--threads``, else ``connect.maxRunningOperations``. :func:`tasks.worker.run_worker` does the work.
"""

from __future__ import annotations

import argparse
import importlib
import os

from ksocket.cli.common import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    from tasks.broker import NAMESPACE

    parser.add_argument(
        "broker_url", nargs="?", metavar="BROKER_URL", help="default: KSOCKET_BROKER, else broker.url of the settings"
    )
    parser.add_argument("--threads", type=int, help="operations at once (default: connect.maxRunningOperations)")
    parser.add_argument("--namespace", default=NAMESPACE, help="the broker's key prefix (default %(default)s)")
    parser.add_argument("--heartbeat-timeout", type=float, metavar="S", help="seconds (tests shorten it)")
    parser.add_argument("--requeue-interval", type=float, metavar="S", help="seconds (tests shorten it)")
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE", help="a module to import first"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ksocket.collectors.base import Environment
    from tasks.pipeline import Timings
    from tasks.worker import run_worker

    settings = load_settings(args, echo_warnings=False)
    for module in args.imports:
        importlib.import_module(module)
    timings = Timings()
    if args.heartbeat_timeout is not None or args.requeue_interval is not None:
        timings = Timings(
            heartbeat_timeout=args.heartbeat_timeout or timings.heartbeat_timeout,
            requeue_interval=args.requeue_interval or timings.requeue_interval,
        )
    url = args.broker_url or os.environ.get("KSOCKET_BROKER") or settings.broker
    threads = args.threads or settings.max_running_operations
    environment = Environment.from_settings(settings)
    return run_worker(url, threads, namespace=args.namespace, timings=timings, environment=environment)
