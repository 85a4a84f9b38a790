"""The link's per-connection rules (heartbeat, re-send, result order, inbound queue) with a fake ``now``, no socket."""

from __future__ import annotations

import pytest

from ksocket import protocol
from ksocket.config import Settings
from ksocket.protocol import (
    Accepted,
    Ack,
    Authenticated,
    Cancel,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    Operation,
    Progress,
    ProtocolError,
    Record,
    Refused,
    Result,
    UnknownType,
)
from statemachine.session import ADMISSION_BATCH, INBOUND_BACKLOG, Lost, Session

# heartbeat every 10 s, 5 s to answer it; a result is sent again after 20 s, twice at most
SETTINGS = Settings(heartbeat_interval=10.0, heartbeat_timeout=5.0, request_timeout=20.0, request_retries=2)
QUIET = Settings(heartbeat_interval=1000.0, heartbeat_timeout=1000.0, request_timeout=20.0, request_retries=2)


def result(seq: int) -> Result:
    return Result.success(id=f"op-{seq}", seq=seq, data={})


def test_the_first_heartbeat_is_due_one_interval_after_connecting() -> None:
    session = Session(SETTINGS, now=100.0)
    assert session.next_deadline() == 110.0
    assert session.poll(109.9) == []
    assert session.poll(110.0) == [Heartbeat(n=1)]
    assert session.poll(111.0) == []  # one heartbeat at a time


def test_an_acked_heartbeat_schedules_the_next_one_an_interval_after_its_ack() -> None:
    session = Session(SETTINGS, now=0.0)
    assert session.poll(10.0) == [Heartbeat(n=1)]
    assert session.next_deadline() == 15.0  # its ack is due within heartbeatTimeout
    assert session.receive(HeartbeatAck(n=1), 12.0) == []
    assert session.next_deadline() == 22.0
    assert session.poll(21.0) == []
    assert session.poll(22.0) == [Heartbeat(n=2)]


def test_a_heartbeat_without_an_ack_loses_the_link_with_4408() -> None:
    session = Session(SETTINGS, now=0.0)
    session.poll(10.0)
    assert session.poll(14.9) == []
    assert session.poll(15.0) == Lost("heartbeat lost: no heartbeat-ack 1 within 5s", protocol.CLOSE_HEARTBEAT_LOST)


def test_an_ack_for_another_heartbeat_does_not_count() -> None:
    session = Session(SETTINGS, now=0.0)
    session.poll(10.0)
    session.receive(HeartbeatAck(n=7), 10.0)  # heard (at the time the heartbeat went): no later deadline
    assert isinstance(session.poll(15.0), Lost)


@pytest.mark.parametrize(
    "frame",
    [Operation(id="op-1", name="system.info"), Ack(seq=0), ErrorMessage(code="x", message="y"), None],
    ids=["operation", "ack", "error", "bad-frame"],
)
def test_any_frame_heard_keeps_the_hub_alive_while_its_ack_is_unread(frame: protocol.Message | None) -> None:
    session = Session(SETTINGS, now=0.0)
    session.poll(10.0)
    if frame is None:
        session.receive_bad(ProtocolError("not json"), 13.0)
    else:
        session.receive(frame, 13.0)
    assert session.next_deadline() == 18.0
    assert session.poll(17.9) == []
    assert isinstance(session.poll(18.0), Lost)


def test_an_unacked_result_is_sent_again_after_request_timeout_then_the_link_is_lost() -> None:
    session = Session(QUIET, now=0.0)
    assert session.produced(result(1), 1.0) == [result(1)]
    assert session.next_deadline() == 21.0
    assert session.poll(20.9) == []
    assert session.poll(21.0) == [result(1)]  # retry 1
    assert session.next_deadline() == 41.0
    assert session.poll(41.0) == [result(1)]  # retry 2 = requestRetries
    assert session.poll(61.0) == Lost("result 1 not acked after 2 retries", protocol.CLOSE_HEARTBEAT_LOST)


def test_an_ack_forgets_every_result_up_to_its_seq() -> None:
    session = Session(QUIET, now=0.0)
    session.send_unacked([result(1), result(2), result(3)], 0.0)
    assert session.receive(Ack(seq=2), 5.0) == []
    assert session.poll(20.0) == [result(3)]
    session.receive(Ack(seq=3), 21.0)
    assert session.next_deadline() == 1000.0  # only the heartbeat is left
    assert session.poll(500.0) == []


def test_results_due_together_are_sent_again_in_seq_order() -> None:
    session = Session(QUIET, now=0.0)
    session.send_unacked([result(1), result(2)], 0.0)
    session.admitted(result(1), 5.0)  # a duplicate operation: seq 1 goes again and now waits from 5 s
    assert session.poll(20.0) == [result(2)]
    assert session.poll(40.0) == [result(1), result(2)]


def test_unacked_results_go_first_in_seq_order_and_the_stream_does_not_repeat_them() -> None:
    session = Session(QUIET, now=0.0)
    assert session.send_unacked([result(2), result(1)], 0.0) == [result(1), result(2)]
    assert session.produced(result(2), 1.0) == []
    assert session.produced(result(3), 1.0) == [result(3)]
    progress = Progress(id="op-4", done=1, total=2)
    assert session.produced(progress, 1.0) == [progress]


