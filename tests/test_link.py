"""The agent's link against the reference hub over real sockets on loopback (issue 3)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ksocket import protocol
from ksocket.config import Settings
from ksocket.hub.server import Hub
from ksocket.hub.store import Store
from ksocket.identity import Identity
from ksocket.protocol import Admission, ErrorMessage, Result
from statemachine.link import Link
from statemachine.policy import Clock
from statemachine.runner import InlineRunner
from statemachine.session import INBOUND_BACKLOG
from tests.conftest import write_home_config
from tests.hubtools import RecordingHub
from tests.linktools import Recorder
from tests.tlstools import CertificateAuthority

pytestmark = pytest.mark.peer

SLOT = "lab"


class FixedClock(Clock):
    """Scaled time with a fixed jitter, so the backoff sequence is exact."""

    def __init__(self, scale: float = 1.0, factor: float = 0.75) -> None:
        super().__init__(scale=scale)
        self.factor = factor

    def jitter(self) -> float:
        return self.factor


@contextlib.asynccontextmanager
async def running_hub(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[RecordingHub, str]]:
    db = tmp_path / "hub.db"
    with Store(db) as store:
        token = store.add_slot(SLOT)
    async with RecordingHub(db, **options) as hub:
        yield hub, token


# protocol seconds for a FixedClock(scale=0.01), sane in real time on a busy machine: a heartbeat every
# 50 ms with 100 ms to answer it, 5 s for each attempt's TCP, WebSocket and authentication
SCALED = {"heartbeat_interval": 5.0, "heartbeat_timeout": 10.0, "resume_timeout": 500.0}


def agent_settings(hub: Hub, token: str, **overrides: Any) -> Settings:
    base = Settings(
        host="127.0.0.1",
        port=hub.port,
        protocol="wss" if hub.ssl_context else "ws",
        token=token,
        heartbeat_interval=0.2,
        heartbeat_timeout=0.2,
        resume_timeout=2.0,
        resume_retries=50,
        request_timeout=1.0,
        request_retries=2,
    )
    return dataclasses.replace(base, **overrides)


def make_link(
    tmp_path: Path,
    settings: Settings,
    *,
    runner: InlineRunner | None = None,
    clock: Clock | None = None,
    name: str = "agent-1",
) -> Link:
    """An agent with its own identity folder (agent id and session) under the test's tmp_path, recorded."""
    return Link(
        settings, runner or InlineRunner(), clock=clock, identity=Identity(tmp_path / name), listener=Recorder()
    )


def recorded(link: Link) -> Recorder:
    assert isinstance(link.listener, Recorder)
    return link.listener


async def start(link: Link) -> asyncio.Task[int]:
    return asyncio.ensure_future(link.run())


async def finish(link: Link, task: asyncio.Task[int]) -> int:
    link.request_stop()
    return await asyncio.wait_for(task, 10)


def test_authenticates_runs_an_operation_and_stops_cleanly(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            link = make_link(tmp_path, agent_settings(hub, token), clock=FixedClock())
            task = await start(link)
            await hub.wait_connected(SLOT)
            await link.wait_for("connected")
            op = await hub.submit(SLOT, "system.info")
            result = await hub.wait_result(op)
            assert result.ok and result.data is not None and result.data["version"] == "2.1.1"
            assert await finish(link, task) == 0
            await hub.wait_disconnected(SLOT)
            assert hub.close_codes(SLOT)[-1] == protocol.CLOSE_NORMAL
            assert recorded(link).states == ["connecting", "authenticating", "connected", "stopped"]

    asyncio.run(scenario())


def test_bad_token_gives_up_after_resume_retries_with_the_protocols_delays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, _token):
            # resumeTimeout bounds real I/O (TCP, WebSocket, authentication), which the clock's scale
            # shrinks too: 5000 protocol seconds are 5 real ones, so a slow handshake is not a failure
            settings = agent_settings(
                hub, "not-the-token", resume_retries=5, resume_plateau=3, resume_threshold=3.0, resume_timeout=5000.0
            )
            clock = FixedClock(scale=0.001, factor=0.75)
            link = make_link(tmp_path, settings, clock=clock)
            with caplog.at_level(logging.INFO, logger="ksocket"):
                assert await asyncio.wait_for(link.run(), 20) == 1
            # attempt k waits min(threshold, 2**(min(k, plateau) - 1)) * factor
            assert recorded(link).delays == [0.75, 1.5, 2.25, 2.25]
            assert recorded(link).states == ["connecting", "authenticating", "resuming"] * 4 + [
                "connecting",
                "authenticating",
                "failed",
            ]
            giving_up = [r for r in caplog.records if "giving up" in r.getMessage()]
            assert len(giving_up) == 1 and "invalid-token" in giving_up[0].getMessage()
            assert "not-the-token" not in caplog.text

    asyncio.run(scenario())


def test_a_second_agent_on_a_held_slot_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            first = make_link(tmp_path, agent_settings(hub, token))
            first_task = await start(first)
            await hub.wait_connected(SLOT)
            second = make_link(tmp_path, agent_settings(hub, token, resume_retries=1), name="agent-2")
            assert await asyncio.wait_for(second.run(), 10) == 1
            assert "slot-in-use" in second.last_reason
            assert first.state == "connected"
            assert await finish(first, first_task) == 0

    asyncio.run(scenario())


