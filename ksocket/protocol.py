"""The ksocket wire protocol, versions 2 and 1, as values: a sans-I/O core.

This module turns WebSocket text frames into typed messages and back, and does nothing
else: no sockets, no asyncio, no clocks, no logging, no files. The agent's link, its state
machine and the reference hub all speak through it, so the rules of ``protocol.md`` live in
one place.

Design
------
* One frozen, keyword-only dataclass per message type. Its ``TYPE`` class attribute is the
  wire ``type``; its fields carry the wire names of the protocol (every wire name is
  already a valid snake_case identifier, so the two coincide). ``Message`` is the union.
* Parsing is table-driven. ``_SCHEMAS`` maps each wire type to its class and a tuple of
  ``_Field(name, read)``; a reader such as ``_uint`` or ``_id`` pulls one field out of
  the decoded JSON object and either returns its value or raises ``BadMessage`` naming
  the field. A schema may add a ``check`` for rules that span fields (``result``'s
  ``ok`` / ``data`` / ``error``). Serialization walks the same table, so the two
  directions cannot drift apart.
* ``parse`` is total: whatever the input, it returns a ``Message`` or raises
  ``BadMessage`` / ``UnknownType`` whose text is one line for a person, starting with
  the error code (``bad-message: field "seq" of "result" must be ...``).
  ``error_reply`` turns such an exception into the ``error`` frame the protocol asks for.
* Every code that goes on the wire (an ``error`` frame's ``code``, a ``rejected`` or
  ``refused`` frame's ``reason``, a failed result's ``error.code``) is an ``ErrorCode``;
  protocol.md's "Errors" table lists the same codes, and a test keeps the two equal. The
  frame errors (``ProtocolError``) live here with their codes, since ``ksocket.errors``
  sits below this module and cannot import it; it still draws them in the whole tree.
* Forward compatibility: unknown fields are ignored. Strictness where it matters: a JSON
  ``true`` is not an integer, counters are non-negative, ids are non-empty, ``NaN`` and
  ``Infinity`` are refused, frames are at most ``MAX_FRAME`` bytes of UTF-8.
* Versions: the agent offers the subprotocols ``SUBPROTOCOLS`` (``ksocket.v2`` first, then
  ``ksocket.v1``) and the hub selects one; ``version_of`` says which protocol version it names.
  Version 2 adds the ``record`` frame and nothing else, so one parser serves both: which frames
  a link may carry is the link's rule (a v1 link carries no ``record``).
* Secrets: ``repr(Authenticate(...))`` leaves out the token. A serialized ``authenticate``
  frame necessarily holds it, so never log raw outbound frames of that type.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal, NamedTuple, TypeAlias, get_args

from ksocket.errors import KsocketError
from ksocket.nesting import deep_parse

__all__ = [
    "CLOSE_AUTH_FAILED",
    "CLOSE_HEARTBEAT_LOST",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_SLOT_IN_USE",
    "FROM_AGENT",
    "FROM_HUB",
    "MAX_FRAME",
    "MAX_RECORD",
    "PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "SUBPROTOCOLS",
    "Accepted",
    "Ack",
    "Admission",
    "Authenticate",
    "Authenticated",
    "BadMessage",
    "Cancel",
    "ErrorCode",
    "ErrorInfo",
    "ErrorMessage",
    "Heartbeat",
    "HeartbeatAck",
    "JSONObject",
    "Message",
    "Operation",
    "Progress",
    "ProtocolError",
    "Record",
    "RefuseReason",
    "Refused",
    "RejectReason",
    "Rejected",
    "Result",
    "Sequenced",
    "UnknownType",
    "error_reply",
    "parse",
    "serialize",
    "version_of",
]

PROTOCOL_VERSION: Final = 2
"""The newest version of the protocol, the one an agent offers first."""
SUBPROTOCOLS: Final[dict[str, int]] = {"ksocket.v2": 2, "ksocket.v1": 1}
"""The WebSocket subprotocols of each version, newest (most preferred) first."""
SUBPROTOCOL: Final = "ksocket.v2"
"""The subprotocol of ``PROTOCOL_VERSION``."""
MAX_FRAME: Final = 16 * 1024 * 1024
"""Largest frame, in bytes of UTF-8, that either side sends or accepts."""
MAX_RECORD: Final = 1024 * 1024
"""Largest ``record`` document, in bytes of compact UTF-8 JSON, that an agent sends: a record is one
host, network or host's details, and many fit in the time one large frame would hold the link."""


