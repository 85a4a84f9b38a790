"""The result journal, in the broker's Redis: admission, the operations held, results and records until acked.

Every change is one Lua script, so each is atomic however many agents and workers share the
Redis. Keys, under ``<ns>:journal:``:

``seq``       STRING  the last seq handed out; grows by one per result or record, survives restarts
``held``      HASH    operation id -> ``{"name", "params", "admitted"}``: queued or running (quota, dedupe)
``running``   HASH    operation id -> the attempt running it: ``<worker (Dramatiq broker id)>/<nonce>``
``lease``     ZSET    operation id scored by when its attempt's lease ends (ms, Redis ``TIME``)
``cancel``    SET     ids of running operations asked to cancel
``results``   HASH    operation id -> ``{"ok": true, "data": …}`` or ``{"ok": false, "error": {…}}``
``unacked``   ZSET    operation id scored by its seq: the id -> seq map, and the results in seq order
``records``   ZSET    ``<seq>\\n{"id": …, "record": {…}}`` scored by its seq: the records not yet acked
``recorded:<id>`` SET the record keys an operation has recorded while it is held (dedupe of a retried body)
``events``    STREAM  ``kind=progress id done total``, ``kind=result id seq`` and ``kind=record seq``,
                      capped (best effort)
``done``      ZSET    operation id scored by its seq, once its result is acked: the last DONE_KEPT ids
``epoch``     STRING  when the agent first opened this journal: without it, an agent that has sent
                      results before knows its journal (and seq count) was lost

An operation's life: :meth:`Journal.admit_many` puts it in ``held`` and enqueues its message in
the same step, for a batch of operations that arrived together (so no agent is ever killed between
the two, and a burst costs one round trip), or puts the message straight among the messages a worker
of this process has fetched when that worker has a thread free and nothing waits in the queue (it is
then handed to that worker in memory, with no fetch, and runs as if started); :meth:`Journal.start` marks it
running under a lease (or says to skip it: it already has a result, or it was cancelled, or another
attempt holds a lease that has not ended); the worker running it renews the lease (:meth:`Journal.renew`)
until :meth:`Journal.finish` gives it the next seq, stores its result and releases it, all at once,
and only the first time for an id: a second outcome for an id that already has a result, or that is no longer held, is
dropped. :meth:`Journal.acknowledge` forgets every result up to a seq but keeps the id in ``done``,
so that an id the hub sends again after the ack is not admitted (and run) a second time. An
operation cancelled before it has a result ends ``cancelled``, whatever its body returns.

While it is held, an operation may add records (:meth:`Journal.record`, a batch per call): each
gets the next seq, so that every record comes before its operation's result. A record given a key
is added once per operation whatever the attempts: a body retried after a crash that records the
same key again gets nothing new. Records of an operation that has its result, or is no longer held,
are dropped. :meth:`Journal.acknowledge` forgets records as it does results, by seq.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis

from ksocket.protocol import ErrorCode, ErrorInfo, JSONObject, Record, Result, Sequenced

EVENTS_MAXLEN: Final = 1000
DONE_KEPT: Final = 100_000
"""Acked operation ids remembered (newest first); an older id sent again would run again."""


def encode_success(data: JSONObject) -> str:
    return json.dumps({"ok": True, "data": data}, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_failure(code: ErrorCode, message: str) -> str:
    error = {"code": code, "message": message}
    return json.dumps({"ok": False, "error": error}, separators=(",", ":"), ensure_ascii=False)


_CANCELLED_OUTCOME: Final = encode_failure(ErrorCode.CANCELLED, "cancelled")


KEY_NAMES: Final = ("seq", "held", "running", "cancel", "results", "unacked", "events", "done", "lease", "records")
"""The journal's keys, ``<ns>:journal:<name>``; every script gets them all, as ``<name>_key`` locals."""


def _lua_string(text: str) -> str:
    """A Lua long string holding ``text`` as it is (JSON needs no escaping there)."""
    level = "="
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


# Each script starts by naming its keys and the journal's constants; its own ARGV it names in its first line.
_NAMES: Final = (
    "\n".join(f"local {name}_key = KEYS[{position}]" for position, name in enumerate(KEY_NAMES, 1))
    + f"""
local EVENTS_MAXLEN = {EVENTS_MAXLEN}
local CANCELLED = {_lua_string(_CANCELLED_OUTCOME)}
local function recorded_key(id)
  return string.sub(seq_key, 1, -4) .. 'recorded:' .. id
end
"""
)

