"""The log: every peer string made inert (clipped, control characters escaped), the file rotated by size."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from pathlib import Path

import pytest

from ksocket import cli, protocol, redact, sanitise
from ksocket import log as ksocket_log
from ksocket.config import Settings
from ksocket.identity import Identity
from statemachine.link import Link
from tests.hubtools import authenticated, hub_with_slot, until
from tests.linktools import Recorder
from tests.pipelinetools import embedded_url, running
from tests.test_link import SLOT, agent_settings, finish, running_hub, start

LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def logged(tmp_path: Path, **settings: object) -> Path:
    path = tmp_path / "ksocket.log"
    ksocket_log.configure(Settings(logfile=str(path), **settings))  # type: ignore[arg-type]
    return path


def test_a_peer_string_in_a_log_line_is_escaped_and_clipped(tmp_path: Path) -> None:
    path = logged(tmp_path)
    forged = "op-1\n2026-01-01 00:00:00,000 ERROR ksocket.tasks forged line\x1b[2J\u2028" + "x" * 10_000
    logging.getLogger("ksocket.test").warning("cancel %s: %r (%d)", forged, forged, 7)
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 1
    assert "op-1\\n2026-01-01" in lines[0] and "\\x1b[2J" in lines[0] and "\x1b" not in lines[0]
    assert lines[0].count("more characters]") == 2 and lines[0].endswith("(7)")
    assert len(lines[0]) < 3 * sanitise.MAX_TEXT


def test_a_secret_is_masked_before_its_argument_is_clipped(tmp_path: Path) -> None:
    secret = "ks1_" + "s" * 40
    redact.register(secret)
    path = logged(tmp_path)
    logging.getLogger("ksocket.test").info("%s", "y" * (sanitise.MAX_TEXT - 10) + secret)
    text = path.read_text("utf-8")
    assert "ks1_" not in text and "ssssss" not in text


def test_a_message_without_arguments_is_one_line_of_bounded_length(tmp_path: Path) -> None:
    path = logged(tmp_path)
    logging.getLogger("ksocket.test").info("built in place: " + "\r\n" * 10 + "z" * 100_000)
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 1 and len(lines[0]) < sanitise.MAX_MESSAGE + 200


def test_the_log_file_rotates_at_logmaxbytes_keeping_logbackups(tmp_path: Path) -> None:
    path = logged(tmp_path, log_max_bytes=4096, log_backups=2)
    for n in range(500):
        logging.getLogger("ksocket.test").info("line %d %s", n, "p" * 100)
    files = sorted(tmp_path.glob("ksocket.log*"))
    assert [f.name for f in files] == ["ksocket.log", "ksocket.log.1", "ksocket.log.2"]
    assert all(f.stat().st_size <= 4096 for f in files)
    assert "line 499 " in path.read_text("utf-8")


@pytest.mark.peer
@pytest.mark.redis
def test_a_hostile_hub_flooding_cancels_and_errors_leaves_the_log_bounded(tmp_path: Path) -> None:
    """1 MiB cancel ids and error messages: every line clipped, the files within logmaxbytes x (logbackups + 1)."""
    max_bytes, backups, floods = 16 * 1024, 2, 40
    logged(tmp_path, log_max_bytes=max_bytes, log_backups=backups, logfilters="")
    huge = "\n" + "c" * (1024 * 1024)

    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token), running(embedded_url(tmp_path)) as runner:
            settings = dataclasses.replace(agent_settings(hub, token), heartbeat_interval=5.0, heartbeat_timeout=5.0)
            link = Link(settings, runner, identity=Identity(tmp_path / "agent"), listener=Recorder())
            task = await start(link)
            await hub.wait_connected(SLOT)
            for n in range(floods):
                await hub.send_raw(SLOT, protocol.serialize(protocol.Cancel(id=f"{n}{huge}")))
                await hub.send_raw(SLOT, protocol.serialize(protocol.ErrorMessage(code="x", message=f"{n}{huge}")))
            await hub.submit(SLOT, "system.info")
            await until(lambda: any(isinstance(m, protocol.Result) for m in hub.received(SLOT)), timeout=30)
            assert await finish(link, task) == 0

    asyncio.run(scenario())
    files = list(tmp_path.glob("ksocket.log*"))
    assert sum(f.stat().st_size for f in files) <= max_bytes * (backups + 1)
    for f in files:
        for line in f.read_text("utf-8").splitlines():
            assert LINE_START.match(line), line[:200]
            assert len(line) < sanitise.MAX_MESSAGE + 200


@pytest.mark.peer
def test_an_agent_can_forge_neither_the_hubs_log_nor_its_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = logged(tmp_path, logfilters="ksocket.hub")
    forged = "agent-1\n2026-01-01 00:00:00,000 INFO ksocket.hub forged\x1b[2J\x1b]0;title\x07"

    async def scenario() -> None:
        async with hub_with_slot(tmp_path / "hub.db") as (hub, token):
            client, _ = await authenticated(hub.url, token, agent=forged)
            await client.send(protocol.ErrorMessage(code=f"bad{forged}", message=forged))
            await until(lambda: "reports" in path.read_text("utf-8"))
            await client.close()

    asyncio.run(scenario())
    lines = path.read_text("utf-8").splitlines()
    assert lines and all(LINE_START.match(line) for line in lines), lines
    assert "\x1b" not in "".join(lines) and any("reports" in line and "forged\\x1b[2J" in line for line in lines)
    capsys.readouterr()
    assert cli.main(["hub", "agents", "--db", str(tmp_path / "hub.db"), "--logfile", str(path)]) == 0
    table = capsys.readouterr().out
    assert "\x1b" not in table and "\x07" not in table and "agent-1\\n2026" in table