def version_of(subprotocol: str | None) -> int | None:
    """The protocol version a WebSocket subprotocol names, or None for one that is not ksocket's."""
    return SUBPROTOCOLS.get(subprotocol or "")


CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 4400
CLOSE_AUTH_FAILED: Final = 4401
CLOSE_HEARTBEAT_LOST: Final = 4408
CLOSE_SLOT_IN_USE: Final = 4409

JSONObject: TypeAlias = dict[str, Any]


# --------------------------------------------------------------------------- errors


class ErrorCode(StrEnum):
    """Every code that goes on the wire; protocol.md's "Errors" table says who sends each.

    A member is its string (``ErrorCode.TIMEOUT == "timeout"``, and JSON writes it as such),
    so frames carry exactly the text of the protocol. A peer may send a code this version
    does not know: ``ErrorInfo.code`` and ``ErrorMessage.code`` stay plain strings on reading.
    """

    # an ``error`` frame's code, either way
    BAD_MESSAGE = "bad-message"  # not JSON, no ``type``, or a field of the wrong shape
    UNKNOWN_TYPE = "unknown-type"  # a well-formed frame of a ``type`` the receiver does not know

    # a ``rejected`` frame's reason, hub → agent
    INVALID_TOKEN = "invalid-token"  # the token is unknown or revoked  # noqa: S105 (a reason, not a secret)
    SLOT_IN_USE = "slot-in-use"  # another agent holds the token's slot
    UNSUPPORTED_PROTOCOL = "unsupported-protocol"  # the hub does not speak the agent's protocol version

    # a ``refused`` frame's reason, agent → hub (invalid-params is also a failed result's code)
    QUOTA = "quota"  # the agent holds connect.maxOperations operations already
    UNKNOWN_OPERATION = "unknown-operation"  # the agent has no operation of that name (the hub: in an
    # ``error`` frame, about an operation it never sent to that slot)
    INVALID_PARAMS = "invalid-params"  # the params are wrong: no attempt will change that

    # a failed result's error.code, agent → hub (hosts.inspect also puts them in a protocol's error entry)
    CANCELLED = "cancelled"  # the hub cancelled the operation
    TIMEOUT = "timeout"  # no answer in time, or the operation exceeded its time limit
    UNREACHABLE = "unreachable"  # no route, refused or reset: the host, service or cloud API is not there
    AUTH_FAILED = "auth-failed"  # the peer (a host, a cloud API) refused the credential
    NO_CREDENTIAL = "no-credential"  # no credential serves the address (or the cloud account)
    HOST_KEY_CHANGED = "host-key-changed"  # SSH: the host presents another key than the one remembered
    PROTOCOL_ERROR = "protocol-error"  # the peer answered, but not as its protocol says it should
    UNSUPPORTED = "unsupported"  # hosts.inspect: this version of the agent cannot inspect with that protocol
    INTERRUPTED = "interrupted"  # the worker stopped under the operation; it normally runs again instead
    INTERNAL = "internal"  # anything else: a fault of the agent or of its host

    # the hub's own, never on the wire: what it stores in place of a result past the slot's quota
    STORAGE_FULL = "storage-full"


class ProtocolError(KsocketError):
    """A frame that breaks the wire protocol; ``code`` is that of the ``error`` frame answering it."""

    code: ClassVar[ErrorCode] = ErrorCode.BAD_MESSAGE


class BadMessage(ProtocolError):
    """Not JSON, no ``type``, or a field of the wrong shape."""

    code = ErrorCode.BAD_MESSAGE


class UnknownType(ProtocolError):
    """A well-formed frame of a ``type`` this side does not know."""

    code = ErrorCode.UNKNOWN_TYPE


RejectReason: TypeAlias = Literal[ErrorCode.INVALID_TOKEN, ErrorCode.SLOT_IN_USE, ErrorCode.UNSUPPORTED_PROTOCOL]
RefuseReason: TypeAlias = Literal[ErrorCode.QUOTA, ErrorCode.UNKNOWN_OPERATION, ErrorCode.INVALID_PARAMS]

