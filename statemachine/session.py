"""One connection's rules, with no I/O: what to send, what to hand the runner, and when the link is lost.

A :class:`Session` lives from ``connected`` until the link is lost. It is fed what happens (a
message from the hub, an admission or an event from the runner, the time passing) together with
``now``, in the protocol's seconds, and answers with the messages to send or a :class:`Lost`. It
holds no socket, task or clock: ``statemachine.link`` reads and writes the frames, sleeps until
:meth:`Session.next_deadline` and calls :meth:`Session.poll`, and moves operations between the
session's inbound queue and the runner, the way websockets' ``Connection`` drives its ``Protocol``.

The rules it keeps:

- heartbeat: ``heartbeat`` n goes out heartbeatInterval after the previous one was acked; the link
  is lost (close 4408) when neither its ack nor any other frame is heard within heartbeatTimeout,
  since a hub whose frames keep coming is alive even while the driver holds its ack unread;
- results and records (protocol version 2) alike: every one leaves in seq order (the hub's ack is
  cumulative, so one sent ahead of a lower unacked one would have the hub ack, and the journal
  forget, what it never got); one not acked within requestTimeout is sent again, requestRetries
  times at most, then the link is lost; an ``ack`` forgets every one up to its seq. On a version 1
  link records are never sent (that hub knows no ``record`` frame): the hub gets the operations'
  results alone, and its ack of a result covers the records below it;
- inbound: operations and cancels wait for the runner in arrival order (a cancel must find its
  operation admitted), at most ``backlog`` of them; while the queue is full the driver reads no
  frame, and TCP slows the hub down.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ksocket import protocol
from ksocket.config import Settings
from ksocket.protocol import (
    Ack,
    Admission,
    Cancel,
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    HeartbeatAck,
    Message,
    Operation,
    Progress,
    ProtocolError,
    Record,
    Result,
    Sequenced,
)

log = logging.getLogger("ksocket.link")

INBOUND_BACKLOG = 1000
"""Operations and cancels read from the hub but not yet handed to the runner."""
ADMISSION_BATCH = 100
"""Operations handed to the runner together, at most: admitted in one step, answered in one burst."""


@dataclass(frozen=True)
class Lost:
    """The link counts as lost: why, and the close code to send (if any)."""

    reason: str
    close_code: int | None = None


@dataclass
class _InFlight:
    result: Sequenced
    sent_at: float
    tries: int = 1


class Session:
    """The per-connection state of the link: heartbeat, results and records in flight, the inbound queue.

    ``version`` is the protocol version of the link (the subprotocol the hub selected).
    """

    def __init__(
        self,
        settings: Settings,
        now: float,
        *,
        backlog: int = INBOUND_BACKLOG,
        version: int = protocol.PROTOCOL_VERSION,
    ) -> None:
        self.settings = settings
        self.backlog = backlog
        self.sends_records = version >= 2
        self._inbound: deque[Operation | Cancel] = deque()
        self._last_heard = now
        self._heartbeat = 0  # the n of the last heartbeat sent
        self._heartbeat_sent_at: float | None = None  # while its ack is awaited
        self._next_heartbeat = now + settings.heartbeat_interval
        # results and records sent and not acked, oldest send first: a re-send moves one to the end
        self._in_flight: dict[int, _InFlight] = {}
        self._last_sent = 0  # the highest seq sent on this connection

    # --- from the hub -------------------------------------------------------------------------

    def receive(self, message: Message, now: float) -> list[Message]:
        """A message from the hub; operations and cancels join the inbound queue (see :attr:`has_room`)."""
        self._last_heard = now
        if isinstance(message, Operation | Cancel):
            self._inbound.append(message)
        elif isinstance(message, HeartbeatAck):
            if message.n == self._heartbeat and self._heartbeat_sent_at is not None:
                self._heartbeat_sent_at = None
                self._next_heartbeat = now + self.settings.heartbeat_interval
        elif isinstance(message, Ack):
            for seq in [s for s in self._in_flight if s <= message.seq]:
                del self._in_flight[seq]
        elif isinstance(message, ErrorMessage):
            log.warning("the hub reports an error: %s: %s", message.code, message.message)
        else:
            return [ErrorMessage(code=ErrorCode.BAD_MESSAGE, message=f"{message.TYPE!r} is not sent to an agent")]
        return []

    def receive_bad(self, error: ProtocolError, now: float) -> list[Message]:
        """A frame that did not parse: the hub is still heard, and told what was wrong."""
        self._last_heard = now
        log.warning("bad frame from the hub: %s", error)
        return [protocol.error_reply(error)]

    @property
    def has_room(self) -> bool:
        """Whether the driver may read another frame: the inbound queue is not full."""
        return len(self._inbound) < self.backlog

    @property
    def has_inbound(self) -> bool:
        return bool(self._inbound)

    def take_inbound(self) -> Operation | Cancel:
        """The oldest operation or cancel, for the runner."""
        return self._inbound.popleft()

    def take_operations(self, limit: int | None = None) -> list[Operation]:
        """The oldest operations, up to ``limit`` and the first cancel, for the runner to admit together (none
        when a cancel is the oldest: :meth:`take_inbound` takes it). By default at most ADMISSION_BATCH and a
        quarter of the backlog: while the runner admits a batch, the driver reads only until the backlog is full
        again, and a heartbeat-ack behind those frames waits for the batch; a small backlog keeps that wait to
        a few operations' admission."""
        if limit is None:
            limit = min(ADMISSION_BATCH, max(1, self.backlog // 4))
        taken: list[Operation] = []
        while self._inbound and len(taken) < limit and isinstance(operation := self._inbound[0], Operation):
            taken.append(operation)
            self._inbound.popleft()
        return taken

    # --- from the runner ----------------------------------------------------------------------

    def send_unacked(self, unacked: Iterable[Sequenced], now: float) -> list[Message]:
        """What a new connection sends first: every result and record not yet acked, in seq order."""
        sent: list[Message] = []
        for item in sorted(unacked, key=lambda item: item.seq):
            sent.extend(self._send_in_order(item, now))
        return sent

    def produced(self, event: Progress | Sequenced, now: float) -> list[Message]:
        """Progress, or a new record or result from the runner's in-order stream."""
        if isinstance(event, Progress):
            return [event]
        if event.seq <= self._last_sent:  # it went out with the unacked
            return []
        return self._send_in_order(event, now)

    def _send_in_order(self, item: Sequenced, now: float) -> list[Message]:
        if isinstance(item, Record) and not self.sends_records:
            self._last_sent = max(self._last_sent, item.seq)  # passed over: a later result may go
            return []
        self._track(item, now)
        return [item]

    def admitted(self, answer: Admission, now: float) -> list[Message]:
        """The runner's answer to an operation: accepted, refused, or the stored result of a done id."""
        if not isinstance(answer, Result):
            return [answer]
        # Sent already on this link: send it again. Above the last seq sent it has not left yet, and
        # the in-order stream sends it after every lower seq; sending it now would have the hub ack
        # lower results it never received.
        if answer.seq > self._last_sent:
            return []
        self._track(answer, now)
        return [answer]

    def _track(self, item: Sequenced, now: float) -> None:
        self._in_flight.pop(item.seq, None)
        self._in_flight[item.seq] = _InFlight(item, now)
        self._last_sent = max(self._last_sent, item.seq)

    # --- time ---------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`poll` next has something to do, if nothing is heard before."""
        deadlines = [self._heartbeat_deadline()]
        oldest = next(iter(self._in_flight.values()), None)
        if oldest is not None:
            deadlines.append(oldest.sent_at + self.settings.request_timeout)
        return min(deadlines)

    def poll(self, now: float) -> list[Message] | Lost:
        """A heartbeat when one is due, results to send again, or the link lost."""
        lost = self._heartbeat_lost(now)
        if lost is not None:
            return lost
        due: list[Message] = []
        if self._heartbeat_sent_at is None and now >= self._next_heartbeat:
            self._heartbeat += 1
            self._heartbeat_sent_at = now
            due.append(Heartbeat(n=self._heartbeat))
        resent = self._resend(now)
        if isinstance(resent, Lost):
            return resent
        return due + resent

    def _heartbeat_deadline(self) -> float:
        if self._heartbeat_sent_at is None:
            return self._next_heartbeat
        return max(self._heartbeat_sent_at, self._last_heard) + self.settings.heartbeat_timeout

    def _heartbeat_lost(self, now: float) -> Lost | None:
        if self._heartbeat_sent_at is None or now < self._heartbeat_deadline():
            return None
        timeout = self.settings.heartbeat_timeout
        return Lost(
            f"heartbeat lost: no heartbeat-ack {self._heartbeat} within {timeout:g}s", protocol.CLOSE_HEARTBEAT_LOST
        )

    def _resend(self, now: float) -> list[Message] | Lost:
        """Everything unacked for requestTimeout goes again, in seq order; one past requestRetries loses the link."""
        timeout, retries = self.settings.request_timeout, self.settings.request_retries
        overdue = []
        for flight in self._in_flight.values():  # oldest send first: stop at the first one not overdue
            if now < flight.sent_at + timeout:
                break
            overdue.append(flight)
        overdue.sort(key=lambda flight: flight.result.seq)
        for flight in overdue:
            if flight.tries > retries:
                return Lost(
                    f"{flight.result.TYPE} {flight.result.seq} not acked after {retries} retries",
                    protocol.CLOSE_HEARTBEAT_LOST,
                )
        for flight in overdue:
            del self._in_flight[flight.result.seq]
            self._in_flight[flight.result.seq] = _InFlight(flight.result, now, flight.tries + 1)
        return [flight.result for flight in overdue]
