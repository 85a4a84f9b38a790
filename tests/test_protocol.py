"""Tests of ksocket.protocol, the sans-I/O core of the wire protocol (protocol.md, versions 2 and 1)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import random
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from ksocket import protocol
from ksocket.protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_HEARTBEAT_LOST,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SLOT_IN_USE,
    FROM_AGENT,
    FROM_HUB,
    MAX_FRAME,
    MAX_RECORD,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    SUBPROTOCOLS,
    Accepted,
    Ack,
    Authenticate,
    Authenticated,
    BadMessage,
    Cancel,
    ErrorCode,
    ErrorInfo,
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
    UnknownType,
    error_reply,
    parse,
    serialize,
    version_of,
)

MESSAGE_CLASSES: tuple[type[Message], ...] = typing.get_args(Message)
TOKEN = "tok-3f9a1c-very-secret"

SAMPLES: list[Message] = [
    Authenticate(token=TOKEN, name="ksocket", version="2.1.1", agent="6f1c0e2a-agent", session=None),
    Authenticate(protocol=1, token=TOKEN, name="ksocket", version="2.1.1", agent="a", session="sess-1"),
    Authenticated(session="sess-1", resumed=False),
    Authenticated(session="sess-1", resumed=True),
    Rejected(reason="invalid-token", message="no such token"),
    Rejected(reason="slot-in-use", message="slot held"),
    Rejected(reason="unsupported-protocol", message="want 1"),
    Heartbeat(n=0),
    Heartbeat(n=7),
    HeartbeatAck(n=7),
    Operation(id="op-1", name="system.info"),
    Operation(id="op-2", name="networks.scan", params={"targets": ["10.0.0.0/24"], "rate": 1.5, "x": None}),
    Accepted(id="op-1"),
    Refused(id="op-3", reason="quota", message="too many operations"),
    Refused(id="op-3", reason="unknown-operation", message="no such operation"),
    Refused(id="op-3", reason="invalid-params", message="target too large"),
    Progress(id="op-2", done=12, total=256),
    Result(id="op-1", seq=41, ok=True, data={"hostname": "h", "nested": {"a": [1, 2.5, "ü", True, None]}}),
    Result(id="op-1", seq=0, ok=True, data={}),
    Result(id="op-2", seq=42, ok=False, error=ErrorInfo(code="cancelled", message="cancelled by the hub")),
    Record(id="op-4", seq=40, record={"kind": "host", "address": "198.18.0.5", "mac": None, "ports": [22, 80]}),
    Record(id="op-4", seq=0, record={"kind": "network", "network": "198.18.0.0/24", "ü": "ü"}),
    Ack(seq=42),
    Cancel(id="op-2"),
    ErrorMessage(code="bad-message", message='field "seq" of "result" is missing'),
    ErrorMessage(code="unknown-type", message="what"),
]


def _frame(**fields: Any) -> str:
    return json.dumps(fields)


def _check_protocol_error(exc: ProtocolError) -> None:
    """The text of a protocol error is one line for a person, starting with its code."""
    text = str(exc)
    assert text.startswith(f"{exc.code}: ")
    assert "\n" not in text and "\r" not in text
    assert len(text) < 300


# --------------------------------------------------------------------------- round trips


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_CLASSES)
    assert len({cls.TYPE for cls in MESSAGE_CLASSES}) == 14


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.TYPE}")
def test_round_trip(message: Message) -> None:
    frame = serialize(message)
    assert isinstance(frame, str)
    assert json.loads(frame)["type"] == message.TYPE
    assert parse(frame) == message
    assert type(parse(frame)) is type(message)
    assert parse(frame.encode("utf-8")) == message


def test_wire_type_names() -> None:
    assert {cls.TYPE for cls in MESSAGE_CLASSES} == {
        "authenticate", "authenticated", "rejected", "heartbeat", "heartbeat-ack", "operation",
        "accepted", "refused", "progress", "result", "record", "ack", "cancel", "error",
    }  # fmt: skip


def test_serialize_is_compact_and_keeps_non_ascii() -> None:
    assert serialize(Heartbeat(n=3)) == '{"type":"heartbeat","n":3}'
    assert serialize(HeartbeatAck(n=3)) == '{"type":"heartbeat-ack","n":3}'
    assert serialize(Cancel(id="é")) == '{"type":"cancel","id":"é"}'


def test_serialize_result_has_data_or_error_never_both() -> None:
    assert serialize(Result.success(id="a", seq=1, data={"k": 1})) == (
        '{"type":"result","id":"a","seq":1,"ok":true,"data":{"k":1}}'
    )
    assert serialize(Result.failure(id="a", seq=2, code="timeout", message="slow")) == (
        '{"type":"result","id":"a","seq":2,"ok":false,"error":{"code":"timeout","message":"slow"}}'
    )


def test_serialize_authenticate_always_carries_session() -> None:
    fresh = json.loads(serialize(Authenticate(token="t", name="ksocket", version="2.1.1", agent="a")))
    assert fresh == {
        "type": "authenticate", "protocol": PROTOCOL_VERSION, "token": "t", "name": "ksocket",
        "version": "2.1.1", "agent": "a", "session": None,
    }  # fmt: skip
    resumed = json.loads(serialize(Authenticate(token="t", name="k", version="v", agent="a", session="s-9")))
    assert resumed["session"] == "s-9"


def test_serialize_operation_always_carries_params() -> None:
    assert serialize(Operation(id="x", name="system.info")) == (
        '{"type":"operation","id":"x","name":"system.info","params":{}}'
    )


def test_serialize_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError, match="JSON"):
        serialize(Result.success(id="a", seq=1, data={"rtt": float("nan")}))


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            '{"type": "authenticate", "protocol": 1, "token": "t", "name": "ksocket", "version": "2.1.1",'
            ' "agent": "u-1", "session": null}',
            Authenticate(protocol=1, token="t", name="ksocket", version="2.1.1", agent="u-1", session=None),
        ),
        (
            '{"type": "authenticated", "session": "s", "resumed": true}',
            Authenticated(session="s", resumed=True),
        ),
        (
            '{"type": "rejected", "reason": "slot-in-use", "message": "m"}',
            Rejected(reason="slot-in-use", message="m"),
        ),
        ('{"type": "heartbeat", "n": 5}', Heartbeat(n=5)),
        ('{"type": "heartbeat-ack", "n": 5}', HeartbeatAck(n=5)),
        (
            '{"type": "operation", "id": "o", "name": "hosts.inspect", "params": {"address": "10.0.0.1"}}',
            Operation(id="o", name="hosts.inspect", params={"address": "10.0.0.1"}),
        ),
        ('{"type": "accepted", "id": "o"}', Accepted(id="o")),
        (
            '{"type": "refused",  "id": "o", "reason": "quota", "message": "m"}',
            Refused(id="o", reason="quota", message="m"),
        ),
        ('{"type": "progress", "id": "o", "done": 12, "total": 256}', Progress(id="o", done=12, total=256)),
        (
            '{"type": "result", "id": "o", "seq": 41, "ok": true, "data": {}}',
            Result(id="o", seq=41, ok=True, data={}),
        ),
        (
            '{"type": "result", "id": "o", "seq": 42, "ok": false, "error": {"code": "c", "message": "m"}}',
            Result(id="o", seq=42, ok=False, error=ErrorInfo(code="c", message="m")),
        ),
        (
            '{"type": "record", "id": "o", "seq": 40, "record": {"kind": "host", "address": "198.18.0.5"}}',
            Record(id="o", seq=40, record={"kind": "host", "address": "198.18.0.5"}),
        ),
        ('{"type": "ack", "seq": 42}', Ack(seq=42)),
        ('{"type": "cancel", "id": "o"}', Cancel(id="o")),
        (
            '{"type": "error", "code": "bad-message", "message": "m"}',
            ErrorMessage(code="bad-message", message="m"),
        ),
    ],
)
def test_parse_frames_as_written_in_protocol_md(frame: str, expected: Message) -> None:
    assert parse(frame) == expected


def test_params_default_to_empty_object() -> None:
    message = parse('{"type":"operation","id":"o","name":"system.info"}')
    assert isinstance(message, Operation)
    assert message.params == {}


def test_result_null_counterpart_reads_as_absent() -> None:
    failed = parse(_result('"ok":false,"data":null,"error":{"code":"c","message":""}'))
    assert failed == Result(id="a", seq=1, ok=False, error=ErrorInfo(code="c", message=""))
    done = parse(_result('"ok":true,"data":{"k":1},"error":null'))
    assert done == Result(id="a", seq=1, ok=True, data={"k": 1})


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.TYPE}")
def test_unknown_fields_are_ignored(message: Message) -> None:
    fields = json.loads(serialize(message))
    fields.update({"future": {"nested": [1, 2]}, "zz": None, "n2": -1, "flag": True})
    assert parse(json.dumps(fields)) == message


def test_large_counters_are_accepted() -> None:
    assert parse('{"type":"ack","seq":18446744073709551616}') == Ack(seq=2**64)


# --------------------------------------------------------------------------- bad frames


def _result(body: str) -> str:
    """A result frame for id "a", seq 1, completed by ``body`` (the ok / data / error fields)."""
    return '{"type":"result","id":"a","seq":1,' + body + "}"


def _auth(**overrides: Any) -> str:
    fields = {"type": "authenticate", "protocol": 1, "token": "t", "name": "k", "version": "v", "agent": "a"}
    return json.dumps({**fields, "session": None, **overrides})


NO_SESSION = json.loads(_auth())
del NO_SESSION["session"]
ERR = '"error":{"code":"c","message":"m"}'
DEEP = "[" * 200_000 + "]" * 200_000

BAD_FRAMES: list[tuple[str, str | bytes, type[ProtocolError], list[str]]] = [
    # (id, frame, exception class, substrings the message must hold)
    ("not-json", "hello", BadMessage, ["not JSON"]),
    ("empty", "", BadMessage, ["not JSON"]),
    ("truncated-json", '{"type":"ack","seq":1', BadMessage, ["not JSON"]),
    ("json-array", '[{"type":"ack","seq":1}]', BadMessage, ["JSON object", "an array"]),
    ("json-string", '"ack"', BadMessage, ["JSON object", '"ack"']),
    ("json-null", "null", BadMessage, ["JSON object", "null"]),
    ("missing-type", '{"seq":1}', BadMessage, ['field "type"', "missing"]),
    ("null-type", '{"type":null}', BadMessage, ['field "type"', "string", "null"]),
    ("int-type", '{"type":5}', BadMessage, ['field "type"', "string", "got 5"]),
    ("unknown-type", '{"type":"shutdown"}', UnknownType, ['field "type"', '"shutdown"']),
    ("empty-type", '{"type":""}', UnknownType, ['field "type"', '""']),
    ("type-wrong-case", '{"type":"ACK","seq":1}', UnknownType, ['"ACK"']),
    ("seq-string", _result('"seq":"x","ok":true,"data":{}'), BadMessage,
     ['field "seq" of "result"', "non-negative integer", 'got "x"']),
    ("seq-negative", '{"type":"ack","seq":-1}', BadMessage, ['field "seq" of "ack"', "non-negative", "-1"]),
    ("seq-float", '{"type":"ack","seq":1.0}', BadMessage, ['field "seq" of "ack"', "integer", "1.0"]),
    ("seq-bool", '{"type":"ack","seq":true}', BadMessage, ['field "seq" of "ack"', "integer", "got true"]),
    ("n-bool", '{"type":"heartbeat","n":false}', BadMessage, ['field "n" of "heartbeat"', "got false"]),
    ("n-string", '{"type":"heartbeat-ack","n":"1"}', BadMessage, ['field "n" of "heartbeat-ack"', 'got "1"']),
    ("n-missing", '{"type":"heartbeat"}', BadMessage, ['field "n" of "heartbeat"', "missing"]),
    ("protocol-bool", _auth(protocol=True), BadMessage, ['field "protocol" of "authenticate"', "got true"]),
    ("done-negative", '{"type":"progress","id":"a","done":-3,"total":4}', BadMessage,
     ['field "done" of "progress"', "-3"]),
    ("total-bool", '{"type":"progress","id":"a","done":3,"total":true}', BadMessage,
     ['field "total" of "progress"', "got true"]),
    ("ok-int", _result('"ok":1,"data":{}'), BadMessage, ['field "ok" of "result"', "true or false", "got 1"]),
    ("ok-missing", _result('"data":{}'), BadMessage, ['field "ok" of "result"', "missing"]),
    ("resumed-null", '{"type":"authenticated","session":"s","resumed":null}', BadMessage,
     ['field "resumed" of "authenticated"', "got null"]),
    ("id-empty", '{"type":"cancel","id":""}', BadMessage, ['field "id" of "cancel"', "non-empty string"]),
    ("id-int", '{"type":"accepted","id":5}', BadMessage, ['field "id" of "accepted"', "got 5"]),
    ("id-null", '{"type":"cancel","id":null}', BadMessage, ['field "id" of "cancel"', "got null"]),
    ("id-missing", '{"type":"operation","name":"x"}', BadMessage, ['field "id" of "operation"', "missing"]),
    ("id-lone-surrogate", '{"type":"accepted","id":"\\ud800"}', BadMessage,
     ['field "id" of "accepted"', "Unicode"]),
    ("name-empty", '{"type":"operation","id":"o","name":""}', BadMessage, ['field "name" of "operation"']),
    ("params-array", '{"type":"operation","id":"o","name":"x","params":[]}', BadMessage,
     ['field "params" of "operation"', "an object", "an array"]),
    ("params-null", '{"type":"operation","id":"o","name":"x","params":null}', BadMessage,
     ['field "params" of "operation"', "got null"]),
    ("refused-reason", '{"type":"refused","id":"o","reason":"busy","message":"m"}', BadMessage,
     ['field "reason" of "refused"', '"quota"', 'got "busy"']),
    ("rejected-reason", '{"type":"rejected","reason":"quota","message":"m"}', BadMessage,
     ['field "reason" of "rejected"', '"invalid-token"', 'got "quota"']),
    ("rejected-message", '{"type":"rejected","reason":"slot-in-use","message":3}', BadMessage,
     ['field "message" of "rejected"', "a string", "got 3"]),
    ("token-int", _auth(token=12345), BadMessage, ['field "token" of "authenticate"', "a string"]),
    ("session-int", _auth(session=5), BadMessage, ['field "session" of "authenticate"', "got 5"]),
    ("session-empty", _auth(session=""), BadMessage, ['field "session" of "authenticate"', "non-empty"]),
    ("session-missing", json.dumps(NO_SESSION), BadMessage, ['field "session" of "authenticate"', "missing"]),
    ("agent-empty", _auth(agent=""), BadMessage, ['field "agent" of "authenticate"']),
    ("authenticated-session-null", '{"type":"authenticated","session":null,"resumed":false}', BadMessage,
     ['field "session" of "authenticated"']),
    ("ok-without-data", _result('"ok":true'), BadMessage,
     ['field "data" of "result"', "required", '"ok" is true']),
    ("ok-with-error", _result('"ok":true,"data":{},' + ERR), BadMessage,
     ['field "error" of "result"', "absent"]),
    ("failed-without-error", _result('"ok":false'), BadMessage,
     ['field "error" of "result"', "required", '"ok" is false']),
    ("failed-with-data", _result('"ok":false,"data":{},' + ERR), BadMessage,
     ['field "data" of "result"', "absent"]),
    ("data-array", _result('"ok":true,"data":[1]'), BadMessage,
     ['field "data" of "result"', "an object", "an array"]),
    ("error-string", _result('"ok":false,"error":"boom"'), BadMessage,
     ['field "error" of "result"', "an object", '"boom"']),
    ("error-code-missing", _result('"ok":false,"error":{"message":"m"}'), BadMessage,
     ['field "error.code" of "result"', "missing"]),
    ("error-code-int", _result('"ok":false,"error":{"code":7,"message":"m"}'), BadMessage,
     ['field "error.code" of "result"', "got 7"]),
    ("error-message-null", _result('"ok":false,"error":{"code":"c","message":null}'), BadMessage,
     ['field "error.message" of "result"', "got null"]),
    ("error-frame-code", '{"type":"error","code":1,"message":"m"}', BadMessage, ['field "code" of "error"']),
    ("nan", '{"type":"heartbeat","n":NaN}', BadMessage, ['field "n" of "heartbeat"', "NaN"]),
    ("infinity", '{"type":"ack","seq":Infinity}', BadMessage, ['field "seq" of "ack"', "Infinity"]),
    ("nan-in-params", '{"type":"operation","id":"o","name":"x","params":{"a":[1,{"b":-Infinity}]}}',
     BadMessage, ['field "params" of "operation"', "-Infinity"]),
    ("number-overflow", _result('"ok":true,"data":{"rtt":1e400}'), BadMessage,
     ['field "data" of "result"', "1e400"]),
    ("nan-top-level", "NaN", BadMessage, ["frame holds NaN"]),
    ("long-int", '{"type":"ack","seq":' + "9" * 5000 + "}", BadMessage, ["number is too long"]),
    ("deep-nesting", '{"type":"operation","id":"o","name":"x","params":{"a":' + DEEP + "}}", BadMessage,
     ["nested too deeply"]),
    ("invalid-utf8", b'{"type":"cancel","id":"\xff\xfe"}', BadMessage, ["UTF-8", "byte 23"]),
    ("truncated-utf8", '{"type":"cancel","id":"é"}'.encode()[:-3], BadMessage, ["UTF-8"]),
    ("utf8-bom", b'\xef\xbb\xbf{"type":"ack","seq":1}', BadMessage, ["not JSON"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "exc_class", "fragments"), [b[1:] for b in BAD_FRAMES], ids=[b[0] for b in BAD_FRAMES]
)
def test_bad_frame(frame: str | bytes, exc_class: type[ProtocolError], fragments: list[str]) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(frame)
    assert type(caught.value) is exc_class
    _check_protocol_error(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_the_same_bad_frame_as_bytes_gives_the_same_error() -> None:
    for _, frame, exc_class, _fragments in BAD_FRAMES:
        if isinstance(frame, str) and len(frame) < 10_000:
            with pytest.raises(exc_class) as as_text:
                parse(frame)
            with pytest.raises(exc_class) as as_bytes:
                parse(frame.encode("utf-8", "surrogatepass"))
            assert str(as_bytes.value) == str(as_text.value)


def test_error_names_field_of_unknown_value_briefly() -> None:
    with pytest.raises(BadMessage) as caught:
        parse(_frame(type="ack", seq="line one\nline two" + "x" * 10_000))
    _check_protocol_error(caught.value)
    assert "line one\\nline two" in str(caught.value)
    assert "..." in str(caught.value)


# --------------------------------------------------------------------------- frame size


PAD_HEAD, PAD_TAIL = '{"type":"ack","seq":1,"pad":"', '"}'


def _padded(size: int, *, pad: str = " ") -> str:
    """A valid ack frame of exactly ``size`` bytes of UTF-8, padded inside a string field."""
    head, tail = PAD_HEAD, PAD_TAIL
    room = size - len(head) - len(tail)
    width = len(pad.encode())
    assert room % width == 0
    frame = head + pad * (room // width) + tail
    assert len(frame.encode()) == size
    return frame


def test_frame_of_exactly_max_size_is_accepted() -> None:
    frame = _padded(MAX_FRAME)
    assert parse(frame) == Ack(seq=1)
    assert parse(frame.encode()) == Ack(seq=1)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_oversized_frame_is_refused(as_bytes: bool) -> None:
    frame = _padded(MAX_FRAME + 1)
    with pytest.raises(BadMessage, match=f"larger than {MAX_FRAME} bytes") as caught:
        parse(frame.encode() if as_bytes else frame)
    _check_protocol_error(caught.value)


def test_frame_size_counts_utf8_bytes_not_characters() -> None:
    # 2-byte characters: fewer than MAX_FRAME characters, more than MAX_FRAME bytes.
    overhead = len(PAD_HEAD) + len(PAD_TAIL)
    size = MAX_FRAME + 1 if (MAX_FRAME + 1 - overhead) % 2 == 0 else MAX_FRAME + 2
    frame = _padded(size, pad="é")
    assert len(frame) < MAX_FRAME < len(frame.encode())
    with pytest.raises(BadMessage, match="larger than"):
        parse(frame)


# --------------------------------------------------------------------------- errors and replies


def test_error_reply_to_bad_message() -> None:
    with pytest.raises(BadMessage) as caught:
        parse('{"type":"ack","seq":"x"}')
    reply = error_reply(caught.value)
    assert reply == ErrorMessage(
        code="bad-message", message='field "seq" of "ack" must be a non-negative integer, got "x"'
    )
    assert json.loads(serialize(reply)) == {"type": "error", "code": "bad-message", "message": reply.message}


def test_error_reply_to_unknown_type() -> None:
    with pytest.raises(UnknownType) as caught:
        parse('{"type":"reboot"}')
    reply = error_reply(caught.value)
    assert reply.code == "unknown-type"
    assert '"reboot"' in reply.message
    assert not reply.message.startswith("unknown-type:")
    assert parse(serialize(reply)) == reply


def test_error_reply_to_plain_protocol_error() -> None:
    reply = error_reply(BadMessage("something odd"))
    assert reply == ErrorMessage(code="bad-message", message="something odd")


def test_parse_rejects_non_text_input() -> None:
    with pytest.raises(BadMessage, match="must be text"):
        parse(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- error codes

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _error_table() -> dict[str, tuple[str, str]]:
    """protocol.md's table of error codes: code -> (who sends it, in what; what it means)."""
    section = PROTOCOL_MD.read_text(encoding="utf-8").split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \|$", section, re.MULTILINE)
    table = {code: (sender.strip(), meaning.strip()) for code, sender, meaning in rows}
    assert len(table) == len(rows), "a code has two rows"
    return table