_REJECT_REASONS: Final[tuple[ErrorCode, ...]] = get_args(RejectReason)
_REFUSE_REASONS: Final[tuple[ErrorCode, ...]] = get_args(RefuseReason)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, kw_only=True)
class Authenticate:
    """agent → hub, the first frame of every connection."""

    TYPE: ClassVar[str] = "authenticate"
    protocol: int = PROTOCOL_VERSION
    token: str = field(repr=False)
    name: str
    version: str
    agent: str
    session: str | None = None
    """The session being resumed, or None for a fresh one. Always on the wire (as null)."""


@dataclass(frozen=True, kw_only=True)
class Authenticated:
    """hub → agent: the token is good; ``session`` names this connection's session."""

    TYPE: ClassVar[str] = "authenticated"
    session: str
    resumed: bool


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """hub → agent: authentication failed; the hub closes with 4401 / 4409 / 4400."""

    TYPE: ClassVar[str] = "rejected"
    reason: RejectReason
    message: str


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """agent → hub, every ``connect.heartbeatInterval`` seconds."""

    TYPE: ClassVar[str] = "heartbeat"
    n: int


@dataclass(frozen=True, kw_only=True)
class HeartbeatAck:
    """hub → agent, the answer to the heartbeat with the same ``n``."""

    TYPE: ClassVar[str] = "heartbeat-ack"
    n: int


@dataclass(frozen=True, kw_only=True)
class Operation:
    """hub → agent: run operation ``name`` once under ``id``."""

    TYPE: ClassVar[str] = "operation"
    id: str
    name: str
    params: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """agent → hub: the operation is queued or running (best effort)."""

    TYPE: ClassVar[str] = "accepted"
    id: str


@dataclass(frozen=True, kw_only=True)
class Refused:
    """agent → hub: the operation will not run."""

    TYPE: ClassVar[str] = "refused"
    id: str
    reason: RefuseReason
    message: str


@dataclass(frozen=True, kw_only=True)
class Progress:
    """agent → hub: ``done`` of ``total`` units of an operation (best effort)."""

    TYPE: ClassVar[str] = "progress"
    id: str
    done: int
    total: int


@dataclass(frozen=True, kw_only=True)
class ErrorInfo:
    """Why an operation failed: the ``error`` object of a failed ``result``."""

    code: str
    """An ``ErrorCode`` when this side sends it; read from a peer, any non-empty string."""
    message: str


@dataclass(frozen=True, kw_only=True)
class Result:
    """agent → hub: the outcome of an operation, numbered by ``seq`` until acked.

    ``ok=True`` carries ``data`` (a JSON object) and no ``error``; ``ok=False`` carries an
    ``error`` and no ``data``. Constructing any other combination raises ``ValueError``.
    """

    TYPE: ClassVar[str] = "result"
    id: str
    seq: int
    ok: bool
    data: JSONObject | None = None
    error: ErrorInfo | None = None

    def __post_init__(self) -> None:
        problem = _result_problem(self.ok, self.data, self.error)
        if problem is not None:
            raise ValueError(f"inconsistent result: {problem[0]} {problem[1]}")

    @classmethod
    def success(cls, *, id: str, seq: int, data: JSONObject) -> Result:
        return cls(id=id, seq=seq, ok=True, data=data)

    @classmethod
    def failure(cls, *, id: str, seq: int, code: str, message: str) -> Result:
        return cls(id=id, seq=seq, ok=False, error=ErrorInfo(code=code, message=message))


@dataclass(frozen=True, kw_only=True)
class Record:
    """agent → hub (version 2): one piece of an operation's output, sent before its result.

    ``record`` is a JSON object with a non-empty string ``kind`` (``host``, ``network``,
    ``details``, ...). Records take their ``seq`` from the same count as results and follow the
    same rules: owned by the agent until acked, re-sent in seq order, a repeated seq dropped.
    """

    TYPE: ClassVar[str] = "record"
    id: str
    seq: int
    record: JSONObject

    def __post_init__(self) -> None:
        if _record_kind(self.record) is None:
            raise ValueError('a record must be a JSON object with a non-empty string "kind"')

    @property
    def kind(self) -> str:
        return str(self.record["kind"])


Sequenced: TypeAlias = Result | Record
"""What the agent numbers with ``seq`` and owns until the hub acks it."""


@dataclass(frozen=True, kw_only=True)
class Ack:
    """hub → agent: every result and record with a ``seq`` up to this one has arrived (cumulative)."""

    TYPE: ClassVar[str] = "ack"
    seq: int