def test_lost_connection_resumes_the_same_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            link = make_link(tmp_path, agent_settings(hub, token, **SCALED), clock=FixedClock(scale=0.01))
            task = await start(link)
            session = await hub.wait_connected(SLOT)
            await hub.drop(SLOT)  # the TCP connection dies without a close frame
            assert await hub.wait_connected(SLOT) == session
            await link.wait_for("connected")
            assert link.identity.session == session
            assert recorded(link).states[:5] == ["connecting", "authenticating", "connected", "resuming", "connecting"]
            assert await finish(link, task) == 0

    asyncio.run(scenario())


def test_a_lost_connected_link_is_no_failed_attempt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            # with resumeRetries=1 only the one resume attempt stands between a lost link and giving up;
            # the heartbeat is too slow to interfere, resumeTimeout is 5 real seconds
            settings = agent_settings(
                hub, token, resume_retries=1, heartbeat_interval=1000, heartbeat_timeout=1000, resume_timeout=500
            )
            link = make_link(tmp_path, settings, clock=FixedClock(scale=0.01))
            task = await start(link)
            session = await hub.wait_connected(SLOT)
            with caplog.at_level(logging.INFO, logger="ksocket"):
                await hub.drop(SLOT)
                assert await hub.wait_connected(SLOT) == session
                await link.wait_for("connected")
            walk = ["connecting", "authenticating", "connected"]
            assert recorded(link).states == [*walk, "resuming", *walk]
            assert recorded(link).delays == [0.75]  # attempt k=1 of the protocol: 2**0 s times the factor
            assert "link resuming -> connecting (attempt 1 after 0.75s)" in caplog.text
            assert await finish(link, task) == 0

    asyncio.run(scenario())


def test_heartbeat_loss_closes_4408_and_resumes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            settings = agent_settings(hub, token, **SCALED)
            link = make_link(tmp_path, settings, clock=FixedClock(scale=0.01))
            task = await start(link)
            session = await hub.wait_connected(SLOT)
            hub.answer_heartbeats = False
            for _ in range(200):
                if protocol.CLOSE_HEARTBEAT_LOST in hub.close_codes(SLOT):
                    break
                await asyncio.sleep(0.01)
            assert protocol.CLOSE_HEARTBEAT_LOST in hub.close_codes(SLOT)
            hub.answer_heartbeats = True
            assert await hub.wait_connected(SLOT) == session
            assert "resuming" in recorded(link).states
            assert link.last_reason == "heartbeat lost: no heartbeat-ack 1 within 10s"
            assert await finish(link, task) == 0

    asyncio.run(scenario())


class SlowRunner(InlineRunner):
    """Takes 20 ms to admit each operation (a busy broker), and records what it was handed, in order. Its
    operations take no time of their own: the 20 ms are the whole cost the test means."""

    def __init__(self) -> None:
        super().__init__(collect=lambda params, context: {"hostname": "stand-in"})
        self.handed: list[tuple[str, str]] = []

    async def submit(self, operation: protocol.Operation) -> Admission:
        self.handed.append(("operation", operation.id))
        await asyncio.sleep(0.02)
        return await super().submit(operation)

    async def cancel(self, operation_id: str) -> None:
        self.handed.append(("cancel", operation_id))


@pytest.mark.parametrize("backlog", [INBOUND_BACKLOG, 5], ids=["backlog-room", "backlog-full"])
def test_a_burst_of_operations_to_a_slow_runner_keeps_the_heartbeat_and_the_order(tmp_path: Path, backlog: int) -> None:
    """100 operations take the runner 2 s to admit; the heartbeat must not wait 0.3 s for its ack behind them."""

    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            runner = SlowRunner()
            settings = agent_settings(hub, token, heartbeat_interval=0.1, heartbeat_timeout=0.3)
            link = Link(settings, runner, identity=Identity(tmp_path / "agent"), listener=Recorder(), backlog=backlog)
            task = await start(link)
            await hub.wait_connected(SLOT)
            sent: list[tuple[str, str]] = []
            for n in range(100):
                operation = protocol.Operation(id=f"op-{n}", name="system.info")
                await hub.send_raw(SLOT, protocol.serialize(operation))
                sent.append(("operation", operation.id))
                if n % 10 == 0:  # a cancel right behind its operation must reach the runner after it
                    await hub.send_raw(SLOT, protocol.serialize(protocol.Cancel(id=operation.id)))
                    sent.append(("cancel", operation.id))
            answered = {f"op-{n}" for n in range(100)}
            async with asyncio.timeout(20):
                while {m.id for m in hub.received(SLOT) if isinstance(m, Result)} != answered:
                    await asyncio.sleep(0.05)
            assert recorded(link).states == ["connecting", "authenticating", "connected"], link.last_reason
            assert runner.handed == sent
            assert await finish(link, task) == 0

    asyncio.run(scenario())