def test_protocol_md_lists_every_error_code_and_no_other() -> None:
    table = _error_table()
    assert sorted(table) == sorted(ErrorCode)
    for code, (sender, meaning) in table.items():
        assert sender.split(",")[0] in ("agent", "hub", "either"), code
        assert meaning, code


def test_protocol_md_says_where_each_reason_goes() -> None:
    table = _error_table()
    for reason in typing.get_args(protocol.RejectReason):
        assert table[reason][0] == "hub, `rejected`"
    for reason in typing.get_args(protocol.RefuseReason):
        assert table[reason][0].startswith("agent, `refused`")
    for frame_error in (BadMessage, UnknownType):
        assert table[frame_error.code][0] == "either, `error`"


def test_error_codes_are_their_wire_text() -> None:
    assert ErrorCode.TIMEOUT == "timeout"
    assert {code.value for code in ErrorCode} == {str(code) for code in ErrorCode}
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", code) for code in ErrorCode)
    refused = Refused(id="a", reason=ErrorCode.QUOTA, message="full")
    assert serialize(refused) == '{"type":"refused","id":"a","reason":"quota","message":"full"}'
    failed = Result.failure(id="a", seq=1, code=ErrorCode.AUTH_FAILED, message="no")
    assert (
        serialize(failed)
        == '{"type":"result","id":"a","seq":1,"ok":false,"error":{"code":"auth-failed","message":"no"}}'
    )
    assert serialize(failed) == serialize(Result.failure(id="a", seq=1, code="auth-failed", message="no"))