@dataclass(frozen=True, kw_only=True)
class Cancel:
    """hub → agent: stop operation ``id``; it ends with error code ``cancelled``."""

    TYPE: ClassVar[str] = "cancel"
    id: str


@dataclass(frozen=True, kw_only=True)
class ErrorMessage:
    """Either way: the answer to a bad frame (``bad-message`` or ``unknown-type``)."""

    TYPE: ClassVar[str] = "error"
    code: str
    """An ``ErrorCode`` when this side sends it; read from a peer, any non-empty string."""
    message: str


Message: TypeAlias = (
    Authenticate
    | Authenticated
    | Rejected
    | Heartbeat
    | HeartbeatAck
    | Operation
    | Accepted
    | Refused
    | Progress
    | Result
    | Record
    | Ack
    | Cancel
    | ErrorMessage
)

Admission: TypeAlias = Accepted | Refused | Result
"""The agent's answer to an ``operation``: queued or running, refused, or the stored result of a done id."""

FROM_AGENT: Final[tuple[type[Message], ...]] = (
    Authenticate,
    Heartbeat,
    Accepted,
    Refused,
    Progress,
    Result,
    Record,
    ErrorMessage,
)
"""The message classes an agent sends (usable with ``isinstance``)."""

FROM_HUB: Final[tuple[type[Message], ...]] = (
    Authenticated,
    Rejected,
    HeartbeatAck,
    Operation,
    Ack,
    Cancel,
    ErrorMessage,
)
"""The message classes a hub sends (usable with ``isinstance``)."""


# --------------------------------------------------------------------------- field readers
#
# A reader takes the decoded frame, the wire name of one field and the frame's type, and
# returns the field's value or raises BadMessage naming the field.

Reader: TypeAlias = Callable[[Mapping[str, Any], str, str], Any]
_MISSING: Final = object()


