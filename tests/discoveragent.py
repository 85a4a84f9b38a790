"""An agent process running ``networks.discover`` on the fake world, for the SIGKILL test.

``python -m tests.discoveragent URL FOLDER [--submit ID] [--block ADDRESS]``: a PipelineRunner on URL
with one running operation, the fake world's sweeps and inspections logged to ``FOLDER/world.log``;
``--block`` makes the inspection of ADDRESS hang (the test kills the process there). Prints
``accepted ID``, ``ready``, then for each result ``data SEQ JSON``, a ``record ID SEQ JSON`` line
per record still in the journal's outbox (nothing acks them: every one the operation gave, whichever
process journalled it), and ``result ID``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ksocket.collectors.base import Context, Document
from ksocket.collectors.discover.params import Request
from ksocket.protocol import Record, Result
from tasks import discover
from tasks.runner import PipelineRunner
from tests.discoverworld import World
from tests.pipelinetools import KILLABLE, op


class LoggedWorld(World):
    def __init__(self, folder: Path, block: str | None) -> None:
        super().__init__()
        self.log = folder / "world.log"
        self.block = block
        self.lock = threading.Lock()

    def _write(self, line: str) -> None:
        with self.lock, self.log.open("a") as handle:
            handle.write(line + "\n")

    def sweep(self, addresses: Sequence[str], request: Request, context: Context) -> list[Document]:
        self._write("sweep " + " ".join(addresses))
        return super().sweep(addresses, request, context)

    def inspect(self, address: str, request: Request, context: Context) -> Document:
        self._write(f"inspect {address}")
        if address == self.block:
            threading.Event().wait()
        return super().inspect(address, request, context)


async def _agent(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    discover.DRIVERS.append(LoggedWorld(folder, args.block))
    runner = PipelineRunner(broker_url=args.url, max_running_operations=1, timings=KILLABLE, identity_folder=folder)
    await runner.start()
    if args.submit:
        answer = await runner.submit(op(args.submit, "networks.discover"))
        print(f"{answer.TYPE} {args.submit}", flush=True)
    print("ready", flush=True)
    while True:
        event = await runner.next_event()
        if isinstance(event, Result):
            print(f"data {event.seq} {json.dumps(event.data)}", flush=True)
            for item in await runner.unacked():
                if isinstance(item, Record) and item.id == event.id:
                    print(f"record {item.id} {item.seq} {json.dumps(item.record)}", flush=True)
            print(f"result {event.id}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.discoveragent")
    parser.add_argument("url")
    parser.add_argument("folder")
    parser.add_argument("--submit")
    parser.add_argument("--block")
    asyncio.run(_agent(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
