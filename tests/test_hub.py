"""Tests of the reference hub (ksocket.hub): its store, its server on a real socket, its commands.

Every server test runs a hub in-process on 127.0.0.1 port 0 (mostly the ``RecordingHub`` of
``tests.hubtools``, which records what it hears) and talks to it with the raw client of
``tests.hubtools``; the commands run in-process through ``ksocket.cli.main`` or, where
the point is another process sharing the database, as ``python -m ksocket.cli``.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import logging
import os
import re
import signal
import ssl
import stat
import sys
import threading
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from ksocket import cli
from ksocket.hub.errors import HubError, UnknownSlot
from ksocket.hub.server import UNANSWERED_FRAMES, Hub, HubObserver
from ksocket.hub.store import Store
from ksocket.hub.web.operators import Operators
from ksocket.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_HEARTBEAT_LOST,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SLOT_IN_USE,
    Accepted,
    Ack,
    Authenticate,
    Authenticated,
    Cancel,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    Message,
    Operation,
    Progress,
    ProtocolError,
    Record,
    Refused,
    Rejected,
    Result,
    serialize,
)
from tests.hubtools import (
    QUIET,
    NotConnected,
    RawClient,
    RecordingHub,
    add_slot,
    authenticated,
    hub_with_slot,
    ksocket,
    run,
    self_signed,
    until,
)
from tests.webtools import FAST_HASHER, PASSWORD, Client

pytestmark = [pytest.mark.peer, pytest.mark.timeout(60)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "hub.db"


def with_hub(db: Path, test: Callable[[RecordingHub], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with RecordingHub(db, **options) as hub:
            await test(hub)

    run(main())


# --------------------------------------------------------------------------- tokens and the store


def test_token_commands_show_the_token_once_and_store_only_its_hash(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["hub", "token", "add", "office"]) == 0
    token = capsys.readouterr().out.strip()
    assert re.fullmatch(r"ks1_[A-Za-z0-9_-]{43}", token)

    db = home / "var" / "lib" / "ksocket" / "hub.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    for file in db.parent.iterdir():  # the database and any WAL / shared-memory files
        assert token.encode() not in file.read_bytes(), file

    with Store(db) as store:
        assert store.slot_for_token(token) == "office"
        assert store.slot_for_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None

    assert cli.main(["hub", "token", "add", "office"]) == 1
    assert "already exists" in capsys.readouterr().err

    assert cli.main(["hub", "token", "list"]) == 0
    listing = capsys.readouterr().out
    assert token not in listing
    assert re.search(r"^office\s+\d{4}-\d\d-\d\dT[\d:]+Z\s+-$", listing, re.M), listing

    assert cli.main(["hub", "token", "revoke", "office"]) == 0
    assert cli.main(["hub", "token", "list"]) == 0
    assert re.search(r"^office\s+\S+Z\s+\S+Z$", capsys.readouterr().out, re.M)
    with Store(db) as store:
        assert store.slot_for_token(token) is None

    assert cli.main(["hub", "token", "revoke", "nobody"]) == 1
    assert "no slot named 'nobody'" in capsys.readouterr().err


def test_slot_names_are_checked(db: Path) -> None:
    with Store(db) as store, pytest.raises(HubError, match="invalid slot name"):
        store.add_slot("no spaces")
    with Store(db) as store, pytest.raises(UnknownSlot):
        store.add_operation("missing", "system.info")


# --------------------------------------------------------------------------- authentication


def test_authenticate_records_the_agent_and_its_disconnection(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client = await RawClient.open(hub.url)
        assert client.ws.subprotocol == "ksocket.v2"
        reply = await client.authenticate(token, agent="a-1")
        assert isinstance(reply, Authenticated) and not reply.resumed and reply.session
        assert await hub.wait_connected("s1") == reply.session
        agent = hub.store.agent("s1")
        assert agent is not None
        assert (agent.agent, agent.version, agent.state, agent.session) == ("a-1", "2.1.1", "connected", reply.session)
        assert isinstance(hub.received("s1")[0], Authenticate)
        await client.close()
        await hub.wait_disconnected("s1")
        agent = hub.store.agent("s1")
        assert agent is not None and agent.state == "disconnected"
        assert hub.close_codes("s1") == [1000]

    with_hub(db, test)


def test_a_bad_token_is_rejected_with_4401(db: Path) -> None:
    add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client = await RawClient.open(hub.url)
        reply = await client.authenticate("not-the-token")
        assert isinstance(reply, Rejected) and reply.reason == "invalid-token"
        assert await client.closed() == CLOSE_AUTH_FAILED
        assert not hub.connected("s1")

    with_hub(db, test)


def test_a_revoked_token_is_rejected_and_its_agent_disconnected(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client, _ = await authenticated(hub.url, token)
        with Store(db) as other:  # as `ksocket hub token revoke` does, from another process
            assert other.revoke("s1")
        assert await client.closed() == CLOSE_AUTH_FAILED
        assert not hub.connected("s1")
        client = await RawClient.open(hub.url)
        reply = await client.authenticate(token)
        assert isinstance(reply, Rejected) and reply.reason == "invalid-token"
        assert await client.closed() == CLOSE_AUTH_FAILED

    with_hub(db, test)


def test_another_protocol_version_is_rejected_with_4400(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        # a version the hub does not know, and one other than the subprotocol's (v1 on a ksocket.v2 link)
        for subprotocol, version in (("ksocket.v2", 3), ("ksocket.v2", 1), ("ksocket.v1", 2)):
            client = await RawClient.open(hub.url, subprotocols=[subprotocol])
            reply = await client.authenticate(token, protocol=version)
            assert isinstance(reply, Rejected) and reply.reason == "unsupported-protocol", (subprotocol, version)
            assert await client.closed() == CLOSE_PROTOCOL_ERROR

    with_hub(db, test)


def test_a_held_slot_is_refused_unless_the_newcomer_resumes_the_holders_session(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        holder, session = await authenticated(hub.url, token, agent="a-1")

        stranger = await RawClient.open(hub.url)
        reply = await stranger.authenticate(token, agent="a-2")
        assert isinstance(reply, Rejected) and reply.reason == "slot-in-use"
        assert await stranger.closed() == CLOSE_SLOT_IN_USE

        impostor = await RawClient.open(hub.url)  # the right session, but another installation
        reply = await impostor.authenticate(token, agent="a-2", session=session)
        assert isinstance(reply, Rejected) and reply.reason == "slot-in-use"

        newcomer = await RawClient.open(hub.url)
        reply = await newcomer.authenticate(token, agent="a-1", session=session)
        assert reply == Authenticated(session=session, resumed=True)
        assert await holder.closed() == CLOSE_SLOT_IN_USE
        await until(lambda: hub.close_codes("s1") == [CLOSE_SLOT_IN_USE])  # the old connection's handler ended
        assert hub.session("s1") == session
        agent = hub.store.agent("s1")
        assert agent is not None and agent.state == "connected"

        await newcomer.heartbeat(7)
        assert await newcomer.expect(HeartbeatAck) == HeartbeatAck(n=7)

    with_hub(db, test)


def test_a_lost_session_is_resumed_and_a_new_installation_gets_a_new_one(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client, session = await authenticated(hub.url, token, agent="a-1")
        await hub.drop("s1")
        assert await client.closed() is None  # no close frame: the link was simply lost
        assert not hub.connected("s1")

        client = await RawClient.open(hub.url)
        assert await client.authenticate(token, agent="a-1", session=session) == Authenticated(
            session=session, resumed=True
        )
        await client.close()
        await hub.wait_disconnected("s1")

        client = await RawClient.open(hub.url)
        reply = await client.authenticate(token, agent="a-2", session=session)
        assert isinstance(reply, Authenticated) and not reply.resumed and reply.session != session
        await client.close()
        await hub.wait_disconnected("s1")

        client = await RawClient.open(hub.url)
        reply = await client.authenticate(token, agent="a-2", session="made-up")
        assert isinstance(reply, Authenticated) and not reply.resumed

    with_hub(db, test)


def test_a_session_survives_a_hub_restart(db: Path) -> None:
    token = add_slot(db)

    async def main() -> None:
        async with Hub(db) as hub:
            _, session = await authenticated(hub.url, token)
        async with Hub(db) as hub:
            assert hub.store.agent("s1").state == "disconnected"  # type: ignore[union-attr]
            client = await RawClient.open(hub.url)
            assert await client.authenticate(token, session=session) == Authenticated(session=session, resumed=True)

    run(main())


def test_a_client_without_the_subprotocol_is_refused(db: Path) -> None:
    async def test(hub: RecordingHub) -> None:
        for offered in ([], ["chat"]):
            with pytest.raises(InvalidStatus) as caught:
                await RawClient.open(hub.url, subprotocols=offered)
            assert caught.value.response.status_code == 400
            assert b"ksocket.v2 or ksocket.v1" in caught.value.response.body

    with_hub(db, test)


def test_a_client_that_never_authenticates_is_closed_with_4400(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        silent = await RawClient.open(hub.url)
        assert await silent.closed(timeout=3) == CLOSE_PROTOCOL_ERROR

        eager = await RawClient.open(hub.url)  # a first frame that is not authenticate
        await eager.heartbeat(1)
        error = await eager.expect(ErrorMessage)
        assert error.code == "bad-message" and "authenticate" in error.message
        assert await eager.closed() == CLOSE_PROTOCOL_ERROR

        late = await RawClient.open(hub.url)  # in time, for contrast
        assert isinstance(await late.authenticate(token), Authenticated)

    with_hub(db, test, auth_timeout=0.3)


def test_tokens_are_never_logged(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = add_slot(db)
    caplog.set_level(logging.DEBUG)

    async def test(hub: RecordingHub) -> None:
        client = await RawClient.open(hub.url)
        assert isinstance(await client.authenticate(token + "x"), Rejected)
        client, _ = await authenticated(hub.url, token)
        await client.send(Authenticate(token=token, name="ksocket", version="2.1.1", agent="agent-1"))
        assert "already authenticated" in (await client.expect(ErrorMessage)).message
        malformed = {"type": "authenticate", "protocol": 1, "token": 87654321, "name": "k", "version": "1"}
        await client.send_text(json.dumps({**malformed, "agent": "agent-1"}))
        assert (await client.expect(ErrorMessage)).message == 'field "token" of "authenticate" is malformed'

    with_hub(db, test)
    assert "rejected: invalid-token" in caplog.text
    assert "connected from 127.0.0.1" in caplog.text
    assert token not in caplog.text
    assert 'field "token" of "authenticate" is malformed' in caplog.text and "87654321" not in caplog.text
    frame_lines = [record.getMessage() for record in caplog.records if record.name == "ksocket.hub.websockets"]
    assert any("> TEXT" in line for line in frame_lines)  # websockets' frame log is on ...
    assert not any('"token"' in line for line in frame_lines)  # ... but not for frames with a token


# --------------------------------------------------------------------------- heartbeats and bad frames


def test_heartbeats_are_answered_unless_the_hub_is_told_not_to(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client, _ = await authenticated(hub.url, token)
        await client.heartbeat(1)
        assert await client.expect(HeartbeatAck) == HeartbeatAck(n=1)
        await until(lambda: hub.store.agent("s1").last_heartbeat is not None)  # type: ignore[union-attr]

        hub.answer_heartbeats = False
        await client.heartbeat(2)
        await client.nothing()
        assert Heartbeat(n=2) in hub.received("s1")

        hub.answer_heartbeats = True
        await client.heartbeat(3)
        assert await client.expect(HeartbeatAck) == HeartbeatAck(n=3)

    with_hub(db, test)


def test_a_silent_agent_is_dropped_with_4408(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client, _ = await authenticated(hub.url, token)
        for n in range(4):  # heard from: kept past interval + timeout
            await asyncio.sleep(0.15)
            await client.heartbeat(n)
            await client.expect(HeartbeatAck)
        assert hub.connected("s1")
        assert await client.closed(timeout=3) == CLOSE_HEARTBEAT_LOST
        assert not hub.connected("s1")

    with_hub(db, test, heartbeat_interval=0.2, heartbeat_timeout=0.2)


def test_bad_frames_get_an_error_and_the_link_stays(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client, _ = await authenticated(hub.url, token)
        await client.send_text("this is not JSON")
        error = await client.expect(ErrorMessage)
        assert error.code == "bad-message"
        await client.send_text('{"type": "teleport"}')
        error = await client.expect(ErrorMessage)
        assert error.code == "unknown-type"
        await client.send_text('{"type": "result", "id": "x", "seq": -1, "ok": true, "data": {}}')
        error = await client.expect(ErrorMessage)
        assert error.code == "bad-message" and "seq" in error.message
        await client.ws.send(b'{"type": "heartbeat", "n": 1}')  # a binary frame
        assert (await client.expect(ErrorMessage)).code == "bad-message"
        await client.send(Ack(seq=1))  # well-formed, but the hub's to send
        assert (await client.expect(ErrorMessage)).code == "bad-message"

        await client.heartbeat(5)
        assert await client.expect(HeartbeatAck) == HeartbeatAck(n=5)
        assert [bad.error.code for bad in hub.errors("s1")] == [
            "bad-message",
            "unknown-type",
            "bad-message",
            "bad-message",
            "bad-message",
        ]
        assert hub.errors("s1")[0].frame == "this is not JSON"

    with_hub(db, test)


# --------------------------------------------------------------------------- results and operations


def test_results_are_stored_once_and_acked(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        op_id = await hub.submit("s1", "system.info")
        client, _ = await authenticated(hub.url, token, agent="a-1")
        assert await client.expect(Operation) == Operation(id=op_id, name="system.info", params={})

        result = Result.success(id=op_id, seq=1, data={"hostname": "h"})
        await client.send(result)
        assert await client.expect(Ack) == Ack(seq=1)
        await client.send(result)  # sent again, e.g. after a resume: already received
        assert await client.expect(Ack) == Ack(seq=1)
        assert hub.results("s1") == [result]
        assert await hub.wait_result(op_id) == result
        assert hub.operation(op_id).state == "done"

        await client.send(Result.failure(id=op_id, seq=2, code="internal", message="boom"))
        assert await client.expect(Ack) == Ack(seq=2)  # a second result of the operation: acked, not stored
        assert hub.results("s1") == [result]

        # a new installation on the slot counts its seq afresh
        await client.close()
        await hub.wait_disconnected("s1")
        other = await hub.submit("s1", "system.info")
        client, _ = await authenticated(hub.url, token, agent="a-2")
        await client.expect(Operation)
        await client.send(Result.success(id=other, seq=1, data={}))
        assert await client.expect(Ack) == Ack(seq=1)
        assert [(r.agent, r.seq) for r in hub.store.results("s1")] == [("a-1", 1), ("a-2", 1)]

        hub.ack_results = False
        last = await hub.submit("s1", "system.info")
        await client.expect(Operation)
        await client.send(Result.success(id=last, seq=2, data={}))
        await client.nothing()
        assert len(hub.results("s1")) == 3

    with_hub(db, test)


def test_records_are_stored_as_they_arrive_once_each_and_acked(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        op_id = await hub.submit("s1", "networks.discover")
        client, _ = await authenticated(hub.url, token, agent="a-1")
        assert client.ws.subprotocol == "ksocket.v2"
        await client.expect(Operation)
        hosts = [Record(id=op_id, seq=seq, record={"kind": "host", "address": f"198.18.0.{seq}"}) for seq in (1, 2)]
        network = Record(id=op_id, seq=3, record={"kind": "network", "network": "198.18.0.0/24", "note": "ü"})
        for record in [*hosts, network]:
            await client.send(record)
            assert await client.expect(Ack) == Ack(seq=record.seq)
        assert hub.records(op_id) == [*hosts, network]  # stored before the result, as they arrive
        assert hub.operation(op_id).state == "sent"

        await client.send(hosts[1])  # re-sent after a resume: acked again, stored once
        assert await client.expect(Ack) == Ack(seq=2)
        await client.send(Result.success(id=op_id, seq=4, data={"hosts": 2}))
        assert await client.expect(Ack) == Ack(seq=4)
        assert hub.records(op_id) == [*hosts, network]
        assert hub.operation(op_id).state == "done"

        assert cli.main(["hub", "records", op_id, "--json", "--db", str(db)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [json.loads(line) for line in lines] == [{"seq": r.seq, "record": r.record} for r in [*hosts, network]]
        assert cli.main(["hub", "records", op_id, "--db", str(db)]) == 0
        table = capsys.readouterr().out
        assert table.splitlines()[0].split() == ["SEQ", "KIND", "RECEIVED", "RECORD"]
        assert [line.split()[:2] for line in table.splitlines()[1:]] == [["1", "host"], ["2", "host"], ["3", "network"]]
        assert "198.18.0.0/24" in table
        assert cli.main(["hub", "records", "no-such-id", "--db", str(db)]) != 0
        assert "no operation with id 'no-such-id'" in capsys.readouterr().err

    with_hub(db, test)


def test_records_sent_back_to_back_are_stored_before_the_result_that_follows_and_acked_cumulatively(
    db: Path,
) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        op_id = await hub.submit("s1", "networks.discover")
        client, _ = await authenticated(hub.url, token)
        await client.expect(Operation)
        records = [Record(id=op_id, seq=seq, record={"kind": "host", "n": seq}) for seq in range(1, 1201)]
        for record in records:  # more than one batch, without waiting for an ack
            await client.send(record)
        await client.send(Result.success(id=op_id, seq=1201, data={"hosts": 1200}))
        acks = []
        while not acks or acks[-1] < 1201:
            acks.append((await client.expect(Ack)).seq)
        assert acks == sorted(set(acks)), "acks only grow"
        assert hub.records(op_id) == records and hub.operation(op_id).state == "done"

    with_hub(db, test)


async def hold(hub: Hub) -> threading.Event:
    """Holds the hub's database thread with a call until the event returned is set (calls made meanwhile wait)."""
    busy, release = threading.Event(), threading.Event()
    hub.db.post(lambda store: (busy.set(), release.wait()))
    await asyncio.to_thread(busy.wait)
    return release