# Leases are on the Redis server's clock, the one clock every worker shares.
_LEASE: Final = """
local function now_ms()
  local time = redis.call('time')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function leased_to_another(id, attempt)
  local holder = redis.call('hget', running_key, id)
  return holder and holder ~= attempt and (tonumber(redis.call('zscore', lease_key, id)) or 0) > now_ms()
end
local function release(id)
  redis.call('hdel', running_key, id)
  redis.call('zrem', lease_key, id)
end
"""

_FINISH: Final = (
    _LEASE
    + """
local function finish(id, outcome)
  if redis.call('hexists', results_key, id) == 1 then
    return {0, tonumber(redis.call('zscore', unacked_key, id)) or 0}
  end
  if redis.call('hexists', held_key, id) == 0 then
    return {0, 0}
  end
  if redis.call('sismember', cancel_key, id) == 1 then
    outcome = CANCELLED
  end
  local seq = redis.call('incr', seq_key)
  redis.call('hset', results_key, id, outcome)
  redis.call('zadd', unacked_key, seq, id)
  redis.call('hdel', held_key, id)
  release(id)
  redis.call('del', recorded_key(id))
  redis.call('srem', cancel_key, id)
  redis.call('xadd', events_key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'kind', 'result', 'id', id, 'seq', seq)
  return {1, seq, outcome}
end
"""
)

_SCRIPTS: Final = {
    "admit": _LEASE
    + """
-- ARGV: the quota, the slots of the worker to dispatch to, that worker's id and lease, then per operation: its
-- id, its document, and its message's list, hash, id, body and the worker's set of fetched messages (an empty
-- list: held without a message; an empty set: never dispatched)
local limit, slots, worker, lease_ms, answers = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), {}
for i = 5, #ARGV, 7 do
  local id = ARGV[i]
  local outcome = redis.call('hget', results_key, id)
  if outcome then
    table.insert(answers, {'done', outcome, redis.call('zscore', unacked_key, id)})
  elseif redis.call('zscore', done_key, id) then
    table.insert(answers, {'acked'})
  elseif redis.call('hexists', held_key, id) == 1 then
    table.insert(answers, {'held'})
  elseif redis.call('hlen', held_key) >= limit then
    table.insert(answers, {'quota'})
  else
    redis.call('hset', held_key, id, ARGV[i + 1])
    local answer = 'admitted'
    if ARGV[i + 2] ~= '' then
      redis.call('hset', ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
      if slots > 0 and ARGV[i + 6] ~= '' and redis.call('llen', ARGV[i + 2]) == 0 then
        redis.call('sadd', ARGV[i + 6], ARGV[i + 4])  -- as the worker's fetch would: it holds the message now
        redis.call('hset', running_key, id, worker .. '/' .. ARGV[i + 4])  -- and as start would: it runs it now
        redis.call('zadd', lease_key, now_ms() + lease_ms, id)
        slots = slots - 1
        answer = 'dispatched'
      else
        redis.call('rpush', ARGV[i + 2], ARGV[i + 4])
      end
    end
    table.insert(answers, {answer})
  end
end
return answers
""",
    "start": _FINISH
    + """
local id, attempt, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('hexists', results_key, id) == 1 then
  return 'done'
end
if redis.call('hexists', held_key, id) == 0 then
  return 'gone'
end
if leased_to_another(id, attempt) then
  return 'busy'
end
if redis.call('sismember', cancel_key, id) == 1 then
  finish(id, CANCELLED)
  return 'cancelled'
end
redis.call('hset', running_key, id, attempt)
redis.call('zadd', lease_key, now_ms() + lease_ms, id)
return 'run'
""",
    "finish": _FINISH
    + """
-- ARGV: the id, the outcome, then the delivery to ack with it: its set of fetched ids, its hash, its id
local answer = finish(ARGV[1], ARGV[2])
if ARGV[3] ~= '' and redis.call('srem', ARGV[3], ARGV[5]) == 1 then
  redis.call('hdel', ARGV[4], ARGV[5])
end
return answer
""",
    "requeued": _FINISH
    + """
local id, attempt = ARGV[1], ARGV[2]
if leased_to_another(id, attempt) then
  return 'running'
end
if redis.call('sismember', cancel_key, id) == 1 then
  finish(id, CANCELLED)
  return 'cancelled'
end
release(id)
return 'queued'
""",
    "cancel": _FINISH
    + """
local id = ARGV[1]
if redis.call('hexists', results_key, id) == 1 then
  return 'done'
end
if redis.call('hexists', held_key, id) == 0 then
  return 'unknown'
end
if redis.call('hexists', running_key, id) == 1 then
  redis.call('sadd', cancel_key, id)
  return 'signalled'
end
finish(id, CANCELLED)
return 'cancelled'
""",
    "renew": _LEASE
    + """
-- ARGV: the lease, then (id, attempt) pairs
local lease_ms, renewed = tonumber(ARGV[1]), 0
for i = 2, #ARGV, 2 do
  local id, attempt = ARGV[i], ARGV[i + 1]
  if redis.call('hget', running_key, id) == attempt then
    redis.call('zadd', lease_key, now_ms() + lease_ms, id)
    renewed = renewed + 1
  end
end
return renewed
""",
    "record": """
-- ARGV: the operation id, then (key, document) pairs; an empty key is no key
local id = ARGV[1]
if redis.call('hexists', results_key, id) == 1 or redis.call('hexists', held_key, id) == 0 then
  return -1
end
local added, seq = 0, 0
for i = 2, #ARGV, 2 do
  if ARGV[i] == '' or redis.call('sadd', recorded_key(id), ARGV[i]) == 1 then
    seq = redis.call('incr', seq_key)
    redis.call('zadd', records_key, seq, seq .. '\\n' .. ARGV[i + 1])
    added = added + 1
  end
end
if added > 0 then
  redis.call('xadd', events_key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'kind', 'record', 'seq', seq)
end
return added
""",
    "acknowledge": """
local upto, kept = ARGV[1], tonumber(ARGV[2])
redis.call('zremrangebyscore', records_key, '-inf', upto)
local ids = redis.call('zrangebyscore', unacked_key, '-inf', upto)
for _, id in ipairs(ids) do
  redis.call('hdel', results_key, id)
  redis.call('zadd', done_key, redis.call('zscore', unacked_key, id), id)
end
redis.call('zremrangebyscore', unacked_key, '-inf', upto)
redis.call('zremrangebyrank', done_key, 0, -kept - 1)
return #ids
""",
    "outbox": """
local after, limit = ARGV[1], tonumber(ARGV[2])
local found = redis.call('zrangebyscore', unacked_key, after, '+inf', 'WITHSCORES', 'LIMIT', 0, limit)
local results = {}
for i = 1, #found, 2 do
  table.insert(results, found[i])
  table.insert(results, found[i + 1])
  table.insert(results, redis.call('hget', results_key, found[i]) or '')
end
return {results, redis.call('zrangebyscore', records_key, after, '+inf', 'LIMIT', 0, limit)}
""",
}