def test_hub_restart_while_the_agent_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            port = hub.port
            link = make_link(tmp_path, agent_settings(hub, token, **SCALED), clock=FixedClock(scale=0.01))
            task = await start(link)
            await hub.wait_connected(SLOT)
        async with RecordingHub(tmp_path / "hub.db", port=port) as second:
            await second.wait_connected(SLOT, timeout=10)
            op = await second.submit(SLOT, "system.info")
            assert (await second.wait_result(op)).ok
            assert await finish(link, task) == 0

    asyncio.run(scenario())


def test_bad_frames_from_the_hub_are_answered_and_the_link_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            link = make_link(tmp_path, agent_settings(hub, token))
            task = await start(link)
            await hub.wait_connected(SLOT)
            await hub.send_raw(SLOT, "this is not json")
            await hub.send_raw(SLOT, '{"type": "surprise"}')
            await hub.send_raw(SLOT, '{"type": "ack", "seq": -1}')
            errors: list[ErrorMessage] = []
            for _ in range(200):
                errors = [m for m in hub.received(SLOT) if isinstance(m, ErrorMessage)]
                if len(errors) == 3:
                    break
                await asyncio.sleep(0.01)
            assert [e.code for e in errors] == ["bad-message", "unknown-type", "bad-message"]
            assert "seq" in errors[2].message
            op = await hub.submit(SLOT, "system.info")
            assert (await hub.wait_result(op)).ok
            assert recorded(link).states == ["connecting", "authenticating", "connected"]
            assert await finish(link, task) == 0

    asyncio.run(scenario())


def test_unacked_results_are_sent_again_then_the_link_counts_as_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            settings = agent_settings(hub, token, **SCALED, request_timeout=10.0, request_retries=2)  # 100 ms
            runner = InlineRunner()
            link = make_link(tmp_path, settings, runner=runner, clock=FixedClock(scale=0.01))
            task = await start(link)
            await hub.wait_connected(SLOT)
            hub.ack_results = False
            op = await hub.submit(SLOT, "system.info")
            await hub.wait_result(op)
            for _ in range(300):
                if protocol.CLOSE_HEARTBEAT_LOST in hub.close_codes(SLOT):
                    break
                await asyncio.sleep(0.01)
            sent = [m for m in hub.received(SLOT) if isinstance(m, Result)]
            assert [m.seq for m in sent][:3] == [1, 1, 1]  # the first send and requestRetries=2 more
            assert protocol.CLOSE_HEARTBEAT_LOST in hub.close_codes(SLOT)
            hub.ack_results = True
            await hub.wait_connected(SLOT)
            for _ in range(200):
                if not await runner.unacked():
                    break
                await asyncio.sleep(0.01)
            assert await runner.unacked() == []
            assert len(hub.results(SLOT)) == 1
            assert await finish(link, task) == 0

    asyncio.run(scenario())


def test_tls_with_a_test_ca_verifies_and_refuses_a_wrong_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    stranger = CertificateAuthority.create(tmp_path / "stranger", "someone else")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("KSOCKET_INSECURE", raising=False)

    async def scenario() -> None:
        async with running_hub(tmp_path, ssl_context=ca.server_context("hub", ["127.0.0.1"])) as (hub, token):
            link = make_link(tmp_path, agent_settings(hub, token))
            task = await start(link)
            await hub.wait_connected(SLOT)
            assert await finish(link, task) == 0
        (tmp_path / "hub.db").unlink()
        wrong = stranger.server_context("hub", ["127.0.0.1"])
        async with running_hub(tmp_path, ssl_context=wrong) as (hub, token):
            link = make_link(tmp_path, agent_settings(hub, token, resume_retries=1))
            assert await asyncio.wait_for(link.run(), 10) == 1
            assert "certificate verify failed" in link.last_reason or "unable to get local issuer" in link.last_reason
            monkeypatch.setenv("KSOCKET_INSECURE", "1")
            link = make_link(tmp_path, agent_settings(hub, token))
            task = await start(link)
            await hub.wait_connected(SLOT)
            assert await finish(link, task) == 0

    asyncio.run(scenario())


def test_ksocket_connect_runs_until_sigterm(tmp_path: Path, home: Path) -> None:
    async def scenario() -> None:
        async with running_hub(tmp_path) as (hub, token):
            write_home_config(
                home,
                f'logfile = "-"\n[connect]\nhost = "127.0.0.1"\nport = {hub.port}\n'
                f'protocol = "ws"\ntoken = "{token}"\n',
            )
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ksocket.cli", "connect",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "KSOCKET_HOME": str(home)},
            )  # fmt: skip
            try:
                await hub.wait_connected(SLOT, timeout=20)
                process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(process.wait(), 20) == 0
            finally:
                if process.returncode is None:
                    process.kill()
            assert process.stdout is not None
            output = (await process.stdout.read()).decode()
            await hub.wait_disconnected(SLOT)
            assert hub.close_codes(SLOT)[-1] == protocol.CLOSE_NORMAL
            assert "link connecting -> authenticating" in output
            assert "link authenticating -> connected" in output
            assert "link connected -> stopped" in output
            assert token not in output

    asyncio.run(scenario())