def test_parsed_reasons_are_error_codes() -> None:
    refused = parse('{"type":"refused","id":"a","reason":"quota","message":""}')
    assert isinstance(refused, Refused) and refused.reason is ErrorCode.QUOTA
    rejected = parse('{"type":"rejected","reason":"slot-in-use","message":""}')
    assert isinstance(rejected, Rejected) and rejected.reason is ErrorCode.SLOT_IN_USE
    with pytest.raises(BadMessage, match='one of "quota", "unknown-operation", "invalid-params"'):
        parse('{"type":"refused","id":"a","reason":"timeout","message":""}')


def test_a_code_this_version_does_not_know_still_parses() -> None:
    frame = '{"type":"result","id":"a","seq":1,"ok":false,"error":{"code":"from-the-future","message":""}}'
    result = parse(frame)
    assert isinstance(result, Result) and result.error is not None
    assert result.error.code == "from-the-future"
    assert parse('{"type":"error","code":"also-new","message":""}') == ErrorMessage(code="also-new", message="")


# --------------------------------------------------------------------------- values


def test_repr_of_authenticate_hides_the_token() -> None:
    message = Authenticate(token=TOKEN, name="ksocket", version="2.1.1", agent="a", session="s")
    assert TOKEN not in repr(message)
    assert TOKEN not in str(message)
    assert TOKEN not in repr([message])
    assert "agent='a'" in repr(message)
    assert message.token == TOKEN
    assert TOKEN in serialize(message)
    parsed = parse(serialize(message))
    assert TOKEN not in repr(parsed)