def _bad(text: str) -> BadMessage:
    return BadMessage(f"{BadMessage.code}: {text}")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: object) -> str:
    """A short, single-line rendering of a JSON value for an error message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        value = value[:41]  # enough to show that it was clipped
    try:
        # ensure_ascii escapes newlines and every other control or exotic character.
        return _clip(json.dumps(value, ensure_ascii=True))
    except ValueError:  # an int too long to print
        return "a number"


def _wrong(obj: Mapping[str, Any], name: str, type_name: str, expected: str) -> BadMessage:
    value = obj.get(name, _MISSING)
    if value is _MISSING:
        return _bad(f'field "{name}" of "{type_name}" is missing')
    return _bad(f'field "{name}" of "{type_name}" must be {expected}, got {_describe(value)}')


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates (legal JSON escapes, but not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(obj: Mapping[str, Any], name: str, type_name: str, *, empty: bool) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not (empty or value):
        raise _wrong(obj, name, type_name, "a string" if empty else "a non-empty string")
    if not _encodable(value):
        raise _wrong(obj, name, type_name, "valid Unicode (no lone surrogates)")
    return value


def _str(obj: Mapping[str, Any], name: str, type_name: str) -> str:
    return _text(obj, name, type_name, empty=True)


def _id(obj: Mapping[str, Any], name: str, type_name: str) -> str:
    return _text(obj, name, type_name, empty=False)


def _uint(obj: Mapping[str, Any], name: str, type_name: str) -> int:
    value = obj.get(name)
    # bool is a subclass of int in Python, and a JSON true must not pass for 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _wrong(obj, name, type_name, "a non-negative integer")
    return value


def _bool(obj: Mapping[str, Any], name: str, type_name: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        raise _wrong(obj, name, type_name, "true or false")
    return value


def _object(obj: Mapping[str, Any], name: str, type_name: str) -> JSONObject:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise _wrong(obj, name, type_name, "an object")
    return value


def _choice(*allowed: ErrorCode) -> Reader:
    expected = "one of " + ", ".join(f'"{a}"' for a in allowed)

    def read(obj: Mapping[str, Any], name: str, type_name: str) -> ErrorCode:
        value = obj.get(name)
        if value not in allowed:
            raise _wrong(obj, name, type_name, expected)
        return ErrorCode(value)

    return read


def _nullable(read: Reader) -> Reader:
    """The field must be present; it may be null."""

    def read_nullable(obj: Mapping[str, Any], name: str, type_name: str) -> Any:
        if name in obj and obj[name] is None:
            return None
        return read(obj, name, type_name)

    return read_nullable


def _optional(read: Reader) -> Reader:
    """The field may be absent or null, both read as None."""

    def read_optional(obj: Mapping[str, Any], name: str, type_name: str) -> Any:
        if obj.get(name) is None:
            return None
        return read(obj, name, type_name)

    return read_optional


def _params(obj: Mapping[str, Any], name: str, type_name: str) -> JSONObject:
    return {} if name not in obj else _object(obj, name, type_name)


def _error_info(obj: Mapping[str, Any], name: str, type_name: str) -> ErrorInfo:
    inner = _object(obj, name, type_name)
    # Re-key the inner fields by their path, so that errors name "error.code" of "result".
    nested = {f"{name}.{key}": value for key, value in inner.items()}
    return ErrorInfo(
        code=_id(nested, f"{name}.code", type_name),
        message=_str(nested, f"{name}.message", type_name),
    )


# --------------------------------------------------------------------------- schemas


class _Field(NamedTuple):
    name: str
    read: Reader
    omit_if_none: bool = False
    """Serialize leaves the field out when it is None (rather than writing null)."""


class _Schema(NamedTuple):
    cls: type[Message]
    fields: tuple[_Field, ...]
    check: Callable[[dict[str, Any]], None] | None = None


def _result_problem(ok: bool, data: object, error: object) -> tuple[str, str] | None:
    """The field of a result that contradicts ``ok``, and what is wrong with it."""
    if ok and data is None:
        return "data", 'is required when "ok" is true'
    if ok and error is not None:
        return "error", 'must be absent when "ok" is true'
    if not ok and error is None:
        return "error", 'is required when "ok" is false'
    if not ok and data is not None:
        return "data", 'must be absent when "ok" is false'
    return None


def _record_kind(record: object) -> str | None:
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if isinstance(kind, str) and kind and _encodable(kind) else None


def _record(obj: Mapping[str, Any], name: str, type_name: str) -> JSONObject:
    value = _object(obj, name, type_name)
    if _record_kind(value) is None:
        raise _wrong({f"{name}.kind": value.get("kind", _MISSING)}, f"{name}.kind", type_name, "a non-empty string")
    return value


def _check_result(values: dict[str, Any]) -> None:
    problem = _result_problem(values["ok"], values["data"], values["error"])
    if problem is not None:
        raise _bad(f'field "{problem[0]}" of "result" {problem[1]}')


_SCHEMAS: Final[dict[str, _Schema]] = {
    schema.cls.TYPE: schema
    for schema in (
        _Schema(
            Authenticate,
            (
                _Field("protocol", _uint),
                _Field("token", _str),
                _Field("name", _str),
                _Field("version", _str),
                _Field("agent", _id),
                _Field("session", _nullable(_id)),
            ),
        ),
        _Schema(Authenticated, (_Field("session", _id), _Field("resumed", _bool))),
        _Schema(Rejected, (_Field("reason", _choice(*_REJECT_REASONS)), _Field("message", _str))),
        _Schema(Heartbeat, (_Field("n", _uint),)),
        _Schema(HeartbeatAck, (_Field("n", _uint),)),
        _Schema(Operation, (_Field("id", _id), _Field("name", _id), _Field("params", _params))),
        _Schema(Accepted, (_Field("id", _id),)),
        _Schema(
            Refused,
            (_Field("id", _id), _Field("reason", _choice(*_REFUSE_REASONS)), _Field("message", _str)),
        ),
        _Schema(Progress, (_Field("id", _id), _Field("done", _uint), _Field("total", _uint))),
        _Schema(
            Result,
            (
                _Field("id", _id),
                _Field("seq", _uint),
                _Field("ok", _bool),
                _Field("data", _optional(_object), omit_if_none=True),
                _Field("error", _optional(_error_info), omit_if_none=True),
            ),
            check=_check_result,
        ),
        _Schema(Record, (_Field("id", _id), _Field("seq", _uint), _Field("record", _record))),
        _Schema(Ack, (_Field("seq", _uint),)),
        _Schema(Cancel, (_Field("id", _id),)),
        _Schema(ErrorMessage, (_Field("code", _id), _Field("message", _str))),
    )
}


# --------------------------------------------------------------------------- frames


_NOT_FINITE: Final = object()
"""Stands in, while decoding, for NaN, Infinity and numbers too large for a float."""


def _holds(value: object, target: object) -> bool:
    """Whether ``target`` is ``value`` or sits anywhere inside it (without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is target:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _not_finite(obj: object, literal: str) -> BadMessage:
    """The error for a frame that holds ``literal`` (NaN, Infinity, 1e999), naming its field."""
    problem = f"holds {_clip(literal)}, which is not a finite JSON number"
    if isinstance(obj, dict):
        type_name = obj.get("type")
        of = f' of "{type_name}"' if isinstance(type_name, str) and _encodable(type_name) else ""
        for name, value in obj.items():
            if _holds(value, _NOT_FINITE):
                return _bad(f"field {_describe(name)}{of} {problem}")
    return _bad(f"frame {problem}")


def _decode(frame: str | bytes) -> str:
    """The frame as text, once it is known to be at most MAX_FRAME bytes of UTF-8."""
    if isinstance(frame, str):
        # A character is at most 4 bytes of UTF-8: only long frames need measuring.
        if len(frame) > MAX_FRAME // 4 and len(frame.encode("utf-8", "surrogatepass")) > MAX_FRAME:
            raise _bad(f"frame is larger than {MAX_FRAME} bytes")
        return frame
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise _bad(f"frame must be text, got {type(frame).__name__}")
    if len(frame) > MAX_FRAME:
        raise _bad(f"frame is larger than {MAX_FRAME} bytes")
    try:
        return bytes(frame).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"frame is not valid UTF-8 (byte {exc.start})") from None