def test_a_results_ack_follows_its_commit_and_frames_back_to_back_share_one(db: Path) -> None:
    """The hub takes an agent's frames while their writes wait for the database, so that the writes of frames
    sent back to back are committed together; each ack still follows the commit of what it acks."""
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        ops = [await hub.submit("s1", "system.info") for _ in range(3)]
        client, _ = await authenticated(hub.url, token)
        for _ in ops:
            await client.expect(Operation)
        statements: list[str] = []
        await hub.db.call(lambda store: store._db.set_trace_callback(statements.append))
        release = await hold(hub)
        for seq, op_id in enumerate(ops, 1):
            await client.send(Accepted(id=op_id))
            await client.send(Result.success(id=op_id, seq=seq, data={"n": seq}))
        await until(lambda: hub._link("s1").unanswered == 2 * len(ops))  # all taken, none written
        await client.nothing()  # no ack before the commit
        assert hub.results("s1") == [] and hub.received("s1")[1:] == []
        release.set()
        for seq in range(1, len(ops) + 1):
            assert await client.expect(Ack) == Ack(seq=seq)
            with Store(db) as other:  # on disk, as another process sees it
                assert [result.seq for result in other.results("s1")][:seq] == list(range(1, seq + 1))
        inserts = [n for n, statement in enumerate(statements) if statement.startswith("INSERT INTO results")]
        commits = [n for n, statement in enumerate(statements) if statement == "COMMIT"]
        assert len(inserts) == len(ops) and not any(inserts[0] < n < inserts[-1] for n in commits)  # one commit
        assert [type(m) for m in hub.received("s1")[1:]] == [Accepted, Result] * len(ops)  # in order, each written
        assert {hub.operation(op_id).state for op_id in ops} == {"done"}

    with_hub(db, test)