def test_messages_are_frozen() -> None:
    message = Heartbeat(n=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.n = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ok": True},
        {"ok": True, "data": {}, "error": ErrorInfo(code="c", message="m")},
        {"ok": False},
        {"ok": False, "data": {}, "error": ErrorInfo(code="c", message="m")},
    ],
)
def test_inconsistent_result_cannot_be_built(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="inconsistent result"):
        Result(id="a", seq=1, **kwargs)


def test_result_constructors() -> None:
    assert Result.success(id="a", seq=3, data={"x": 1}) == Result(id="a", seq=3, ok=True, data={"x": 1})
    failed = Result.failure(id="a", seq=4, code="timeout", message="slow")
    assert failed.ok is False
    assert failed.data is None
    assert failed.error == ErrorInfo(code="timeout", message="slow")


def test_constants() -> None:
    assert CLOSE_NORMAL == 1000
    assert CLOSE_PROTOCOL_ERROR == 4400
    assert CLOSE_AUTH_FAILED == 4401
    assert CLOSE_SLOT_IN_USE == 4409
    assert CLOSE_HEARTBEAT_LOST == 4408
    assert SUBPROTOCOL == "ksocket.v2"
    assert PROTOCOL_VERSION == 2
    assert list(SUBPROTOCOLS) == ["ksocket.v2", "ksocket.v1"]  # the order an agent offers them in
    assert MAX_FRAME == 16 * 1024 * 1024
    assert MAX_RECORD == 1024 * 1024