Admission = Literal["admitted", "dispatched", "held", "acked", "quota"]
StartState = Literal["run", "done", "gone", "cancelled", "busy"]
RequeueState = Literal["queued", "cancelled", "running"]
CancelState = Literal["cancelled", "signalled", "done", "unknown"]


@dataclass(frozen=True)
class QueuedMessage:
    """A message to enqueue as the queue's broker does: ``data`` set under ``id`` in the hash ``messages``, and
    ``id`` pushed on the list ``queue`` (:func:`tasks.compat.queued_message` builds Dramatiq's). With a set
    ``fetched`` (a worker's fetched messages of that queue), an admission may put ``id`` there instead, as that
    worker's fetch would, to hand the message to it in memory (:meth:`Journal.admit_many`)."""

    queue: str
    messages: str
    id: str
    data: bytes
    fetched: str = ""


@dataclass(frozen=True)
class Delivery:
    """A message a worker fetched and runs: ``id`` in the worker's set ``fetched`` and in the hash ``messages``
    until acked, which removes it from both (:func:`tasks.compat.delivery` names Dramatiq's)."""

    fetched: str
    messages: str
    id: str


@dataclass(frozen=True)
class Dispatch:
    """How many of an admission's messages may go straight to the worker ``worker`` (its Dramatiq broker id),
    and the lease of the attempts that start them."""

    slots: int
    worker: str
    lease: float


def dispatched_attempt(worker: str, message: QueuedMessage) -> str:
    """The attempt under which an admission that dispatched ``message`` to ``worker`` marked its operation running."""
    return f"{worker}/{message.id}"


@dataclass(frozen=True)
class Admit:
    """An operation to admit, and the message that runs it (None: held without one, for tests and tools)."""

    id: str
    name: str
    params: JSONObject
    message: QueuedMessage | None = None


@dataclass(frozen=True)
class Held:
    """An operation held by the pipeline (queued or running), as admitted."""

    id: str
    name: str
    params: JSONObject
    admitted: float
    """Wall-clock time of admission (seconds since the epoch)."""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_result(operation_id: str, seq: int, outcome: str) -> Result:
    """The result an outcome (:func:`encode_success`, :func:`encode_failure`) recorded under ``seq`` stands for."""
    document = json.loads(outcome)
    if document["ok"]:
        return Result.success(id=operation_id, seq=seq, data=document["data"])
    error = document["error"]
    return Result(id=operation_id, seq=seq, ok=False, error=ErrorInfo(code=error["code"], message=error["message"]))