def test_an_unknown_operations_accepted_gets_its_error_in_turn(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client, _ = await authenticated(hub.url, token)
        release = await hold(hub)
        await client.send(Accepted(id="invented"))
        await client.send(Heartbeat(n=7))
        await until(lambda: hub._link("s1").unanswered == 2)
        release.set()
        error = await client.expect(ErrorMessage)
        assert error.code == "unknown-operation" and "accepted" in error.message and "invented" in error.message
        assert await client.expect(HeartbeatAck) == HeartbeatAck(n=7)  # answers in the order of the frames

    with_hub(db, test)


def test_a_write_that_fails_unexpectedly_ends_its_connection(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = add_slot(db)

    def broken(store: Store, *args: Any, **kwargs: Any) -> bool:
        raise OSError("disk I/O error")

    async def test(hub: RecordingHub) -> None:
        op_id = await hub.submit("s1", "system.info")
        client, _ = await authenticated(hub.url, token)
        await client.expect(Operation)
        monkeypatch.setattr(Store, "add_result", broken)
        await client.send(Result.success(id=op_id, seq=1, data={}))
        assert await client.closed() is None  # not acked: the connection ends, as on any error of the hub's
        await hub.wait_disconnected("s1")
        monkeypatch.undo()
        client, _ = await authenticated(hub.url, token)  # the hub serves on
        assert (await client.expect(Operation)).id == op_id

    with_hub(db, test)


def test_a_hub_whose_database_is_busy_takes_a_bounded_count_of_frames(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        op_id = await hub.submit("s1", "system.info")
        client, _ = await authenticated(hub.url, token)
        await client.expect(Operation)
        release = await hold(hub)
        count = UNANSWERED_FRAMES + 50
        for done in range(count):
            await client.send(Progress(id=op_id, done=done, total=count))
        link = hub._link("s1")
        await until(lambda: link.unanswered == UNANSWERED_FRAMES)
        await asyncio.sleep(QUIET)
        assert link.unanswered == UNANSWERED_FRAMES  # the rest wait in the kernel and the agent
        release.set()
        await client.heartbeat(1)
        await client.expect(HeartbeatAck)
        assert hub.operation(op_id).done == count - 1

    with_hub(db, test)


def test_a_version_1_link_is_selected_for_a_v1_agent_and_carries_no_records(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        op_id = await hub.submit("s1", "system.info")
        client = await RawClient.open(hub.url, subprotocols=["ksocket.v1"])
        assert client.ws.subprotocol == "ksocket.v1"
        assert isinstance(await client.authenticate(token, protocol=1), Authenticated)
        await client.expect(Operation)
        await client.send(Record(id=op_id, seq=1, record={"kind": "host"}))
        error = await client.expect(ErrorMessage)
        assert error.code == "bad-message" and "protocol version 2" in error.message
        assert hub.records(op_id) == []
        await client.send(Result.success(id=op_id, seq=1, data={}))  # seq 1 was not received: a result takes it
        assert await client.expect(Ack) == Ack(seq=1)

        both = await RawClient.open(hub.url, subprotocols=["ksocket.v1", "ksocket.v2"])
        assert both.ws.subprotocol == "ksocket.v2"  # the newest offered, whatever the order

    with_hub(db, test)


def test_accepted_refused_progress_and_cancel(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client, _ = await authenticated(hub.url, token)
        first = await hub.submit("s1", "networks.scan", {"targets": ["10.0.0.0/24"]}, id="op-1")
        second = await hub.submit("s1", "hosts.inspect", {"address": "10.0.0.1"})
        assert await client.expect(Operation) == Operation(
            id="op-1", name="networks.scan", params={"targets": ["10.0.0.0/24"]}
        )
        assert (await client.expect(Operation)).id == second

        await client.send(Accepted(id=first))
        await client.send(Progress(id=first, done=12, total=256))
        await client.send(Refused(id=second, reason="quota", message="too many"))
        await hub.wait_received("s1", Refused)
        record = hub.operation(first)
        assert (record.state, record.done, record.total) == ("accepted", 12, 256)
        record = hub.operation(second)
        assert (record.state, record.reason, record.message) == ("refused", "quota", "too many")

        assert cli.main(["hub", "cancel", first, "--db", str(db)]) == 0  # as from another process
        assert await client.expect(Cancel) == Cancel(id=first)
        assert hub.operation(first).cancel_sent is not None
        await client.send(Result.failure(id=first, seq=1, code="cancelled", message="cancelled by the hub"))
        await client.expect(Ack)
        assert hub.operation(first).state == "cancelled"

        await client.close()
        await hub.wait_disconnected("s1")
        queued = await hub.submit("s1", "system.info")
        assert await hub.cancel(queued) == "cancelled"  # never sent, so never will be
        assert capsys.readouterr().out == "accepted\n"  # what `hub cancel` printed: the state it left
        client, _ = await authenticated(hub.url, token)
        await client.nothing()  # done, refused and cancelled operations are not sent again

    with_hub(db, test)


def test_operations_queued_by_another_process_are_sent_and_sent_again_after_a_reconnect(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        client, session = await authenticated(hub.url, token)
        code, out, err = await ksocket(
            "hub", "run", "s1", "system.info", "--params", '{"verbose": true}', "--db", str(db)
        )
        assert code == 0, err
        op_id = out.strip()
        operation = await client.expect(Operation)
        assert operation == Operation(id=op_id, name="system.info", params={"verbose": True})
        assert hub.operation(op_id).state == "sent"

        await client.close()  # gone without answering
        await hub.wait_disconnected("s1")
        client = await RawClient.open(hub.url)
        assert await client.authenticate(token, session=session) == Authenticated(session=session, resumed=True)
        assert await client.expect(Operation) == operation

        await client.send(Accepted(id=op_id))
        await hub.wait_received("s1", Accepted)
        await hub.drop("s1")  # accepted is not a result: it is sent again
        client = await RawClient.open(hub.url)
        await client.authenticate(token, session=session)
        assert await client.expect(Operation) == operation

        await client.send(Result.success(id=op_id, seq=1, data={}))
        await client.expect(Ack)
        await client.close()
        await hub.wait_disconnected("s1")
        client = await RawClient.open(hub.url)
        await client.authenticate(token, session=session)
        await client.nothing()

    with_hub(db, test)


class CountedPolls(RecordingHub):
    """A hub whose poller looks once an hour unless woken, counting its looks."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(db_path, poll_interval=3600.0)
        self.polls = 0

    async def _poll_once(self) -> None:
        self.polls += 1
        await super()._poll_once()


def test_an_operation_submitted_to_a_connected_slot_is_sent_without_the_poller(db: Path) -> None:
    token = add_slot(db)

    async def main() -> None:
        async with CountedPolls(db) as hub:
            client, _ = await authenticated(hub.url, token)
            polls = hub.polls
            op_id = await hub.submit("s1", "system.info", {"n": 1})
            assert await client.expect(Operation) == Operation(id=op_id, name="system.info", params={"n": 1})
            assert hub.operation(op_id).state == "sent" and hub.polls == polls and not hub._wake.is_set()

            ids = await asyncio.gather(*(hub.submit("s1", "system.info", {"n": n}) for n in range(20)))
            assert [(await client.expect(Operation)).id for _ in ids] == ids  # in the order submitted
            assert hub.polls == polls

    run(main())


def test_an_operation_submitted_behind_pending_ones_is_sent_after_them(db: Path) -> None:
    token = add_slot(db)

    async def main() -> None:
        async with CountedPolls(db) as hub:
            client, _ = await authenticated(hub.url, token)
            polls = hub.polls
            queued = hub.store.add_operation("s1", "system.info", None, "queued")  # as `hub run` does, unheard
            assert (await hub.db.call(Store.issue_operation, "s1", "x", None, "claimed")).state == "pending"
            assert await hub.submit("s1", "system.info", None, "last") == "last"
            assert [(await client.expect(Operation)).id for _ in range(3)] == [queued, "claimed", "last"]
            assert hub.polls > polls  # woken: the poller sent all three, in order
            assert {hub.operation(op).state for op in ("queued", "claimed", "last")} == {"sent"}

    run(main())


def test_an_operation_claimed_as_its_connection_ends_is_in_the_next_ones_backlog(db: Path) -> None:
    token = add_slot(db)

    async def main() -> None:
        async with CountedPolls(db) as hub:
            _, session = await authenticated(hub.url, token)
            submitted = asyncio.ensure_future(hub.submit("s1", "system.info", None, "op"))
            await asyncio.sleep(0)  # claimed for this connection, in the database's thread
            await hub.drop("s1")
            assert await submitted == "op"
            client, _ = await authenticated(hub.url, token, session=session)
            assert await client.expect(Operation) == Operation(id="op", name="system.info", params={})
            await client.nothing()  # once

    run(main())


class GatedSends(RecordingHub):
    """A hub whose next operation frame waits for ``gate`` before it is written (as a full socket's would)."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(db_path)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def _send(self, link: Any, message: Message) -> bool:
        if isinstance(message, Operation) and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await super()._send(link, message)


def test_a_submit_cancelled_while_it_sends_leaves_its_frames_to_another_sender(db: Path) -> None:
    token = add_slot(db)

    async def main() -> None:
        async with GatedSends(db) as hub:
            client, _ = await authenticated(hub.url, token)
            first = asyncio.ensure_future(hub.submit("s1", "system.info", None, "first"))
            await hub.waiting.wait()  # its submit is sending it
            assert await hub.submit("s1", "system.info", None, "second") == "second"  # queued behind it
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            hub.gate.set()
            assert [(await client.expect(Operation)).id for _ in range(2)] == ["first", "second"]
            await client.nothing()  # each once

    run(main())


def test_store_issue_operation_claims_unless_the_slot_has_pending_operations(db: Path) -> None:
    with Store(db) as store:
        store.add_slot("s1")
        store.add_slot("s2")
        first = store.issue_operation("s1", "system.info", {"a": 1})
        assert (first.state, first.params) == ("sent", {"a": 1}) and store.operation(first.id) == first
        store.add_operation("s2", "system.info", None, "waiting")
        assert store.issue_operation("s2", "system.info").state == "pending"
        assert [op.id for op in store.claim_pending(["s2"])] == ["waiting", store.operations("s2")[1].id]
        assert store.issue_operation("s2", "system.info").state == "sent"
        store.revoke("s1")
        with pytest.raises(HubError, match="revoked"):
            store.issue_operation("s1", "system.info")
        with pytest.raises(HubError, match="already exists"):
            store.issue_operation("s2", "system.info", None, first.id)


def test_hub_run_wait_prints_the_result(db: Path) -> None:
    token = add_slot(db)

    async def answer(client: RawClient, seq: int, ok: bool) -> None:
        operation = await client.expect(Operation, timeout=20)
        await client.send(Accepted(id=operation.id))
        if ok:
            await client.send(Result.success(id=operation.id, seq=seq, data={"hostname": "h1"}))
        else:
            await client.send(Result.failure(id=operation.id, seq=seq, code="timeout", message="too slow"))
        await client.expect(Ack)

    async def test(hub: RecordingHub) -> None:
        client, _ = await authenticated(hub.url, token)
        base = ("hub", "run", "s1", "system.info", "--wait", "--timeout", "20", "--db", str(db))
        # standard output is the JSON alone, for jq; the operation's id goes to standard error
        (code, out, err), _ = await asyncio.gather(ksocket(*base), answer(client, 1, True))
        assert code == 0, err
        op_id = err.strip()
        assert json.loads(out) == {"id": op_id, "seq": 1, "ok": True, "data": {"hostname": "h1"}}

        (code, out, err), _ = await asyncio.gather(ksocket(*base), answer(client, 2, False))
        assert code == 1, err
        op_id = err.strip()
        assert json.loads(out) == {
            "id": op_id,
            "seq": 2,
            "ok": False,
            "error": {"code": "timeout", "message": "too slow"},
        }

    with_hub(db, test)


def test_hub_run_wait_gives_up_after_its_timeout(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_slot(db)
    assert cli.main(["hub", "run", "s1", "system.info", "--wait", "--timeout", "0.3", "--db", str(db)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    op_id = captured.err.splitlines()[0]
    assert captured.err == f"{op_id}\nksocket: error: no result for operation {op_id} within 0.3 s (it is pending)\n"
    with Store(db) as store:
        assert store.operation(op_id).state == "pending"  # type: ignore[union-attr]

    with pytest.raises(SystemExit) as caught:
        cli.main(["hub", "run", "s1", "x", "--params", "[1]", "--db", str(db)])
    assert caught.value.code == 2
    assert "--params must be a JSON object" in capsys.readouterr().err


def test_hub_agents_lists_the_slots(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = add_slot(db, "s1")
    add_slot(db, "s2")

    async def test(hub: RecordingHub) -> None:
        client, session = await authenticated(hub.url, token, agent="agent-uuid-1")
        await client.heartbeat(1)
        await client.expect(HeartbeatAck)
        assert cli.main(["hub", "agents", "--db", str(db)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["SLOT", "STATE", "AGENT", "VERSION", "LAST", "HEARTBEAT", "SESSION"]
        fields = lines[1].split()
        assert fields[:4] == ["s1", "connected", "agent-uuid-1", "2.1.1"]
        assert fields[-1] == session
        assert lines[2].split() == ["s2", "never", "-", "-", "-", "-"]

    with_hub(db, test)


# --------------------------------------------------------------------------- observers


class CallLog(HubObserver):
    """Every observer call, in order; for a result, whether the database had it already."""

    def __init__(self) -> None:
        self.hub: Hub | None = None
        self.calls: list[tuple[object, ...]] = []

    def on_connect(self, slot: str, session: str) -> None:
        self.calls.append(("connect", slot))

    def on_message(self, slot: str, message: Message) -> None:
        stored = isinstance(message, Result) and self.hub is not None and bool(self.hub.results(slot))
        self.calls.append(("message", slot, message.TYPE, stored))

    def on_bad_frame(self, slot: str, frame: str | bytes, error: ProtocolError) -> None:
        self.calls.append(("bad frame", slot, frame, error.code))

    def on_disconnect(self, slot: str, close_code: int | None) -> None:
        self.calls.append(("disconnect", slot, close_code))


def test_an_observer_hears_each_connection_in_order_and_each_result_once_stored(db: Path) -> None:
    token = add_slot(db)
    observer = CallLog()

    async def main() -> None:
        async with Hub(db, observer=observer) as hub:
            observer.hub = hub
            client, _ = await authenticated(hub.url, token)
            await hub.submit("s1", "system.info", id="op")
            await client.expect(Operation)
            await client.send_text("{}")
            await client.expect(ErrorMessage)
            await client.send(Result.success(id="op", seq=1, data={}))
            await client.expect(Ack)
            await client.close()
            await until(lambda: observer.calls[-1][0] == "disconnect")

    run(main())
    assert observer.calls == [
        ("message", "s1", "authenticate", False),
        ("connect", "s1"),
        ("bad frame", "s1", "{}", "bad-message"),
        ("message", "s1", "result", True),
        ("disconnect", "s1", 1000),
    ]


# --------------------------------------------------------------------------- what a connection costs

MiB = 1024 * 1024


def traced() -> int:
    """The Python memory allocated since tracemalloc started and still held, after a collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_an_agents_large_results_leave_nothing_behind_in_the_hub(db: Path) -> None:
    """The hub keeps no history of what agents sent: ten results of 2 MiB are in the database, not in memory."""
    token = add_slot(db)
    frames = [serialize(Result.success(id=f"op-{seq}", seq=seq, data={"blob": "x" * (2 * MiB)})) for seq in range(10)]

    async def main() -> None:
        async with Hub(db) as hub:
            for seq in range(10):
                await hub.submit("s1", "system.info", id=f"op-{seq}")
            client, _ = await authenticated(hub.url, token)
            for _ in range(10):
                await client.expect(Operation)
            tracemalloc.start()
            try:
                for seq, frame in enumerate(frames):
                    await client.send_text(frame)
                    assert await client.expect(Ack) == Ack(seq=seq)
                await client.heartbeat(1)  # websockets' parser holds the last frame read until the next one
                await client.expect(HeartbeatAck)
                retained = traced()
            finally:
                tracemalloc.stop()
            assert retained < MiB, f"the hub kept {retained / MiB:.1f} MiB of 20 MiB of results"
            assert [result.seq for result in hub.results("s1")] == list(range(10))

    run(main())


class StalledHub(Hub):
    """A hub whose first ack waits until ``go`` is set: a hub busy with one result while its agent sends more."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(db_path)
        self.stalled: Any = None  # the connection the hub is stuck on, once it is
        self.go = asyncio.Event()

    async def _send(self, link: Any, message: Any) -> bool:
        if isinstance(message, Ack) and not self.go.is_set():
            self.stalled = link.ws
            await self.go.wait()
        return await super()._send(link, message)


def test_a_busy_hub_reads_no_more_than_a_frame_ahead_whatever_its_agent_sends(db: Path) -> None:
    """An agent sends 24 results of 1 MiB without waiting for acks while the hub is busy with the first: the
    hub stops reading after the next one (the rest wait in the kernel and the agent), so what a
    connection costs is bounded in bytes, not in a count of frames of up to 16 MiB each."""
    token = add_slot(db)
    frame = serialize(Result.success(id="op", seq=1, data={"blob": "x" * MiB}))

    async def main() -> None:
        async with StalledHub(db) as hub:
            await hub.submit("s1", "system.info", id="op")
            client, _ = await authenticated(hub.url, token)
            await client.expect(Operation)
            tracemalloc.start()
            try:

                async def flood() -> None:
                    for _ in range(24):
                        await client.send_text(frame)

                sender = asyncio.create_task(flood())
                await until(lambda: hub.stalled is not None)
                # the hub has read all it will: it paused reading, or read every frame sent
                await until(lambda: sender.done() or not hub.stalled.transport.is_reading())
                held = traced()
            finally:
                tracemalloc.stop()
            hub.go.set()
            await sender
            for _ in range(24):
                assert await client.expect(Ack) == Ack(seq=1)
            assert held < 6 * MiB, f"{held / MiB:.1f} MiB held for one connection"

    run(main())


# --------------------------------------------------------------------------- test knobs, TLS, serve


def test_send_raw_and_the_knobs_on_an_idle_slot(db: Path) -> None:
    token = add_slot(db)

    async def test(hub: RecordingHub) -> None:
        with pytest.raises(NotConnected):
            await hub.send_raw("s1", "{}")
        with pytest.raises(NotConnected):
            await hub.drop("s1")
        with pytest.raises(TimeoutError):
            await hub.wait_connected("s1", timeout=0.1)
        client, _ = await authenticated(hub.url, token)
        await hub.send_raw("s1", '{"type": "ack"}')
        assert await client.ws.recv() == '{"type": "ack"}'

    with_hub(db, test)


def test_hub_with_slot_gives_a_running_hub_and_a_token(db: Path) -> None:
    async def main() -> None:
        async with hub_with_slot(db, "lab", heartbeat_interval=1.0) as (hub, token):
            assert hub.heartbeat_interval == 1.0
            _, session = await authenticated(hub.url, token)
            assert await hub.wait_connected("lab") == session

    run(main())


def test_the_hub_serves_wss(db: Path, tmp_path: Path) -> None:
    token = add_slot(db)
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def test(hub: RecordingHub) -> None:
        assert hub.url.startswith("wss://127.0.0.1:")
        client = await RawClient.open(hub.url, ssl_context=client_context)
        assert isinstance(await client.authenticate(token), Authenticated)

    with_hub(db, test, ssl_context=server_context)


def _http_get(ws_url: str, path: str) -> tuple[int, str]:
    host, port = re.match(r"ws://([^:/]+):(\d+)/", ws_url).groups()  # type: ignore[union-attr]
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_hub_serve_runs_until_sigterm_with_the_operators_pages_on_the_agents_address(db: Path) -> None:
    token = add_slot(db)
    with Operators(db, hasher=FAST_HASHER) as operators:
        operators.add("alice", PASSWORD)

    def start_discovery(url: str) -> None:
        web = Client(url.replace("ws://", "http://").removesuffix("/api/ksocket/connect"))
        assert web.log_in().status == 303
        assert web.post("/discover", {"slot": "s1", "seeds": "198.18.4.0/24", "csrf": web.csrf()}).status == 303

    async def main() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ksocket.cli",
            "hub",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(db),
            "--poll-interval",
            "3600",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "KSOCKET_HOME": str(db.parent)},
        )
        assert process.stdout is not None
        try:
            url = None
            while url is None:
                line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
                assert line, "hub serve ended before it listened"
                match = re.search(r"listening on (ws://\S+)", line)
                url = match.group(1) if match else None
            client = await RawClient.open(url)
            assert isinstance(await client.authenticate(token), Authenticated)
            status, page = await asyncio.to_thread(_http_get, url, "/")
            assert status == 200 and 'type="password"' in page  # the operators' log-in, beside a connected agent
            await asyncio.to_thread(start_discovery, url)
            operation = await client.expect(Operation)  # at once, not at the poller's next look in an hour
            assert (operation.name, operation.params) == ("networks.discover", {"seeds": ["198.18.4.0/24"]})
            process.send_signal(signal.SIGTERM)
            assert await client.closed() == 1001  # going away
            assert await asyncio.wait_for(process.wait(), 20) == 0
            rest = (await process.stdout.read()).decode()
            assert "hub stopped" in rest
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        with Store(db) as store:
            assert store.agent("s1").state == "disconnected"  # type: ignore[union-attr]

    run(main())