def test_version_of_a_subprotocol() -> None:
    assert version_of("ksocket.v2") == 2
    assert version_of("ksocket.v1") == 1
    assert version_of("ksocket.v3") is None
    assert version_of(None) is None
    assert version_of("") is None


@pytest.mark.parametrize(
    ("record", "fragments"),
    [
        ("", ['field "record" of "record"', "missing"]),
        (',"record":[]', ['field "record" of "record"', "an object", "got an array"]),
        (',"record":{}', ['field "record.kind" of "record"', "missing"]),
        (',"record":{"kind":""}', ['field "record.kind" of "record"', "non-empty string", 'got ""']),
        (',"record":{"kind":7}', ['field "record.kind" of "record"', "non-empty string", "got 7"]),
        (',"record":{"kind":"\\ud800"}', ['field "record.kind" of "record"', "non-empty string"]),
    ],
)
def test_bad_record(record: str, fragments: list[str]) -> None:
    with pytest.raises(BadMessage) as caught:
        parse('{"type":"record","id":"o","seq":1' + record + "}")
    _check_protocol_error(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_record_needs_a_kind_to_be_built() -> None:
    with pytest.raises(ValueError, match="kind"):
        Record(id="o", seq=1, record={"address": "198.18.0.5"})
    assert Record(id="o", seq=1, record={"kind": "details"}).kind == "details"


def test_a_record_goes_from_agent_to_hub() -> None:
    assert Record in FROM_AGENT and Record not in FROM_HUB


def test_directions_cover_every_message_type() -> None:
    assert set(FROM_AGENT) | set(FROM_HUB) == set(MESSAGE_CLASSES)
    assert set(FROM_AGENT) & set(FROM_HUB) == {ErrorMessage}
    assert isinstance(parse('{"type":"ack","seq":1}'), FROM_HUB)
    assert not isinstance(parse('{"type":"ack","seq":1}'), FROM_AGENT)


def test_module_does_no_io() -> None:
    tree = ast.parse(inspect.getsource(protocol))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    allowed = {
        "__future__",
        "json",
        "math",
        "collections.abc",
        "dataclasses",
        "enum",
        "typing",
        "ksocket.errors",
        "ksocket.nesting",
    }
    assert imported <= allowed
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not names & {"open", "print", "input", "exec", "eval"}


# --------------------------------------------------------------------------- fuzzing
#
# hypothesis is not among the project's dependencies, so the fuzzers are seeded random loops:
# reproducible, and a failure names its case number.

FUZZ_CASES = 4000
SAMPLE_FRAMES = [serialize(m) for m in SAMPLES]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 41, 2**63, -(2**70), 10**30])
    if kind == 3:
        return rng.randint(-5, 5)
    if kind == 4:
        return rng.choice([0.0, -0.5, 1e300, float("nan"), float("inf"), -float("inf")])
    if kind == 5:
        return rng.choice(["", "x", "é", "\ud800", "\n", "quota", "slot-in-use", "cancelled", "a" * 100])
    if kind == 6:
        return rng.choice([cls.TYPE for cls in MESSAGE_CLASSES])
    if kind in (7, 8):
        return rng.choice(["op-1", "s", "system.info", "0"])
    if kind in (9, 10):
        keys = ["code", "message", "a", "type"]
        return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(3))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(3))]


