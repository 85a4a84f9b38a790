"""``ksocket connect``: the agent service, the connection state machine run until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal

from ksocket.cli.common import load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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