def _admission(operation_id: str, answer: list[Any]) -> Admission | Result:
    state = _text(answer[0])
    if state == "done":
        return decode_result(operation_id, int(float(answer[2])), _text(answer[1]))
    assert state in ("admitted", "dispatched", "held", "acked", "quota"), state
    return state  # type: ignore[return-value]


def encode_record(operation_id: str, record: str) -> str:
    """A record (``record``: its document as JSON) as the journal keeps it."""
    return f'{{"id":{json.dumps(operation_id, ensure_ascii=False)},"record":{record}}}'


def _record(member: bytes | str) -> Record:
    seq, _, encoded = _text(member).partition("\n")
    document = json.loads(encoded)
    return Record(id=document["id"], seq=int(seq), record=document["record"])


class Journal:
    """Admission, operation state and results of one namespace in one Redis (thread-safe, blocking calls)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        prefix = f"{namespace}:journal:"
        self.keys = [prefix + name for name in KEY_NAMES]
        self.seq_key, self.held_key, self.running_key, self.cancel_key, self.results_key = self.keys[:5]
        self.unacked_key, self.events_key, self.done_key, self.lease_key, self.records_key = self.keys[5:]
        self.epoch_key = prefix + "epoch"
        self._scripts = {name: client.register_script(_NAMES + source) for name, source in _SCRIPTS.items()}

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts[name](keys=self.keys, args=list(args))

    def open(self) -> bool:
        """Marks the journal as the agent's; True if it is new: never marked, and no seq handed out."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.epoch_key, str(time.time()), nx=True)
            pipe.exists(self.seq_key)
            marked, used = pipe.execute()
        return bool(marked) and not used

    # --- admission ----------------------------------------------------------------------------

    def admit(self, operation_id: str, name: str, params: JSONObject, limit: int) -> Admission | Result:
        """Holds the operation (without a message) unless it has a result (returned), is held already or acked,
        or the quota is full."""
        return self.admit_many([Admit(operation_id, name, params)], limit)[0]

    def admit_many(
        self, operations: Sequence[Admit], limit: int, dispatch: Dispatch | None = None
    ) -> list[Admission | Result]:
        """Admits each operation in turn as :meth:`admit` does, and enqueues the message of each one held now,
        all in one atomic step (one round trip, one fsync); the answers in the same order. With a ``dispatch``,
        up to its ``slots`` of those messages that name a worker's ``fetched`` set go there rather than on their
        queue, each while its queue is empty (nothing waits ahead of it), and their operations are marked
        running as :meth:`start` would, under the attempt :func:`dispatched_attempt`: "dispatched", for the
        caller to hand to that worker, which runs them without a start of its own."""
        now = time.time()
        dispatch = dispatch or Dispatch(0, "", 0)
        args: list[Any] = [limit, dispatch.slots, dispatch.worker, _ms(dispatch.lease)]
        for op in operations:
            document = json.dumps({"name": op.name, "params": op.params, "admitted": now}, separators=(",", ":"))
            message = op.message or QueuedMessage("", "", "", b"")
            args += [op.id, document, message.queue, message.messages, message.id, message.data, message.fetched]
        return [_admission(op.id, answer) for op, answer in zip(operations, self._run("admit", *args), strict=True)]

    def lookup(self, operation_id: str) -> Result | Literal["held"] | None:
        """The stored result of an id, or "held" while it is queued or running, or None."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hget(self.results_key, operation_id)
            pipe.zscore(self.unacked_key, operation_id)
            pipe.hexists(self.held_key, operation_id)
            outcome, seq, held = pipe.execute()
        if outcome is not None and seq is not None:
            return decode_result(operation_id, int(seq), _text(outcome))
        return "held" if held else None

    def held(self) -> list[Held]:
        """Every operation held (queued or running), oldest admission first."""
        found = []
        for key, value in self.client.hgetall(self.held_key).items():
            document = json.loads(value)
            found.append(Held(_text(key), document["name"], document["params"], float(document["admitted"])))
        return sorted(found, key=lambda held: held.admitted)

    def held_count(self) -> int:
        return int(self.client.hlen(self.held_key))

    def running(self) -> dict[str, str]:
        """Operation id -> the attempt (``worker/nonce``) that started it, for those marked running."""
        return {_text(k): _text(v) for k, v in self.client.hgetall(self.running_key).items()}

    # --- an operation's life ------------------------------------------------------------------

    def start(self, operation_id: str, attempt: str, lease: float) -> StartState:
        """Marks it running by ``attempt`` for ``lease`` seconds; or says why not to run it: "done", "gone"
        (not held), "cancelled", or "busy" (another attempt's lease has not ended: try again later)."""
        state: StartState = _text(self._run("start", operation_id, attempt, _ms(lease)))  # type: ignore[assignment]
        return state

    def renew(self, attempts: dict[str, str], lease: float) -> int:
        """Extends the lease of each operation id still run by its attempt; returns how many."""
        pairs = [value for item in attempts.items() for value in item]
        return int(self._run("renew", _ms(lease), *pairs)) if pairs else 0

    def finish(self, operation_id: str, outcome: str, delivery: Delivery | None = None) -> Result | None:
        """Records the outcome under the next seq and releases the operation; returns the result as recorded (a
        cancel flagged meanwhile makes it ``cancelled``), or None if it was dropped. With a ``delivery``, acks
        that message in the same step."""
        ack = (delivery.fetched, delivery.messages, delivery.id) if delivery is not None else ("", "", "")
        recorded, seq, *outcome = self._run("finish", operation_id, outcome, *ack)
        return decode_result(operation_id, int(seq), _text(outcome[0])) if recorded else None

    def requeued(self, operation_id: str, attempt: str = "") -> RequeueState:
        """The operation waits for another attempt (a retry, a worker that stopped); "cancelled" ends it now;
        "running": an attempt other than ``attempt`` holds a lease that has not ended, and nothing changes."""
        state: RequeueState = _text(self._run("requeued", operation_id, attempt))  # type: ignore[assignment]
        return state

    def cancel(self, operation_id: str) -> CancelState:
        """Ends a queued operation now ("cancelled"), flags a running one ("signalled"), or does nothing."""
        state: CancelState = _text(self._run("cancel", operation_id))  # type: ignore[assignment]
        return state

    def is_cancelled(self, operation_id: str) -> bool:
        return bool(self.client.sismember(self.cancel_key, operation_id))

    def progress(self, operation_id: str, done: int, total: int) -> None:
        self.client.xadd(
            self.events_key,
            {"kind": "progress", "id": operation_id, "done": done, "total": total},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )

    def record(self, operation_id: str, records: list[tuple[str, str]]) -> int | None:
        """Adds ``(key, encoded record)`` pairs (see :func:`encode_record`; key "" for none) under the next
        seqs, in one atomic step; returns how many were new, or None if the operation is not held or has its
        result (they are dropped)."""
        pairs = [value for pair in records for value in pair]
        added = int(self._run("record", operation_id, *pairs))
        return None if added < 0 else added

    # --- results and records ------------------------------------------------------------------

    def last_seq(self) -> int:
        return int(self.client.get(self.seq_key) or 0)

    def outbox(self, after: int = 0, limit: int = 1_000_000) -> list[Sequenced]:
        """Unacked results and records with a seq above ``after``, in seq order, at most ``limit``."""
        flat, members = self._run("outbox", f"({after}", limit)
        found: list[Sequenced] = [
            decode_result(_text(flat[i]), int(float(flat[i + 1])), _text(flat[i + 2]))
            for i in range(0, len(flat), 3)
            if flat[i + 2]
        ]
        found.extend(_record(member) for member in members)
        found.sort(key=lambda item: item.seq)
        return found[:limit]

    def results(self, after: int = 0, limit: int = 1_000_000) -> list[Result]:
        """Unacked results with a seq above ``after``, in seq order, at most ``limit`` (records left out)."""
        return [item for item in self.outbox(after, limit) if isinstance(item, Result)]

    def result(self, operation_id: str) -> Result | None:
        found = self.lookup(operation_id)
        return found if isinstance(found, Result) else None

    def acknowledge(self, seq: int) -> int:
        """Forgets every result and record with a seq up to ``seq`` (results' ids stay in ``done``); returns
        how many results."""
        return int(self._run("acknowledge", seq, DONE_KEPT))

    # --- events -------------------------------------------------------------------------------

    def last_event_id(self) -> str:
        newest: Any = self.client.xrevrange(self.events_key, count=1)
        return _text(newest[0][0]) if newest else "0-0"

    def read_events(self, after: str, block: float) -> list[tuple[str, dict[str, str]]]:
        """Events after the id ``after``, waiting up to ``block`` seconds for the first one."""
        answer: Any = self.client.xread({self.events_key: after}, block=max(1, int(block * 1000)), count=500)
        events = []
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                events.append((_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}))
        return events