def _mutate_fields(rng: random.Random, fields: dict[str, Any]) -> dict[str, Any]:
    fields = dict(fields)
    for _ in range(rng.randint(1, 3)):
        keys = list(fields)
        action = rng.randrange(4)
        if action == 0 and keys:
            fields[rng.choice(keys)] = _random_json(rng)
        elif action == 1 and keys:
            del fields[rng.choice(keys)]
        elif action == 2:
            fields[rng.choice(["extra", "data", "error", "params", "session", "seq"])] = _random_json(rng)
        else:
            fields["type"] = rng.choice([cls.TYPE for cls in MESSAGE_CLASSES])
    return fields


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if action == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif action == 1:
            buf.insert(pos, rng.choice(b'{}[]",:0-9.eE\\ntfa\xc3\xa9\xff \x00'))
        elif action == 2 and buf:
            del buf[min(pos, len(buf) - 1)]
        elif action == 3:
            del buf[pos:]
        else:
            start = rng.randrange(len(buf) + 1)
            buf[pos:pos] = buf[start : start + rng.randrange(8)]
    return bytes(buf)


def _parse_or_protocol_error(frame: str | bytes) -> Message | None:
    """parse(frame), or None if it raised one of the two protocol errors; anything else propagates."""
    try:
        message = parse(frame)
    except (BadMessage, UnknownType) as exc:
        _check_protocol_error(exc)
        return None
    assert isinstance(message, MESSAGE_CLASSES)
    assert parse(serialize(message)) == message
    return message