def _load(text: str) -> object:
    non_finite: list[str] = []

    def reject(literal: str) -> object:
        non_finite.append(literal)
        return _NOT_FINITE

    def parse_float(literal: str) -> object:
        value = float(literal)
        return value if math.isfinite(value) else reject(literal)

    try:
        with deep_parse():
            obj = json.loads(text, parse_constant=reject, parse_float=parse_float)
    except json.JSONDecodeError as exc:
        raise _bad(f"frame is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise _bad("frame is nested too deeply") from None
    except ValueError:  # e.g. an integer with more digits than Python converts
        raise _bad("frame is not JSON (a number is too long)") from None
    if non_finite:
        raise _not_finite(obj, non_finite[0])
    return obj


def parse(frame: str | bytes) -> Message:
    """Decode one frame into its message.

    Raises ``UnknownType`` for a well-formed frame of a type this module does not know, and
    ``BadMessage`` for anything else that is wrong; never any other exception.
    """
    obj = _load(_decode(frame))
    if not isinstance(obj, dict):
        raise _bad(f"frame must be a JSON object, got {_describe(obj)}")
    type_name = obj.get("type")
    if type_name is None and "type" not in obj:
        raise _bad('field "type" is missing')
    if not isinstance(type_name, str):
        raise _bad(f'field "type" must be a string, got {_describe(type_name)}')
    schema = _SCHEMAS.get(type_name)
    if schema is None:
        raise UnknownType(
            f'{UnknownType.code}: field "type" is {_describe(type_name)}, '
            f"which is not a message type of protocol version {PROTOCOL_VERSION}"
        )
    values = {f.name: f.read(obj, f.name, type_name) for f in schema.fields}
    if schema.check is not None:
        schema.check(values)
    return schema.cls(**values)


def _wire_value(value: object) -> object:
    if isinstance(value, ErrorInfo):
        return {"code": value.code, "message": value.message}
    return value


def serialize(message: Message) -> str:
    """The JSON text frame for ``message``: ``type`` first, then its fields in protocol order.

    Raises ``ValueError`` or ``TypeError`` if ``params`` / ``data`` hold something JSON
    cannot carry (NaN, infinities, non-JSON Python objects).
    """
    schema = _SCHEMAS[message.TYPE]
    payload: dict[str, object] = {"type": message.TYPE}
    for f in schema.fields:
        value = getattr(message, f.name)
        if value is None and f.omit_if_none:
            continue
        payload[f.name] = _wire_value(value)
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def error_reply(exc: ProtocolError) -> ErrorMessage:
    """The ``error`` frame that answers the bad frame which raised ``exc``."""
    text = str(exc)
    prefix = f"{exc.code}: "
    return ErrorMessage(code=exc.code, message=text.removeprefix(prefix) or exc.code)