def test_a_stored_result_above_the_last_seq_sent_waits_for_the_in_order_stream() -> None:
    session = Session(QUIET, now=0.0)
    session.produced(result(1), 0.0)
    assert session.admitted(result(2), 1.0) == []  # seq 1 is unacked: sending 2 would let the hub ack past it
    assert session.admitted(result(1), 1.0) == [result(1)]  # sent already: sent again
    assert session.produced(result(2), 2.0) == [result(2)]


def record(seq: int, op: str = "op-9") -> Record:
    return Record(id=op, seq=seq, record={"kind": "host", "address": f"198.18.0.{seq}"})


def test_records_go_in_seq_order_with_results_and_are_sent_again_until_acked() -> None:
    session = Session(QUIET, now=0.0)
    assert session.send_unacked([result(3), record(2), record(1)], 0.0) == [record(1), record(2), result(3)]
    assert session.produced(record(2), 1.0) == []  # it went out with the unacked
    assert session.produced(record(4), 1.0) == [record(4)]
    assert session.admitted(result(5), 1.0) == []  # above the last seq sent: waits for the stream
    assert session.receive(Ack(seq=2), 5.0) == []  # forgets records 1 and 2
    assert session.poll(20.0) == [result(3)]
    assert session.poll(21.0) == [record(4)]
    assert session.poll(40.0) == [result(3)]
    session.receive(Ack(seq=4), 41.0)
    assert session.poll(61.0) == []
    assert session.next_deadline() == 1000.0


def test_an_unacked_record_loses_the_link_after_request_retries() -> None:
    session = Session(QUIET, now=0.0)
    session.produced(record(1), 0.0)
    assert session.poll(20.0) == [record(1)]
    assert session.poll(40.0) == [record(1)]
    assert session.poll(60.0) == Lost("record 1 not acked after 2 retries", protocol.CLOSE_HEARTBEAT_LOST)


def test_a_version_1_link_passes_records_over_and_sends_the_results() -> None:
    session = Session(QUIET, now=0.0, version=1)
    assert session.send_unacked([record(1), result(2), record(3)], 0.0) == [result(2)]
    assert session.produced(record(4), 1.0) == []
    assert session.admitted(result(5), 1.0) == []  # the in-order stream sends it
    assert session.produced(result(5), 1.0) == [result(5)]
    assert session.admitted(result(5), 2.0) == [result(5)]  # sent already: sent again
    assert session.poll(20.0) == [result(2)]  # never a record, even when re-sending
    session.receive(Ack(seq=5), 21.0)
    assert session.next_deadline() == 1000.0


def test_accepted_and_refused_are_sent_as_they_are() -> None:
    session = Session(QUIET, now=0.0)
    refused = Refused(id="op-2", reason="quota", message="full")
    assert session.admitted(Accepted(id="op-1"), 0.0) == [Accepted(id="op-1")]
    assert session.admitted(refused, 0.0) == [refused]


def test_operations_and_cancels_reach_the_runner_in_arrival_order() -> None:
    session = Session(QUIET, now=0.0)
    arrived: list[Operation | Cancel] = [
        Operation(id="op-1", name="system.info"),
        Cancel(id="op-1"),
        Operation(id="op-2", name="system.info"),
    ]
    for message in arrived:
        assert session.receive(message, 1.0) == []
    taken: list[Operation | Cancel] = []
    while session.has_inbound:
        taken.append(session.take_inbound())
    assert taken == arrived


def test_a_full_backlog_stops_reading_until_the_runner_takes_one() -> None:
    session = Session(QUIET, now=0.0, backlog=2)
    session.receive(Operation(id="op-1", name="system.info"), 1.0)
    assert session.has_room
    session.receive(Cancel(id="op-1"), 1.0)
    assert not session.has_room
    assert session.take_inbound() == Operation(id="op-1", name="system.info")
    assert session.has_room


def test_bad_frames_and_misdirected_messages_are_answered() -> None:
    session = Session(QUIET, now=0.0)
    assert session.receive_bad(UnknownType("no type 'surprise'"), 0.0) == [
        ErrorMessage(code="unknown-type", message="no type 'surprise'")
    ]
    [answer] = session.receive(Authenticated(session="s", resumed=False), 0.0)
    assert isinstance(answer, ErrorMessage) and answer.code == "bad-message"


def test_the_operations_that_arrived_together_are_taken_together_up_to_a_cancel_and_the_limit() -> None:
    session = Session(QUIET, now=0.0)
    ops = [Operation(id=f"op-{n}", name="system.info") for n in range(5)]
    for message in [*ops[:3], Cancel(id="op-0"), *ops[3:]]:
        session.receive(message, 1.0)
    assert session.take_operations(limit=2) == ops[:2]
    assert session.take_operations() == ops[2:3]
    assert session.take_operations() == []  # a cancel is the oldest: it goes alone, in its turn
    assert session.take_inbound() == Cancel(id="op-0")
    assert session.take_operations() == ops[3:]
    assert not session.has_inbound


def test_a_batch_takes_at_most_a_quarter_of_the_backlog_so_the_reader_can_read_on_while_it_is_admitted() -> None:
    for backlog, batch in [(5, 1), (40, 10), (INBOUND_BACKLOG, ADMISSION_BATCH)]:
        session = Session(QUIET, now=0.0, backlog=backlog)
        for n in range(backlog):
            session.receive(Operation(id=f"op-{n}", name="system.info"), 1.0)
        assert len(session.take_operations()) == batch