def test_fuzz_field_mutations_only_raise_protocol_errors() -> None:
    rng = random.Random(20240611)
    accepted = refused = 0
    for case in range(FUZZ_CASES):
        fields = _mutate_fields(rng, json.loads(rng.choice(SAMPLE_FRAMES)))
        frame = json.dumps(fields, allow_nan=True, ensure_ascii=rng.random() < 0.5)
        try:
            outcome = _parse_or_protocol_error(frame)
        except Exception as exc:  # pragma: no cover - reported as a failure
            pytest.fail(f"case {case}: parse({frame!r}) raised {exc!r}")
        if outcome is None:
            refused += 1
        else:
            accepted += 1
    # Both paths were exercised, so the loop tested something.
    assert accepted > FUZZ_CASES // 20
    assert refused > FUZZ_CASES // 2


def test_fuzz_byte_mutations_only_raise_protocol_errors() -> None:
    rng = random.Random(6455)
    accepted = refused = 0
    for case in range(FUZZ_CASES):
        data = _mutate_bytes(rng, rng.choice(SAMPLE_FRAMES).encode())
        for frame in (data, data.decode("utf-8", "surrogateescape")):
            try:
                outcome = _parse_or_protocol_error(frame)
            except Exception as exc:  # pragma: no cover - reported as a failure
                pytest.fail(f"case {case}: parse({frame!r}) raised {exc!r}")
            if outcome is None:
                refused += 1
            else:
                accepted += 1
    assert accepted > 0
    assert refused > FUZZ_CASES // 2


def test_fuzz_arbitrary_json_only_raises_protocol_errors() -> None:
    rng = random.Random(4400)
    for case in range(FUZZ_CASES // 4):
        value = _random_json(rng)
        frame = json.dumps(value, allow_nan=True)
        try:
            _parse_or_protocol_error(frame)
        except Exception as exc:  # pragma: no cover - reported as a failure
            pytest.fail(f"case {case}: parse({frame!r}) raised {exc!r}")
