"""Fair ingestion (contract "lanes"): what the Redis take hands out when one key floods, how a
batch goes back to its lane, the ceiling a publisher meets, and RabbitMQ's batches taken in turn."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import amqp
import pytest
import redis

from tasks.ingestion.amqp_transport import AmqpBatches, lane_declarations
from tasks.ingestion.redis_transport import QUANTUM, UNACKED, RedisBatches, held
from tests.common.databases import TEST_DATABASE_PREFIX, flushed_redis
from tests.common.workers import rabbitmq_vhost, wait_for
from userpath_client.contract import (
    EVENTS_QUEUE,
    MAX_LANE_MESSAGES,
    lane_list,
    lane_of,
    lane_queues,
    overflow_queue,
    ready_lanes,
    shard_queue,
)
from userpath_client.errors import BacklogFull
from userpath_client.publisher import LaneRates, Publisher
from userpath_client.wire import Encoder
from userpath_worker.keys import tokens
from userpath_worker.keys.tokens import Environment

REDIS_URL = "redis://127.0.0.1:6379/12"
FLOODER, VICTIM = tokens.generate(Environment.LIVE), tokens.generate(Environment.LIVE)


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    yield from flushed_redis(REDIS_URL)


def publish(key: str, count: int, label: str) -> None:
    publisher, encoder = Publisher(REDIS_URL, 5), Encoder(key)
    try:
        for number in range(count):
            body, message = encoder.message(EVENTS_QUEUE, [b'{"n":"%s %d"}' % (label.encode(), number)])
            publisher.publish(EVENTS_QUEUE, body, message, encoder.lane)
    finally:
        publisher.close()


def taken_lanes(broker: redis.Redis, tags: list[bytes]) -> list[str]:
    return [tag.decode().split("|", 2)[2] for tag in tags]


def test_a_quiet_keys_message_is_in_the_next_batch_whatever_a_flooding_key_queued_before_it(
    broker: redis.Redis,
) -> None:
    publish(FLOODER, 300, "flood")
    batches = RedisBatches(broker, [EVENTS_QUEUE])
    assert taken_lanes(broker, batches.take(EVENTS_QUEUE, 100, 10**7).tags) == [lane_of(FLOODER)] * 100
    publish(VICTIM, 1, "victim")
    lanes = taken_lanes(broker, batches.take(EVENTS_QUEUE, 100, 10**7).tags)
    # The victim's lane joined at the front of the line: taken first, then the flood, ten at a time.
    assert lanes[0] == lane_of(VICTIM) and lanes[1:] == [lane_of(FLOODER)] * 99
    assert broker.zrange(ready_lanes(EVENTS_QUEUE), 0, -1) == [lane_of(FLOODER).encode()]  # the victim's left


def test_lanes_are_taken_in_turn_a_quantum_each_and_the_queues_own_list_has_a_turn_between(
    broker: redis.Redis,
) -> None:
    publish(FLOODER, 50, "flood")
    broker.rpush(EVENTS_QUEUE, *[b"legacy %d" % n for n in range(50)])  # a producer that knows no lanes
    batches = RedisBatches(broker, [EVENTS_QUEUE])
    lanes = taken_lanes(broker, batches.take(EVENTS_QUEUE, 40, 10**7).tags)
    assert lanes == ([""] * QUANTUM + [lane_of(FLOODER)] * QUANTUM) * 2
    publish(VICTIM, 3, "victim")  # arrives while both have a backlog: taken before either goes on
    lanes = taken_lanes(broker, batches.take(EVENTS_QUEUE, 13, 10**7).tags)
    assert lanes == [""] * QUANTUM + [lane_of(VICTIM)] * 3


def test_lanes_of_unequal_backlogs_keep_their_turns_as_some_empty_and_the_last_one_gives_the_rest(
    broker: redis.Redis,
) -> None:
    keys = sorted((tokens.generate(Environment.LIVE) for _ in range(3)), key=lane_of)  # the line's first order
    for key, count in zip(keys, (25, 5, 35), strict=True):
        publish(key, count, "n")
    first, short, last = (lane_of(key) for key in keys)
    batches = RedisBatches(broker, [EVENTS_QUEUE], lanes_only=True)
    lanes = taken_lanes(broker, batches.take(EVENTS_QUEUE, 65, 10**7).tags)
    # In turn while two or more wait; once alone, a lane gives what the batch still wants at once.
    expected = [first] * 10 + [short] * 5 + [last] * 10 + [first] * 10 + [last] * 10 + [first] * 5 + [last] * 15
    assert lanes == expected
    assert batches.take(EVENTS_QUEUE, 65, 10**7).tags == [] and broker.zcard(ready_lanes(EVENTS_QUEUE)) == 0


def test_a_slow_lane_gives_one_message_a_turn(broker: redis.Redis) -> None:
    publish(FLOODER, 50, "flood")
    publish(VICTIM, 50, "victim")
    batches = RedisBatches(broker, [EVENTS_QUEUE], lanes_only=True)
    batches.slow_lanes = frozenset({lane_of(FLOODER)})
    lanes = taken_lanes(broker, batches.take(EVENTS_QUEUE, 33, 10**7).tags)
    assert lanes.count(lane_of(FLOODER)) == 3 and lanes.count(lane_of(VICTIM)) == 30


def test_a_batch_given_back_or_restored_returns_to_its_lane_in_order_and_the_lane_is_listed_again(
    broker: redis.Redis,
) -> None:
    publish(VICTIM, 5, "victim")
    batches = RedisBatches(broker, [EVENTS_QUEUE])
    first = batches.take(EVENTS_QUEUE, 2, 10**7)
    assert [queue for queue, _ in held(broker, first.tags)] == [EVENTS_QUEUE] * 2
    given_back = [message for _, message in held(broker, first.tags)]
    batches.give_back(first.tags)
    rest = batches.take(EVENTS_QUEUE, 10, 10**7)
    names = [message for _, message in held(broker, rest.tags)]
    assert len(names) == 5 and names[:2] == given_back  # taken first again, in their order
    assert broker.hlen(UNACKED) == 5
    assert batches.restore_older_than(-1) == 5  # as if their worker had died
    assert broker.llen(lane_list(EVENTS_QUEUE, lane_of(VICTIM))) == 5
    assert broker.zrange(ready_lanes(EVENTS_QUEUE), 0, -1) == [lane_of(VICTIM).encode()]
    again = batches.take(EVENTS_QUEUE, 10, 10**7)
    assert sorted(message for _, message in held(broker, again.tags)) == sorted(names)


def test_a_tag_of_an_earlier_worker_is_restored_to_its_queue(broker: redis.Redis) -> None:
    broker.hset(UNACKED, "7|userpath.events", b"held by an earlier version")
    broker.zadd("userpath.unacked_index", {"7|userpath.events": 0})
    assert RedisBatches(broker, [EVENTS_QUEUE]).restore_older_than(-1) == 1
    assert broker.lrange(EVENTS_QUEUE, 0, -1) == [b"held by an earlier version"]


def test_lanes_a_hostile_producer_lists_cannot_stall_the_take(broker: redis.Redis) -> None:
    broker.zadd(ready_lanes(EVENTS_QUEUE), {"no such lane": 0, "a|b": 1, "": 2})
    publish(VICTIM, 1, "victim")
    batches = RedisBatches(broker, [EVENTS_QUEUE])
    taken = batches.take(EVENTS_QUEUE, 10, 10**7)
    assert taken_lanes(broker, taken.tags) == [lane_of(VICTIM)]
    assert broker.zcard(ready_lanes(EVENTS_QUEUE)) == 0
    batches.give_back(taken.tags)
    assert broker.llen(lane_list(EVENTS_QUEUE, lane_of(VICTIM))) == 1


def test_a_full_lane_refuses_the_publish_and_keeps_nothing(broker: redis.Redis) -> None:
    lane = lane_list(EVENTS_QUEUE, lane_of(FLOODER))
    pipeline = broker.pipeline(transaction=False)
    for _ in range(0, MAX_LANE_MESSAGES, 5000):
        pipeline.lpush(lane, *[b"x"] * 5000)
    pipeline.execute()
    with pytest.raises(BacklogFull, match="the worker is behind"):
        publish(FLOODER, 1, "one too many")
    assert broker.llen(lane) == MAX_LANE_MESSAGES
    publish(VICTIM, 1, "another key")  # its own lane is not full
    assert broker.llen(lane_list(EVENTS_QUEUE, lane_of(VICTIM))) == 1


def test_a_lane_overflows_past_its_burst_and_rate() -> None:
    rates = LaneRates(rate=100, burst=1000)
    assert not rates.overflows("a", 1000)
    assert rates.overflows("a", 100)  # the burst is spent; a tenth of a second has not passed
    assert not rates.overflows("b", 10)  # another lane has its own bucket


@pytest.fixture
def rabbitmq() -> Iterator[amqp.Connection]:
    url = rabbitmq_vhost(f"{TEST_DATABASE_PREFIX}_lanes")
    connection = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest", virtual_host=url.rsplit("/", 1)[1])
    connection.connect()
    channel = connection.channel()
    for lane in lane_declarations([EVENTS_QUEUE], "classic"):
        lane.declare(channel)
        channel.queue_purge(lane.name)
    yield connection
    connection.close()


def test_rabbitmq_batches_take_each_queue_in_turn(rabbitmq: amqp.Connection) -> None:
    queues = list(lane_queues(EVENTS_QUEUE))
    batches = AmqpBatches(
        rabbitmq, queues, 100, 1, on_full=lambda: None, declare=lane_declarations([EVENTS_QUEUE], "classic")
    )
    publisher = rabbitmq.channel()
    for number in range(100):
        publisher.basic_publish(amqp.Message(b"flood %d" % number), EVENTS_QUEUE, overflow_queue(EVENTS_QUEUE))
    victim = shard_queue(EVENTS_QUEUE, lane_of(VICTIM))
    publisher.basic_publish(amqp.Message(b"victim"), EVENTS_QUEUE, victim)

    def arrived() -> bool:
        with contextlib.suppress(TimeoutError):
            for _ in range(101):  # drain_events hands over one delivery a call
                rabbitmq.drain_events(timeout=0.2)
        return batches.gathered_count == 101

    wait_for(arrived, 10, "the deliveries")
    taken = batches.next_batch(20, 10**7)
    assert taken is not None
    bodies = [item[1] for item in taken.items]
    assert b"victim" in bodies[: QUANTUM + 1] and len(bodies) == 20
    assert {item[0] for item in taken.items} == {EVENTS_QUEUE}  # the source is the queue's, not the lane's
    batches.close()


def test_rabbitmq_confirms_of_one_publish_are_awaited_together_and_settle_each_message_by_its_own(
    rabbitmq: amqp.Connection,
) -> None:
    """One ``publish_many`` waits for RabbitMQ's confirms once, not once a message: a nack (a full
    shard) refuses only its own message, and the delivery tags stay right for the next publish."""
    flooded = shard_queue(EVENTS_QUEUE, lane_of(FLOODER))
    victim = next(  # keys share 8 shards: one outside the flooder's
        key
        for key in (tokens.generate(Environment.LIVE) for _ in range(100))
        if shard_queue(EVENTS_QUEUE, lane_of(key)) != flooded
    )
    victims_shard = shard_queue(EVENTS_QUEUE, lane_of(victim))
    channel = rabbitmq.channel()
    for _ in range(MAX_LANE_MESSAGES):
        channel.basic_publish(amqp.Message(b"waiting"), EVENTS_QUEUE, flooded)
    wait_for(lambda: channel.queue_declare(flooded, passive=True).message_count == MAX_LANE_MESSAGES, 30, "the fill")

    url = rabbitmq_vhost(f"{TEST_DATABASE_PREFIX}_lanes")
    publisher, to_flooder, to_victim = Publisher(url, 5), Encoder(FLOODER), Encoder(victim)

    def outgoing(encoder: Encoder, label: bytes) -> tuple[bytes, dict, str, int, bool]:
        body, message = encoder.message(EVENTS_QUEUE, [b'{"n":"%s"}' % label])
        return body, message, encoder.lane, 1, False

    try:
        outcomes = publisher.publish_many(
            EVENTS_QUEUE, [outgoing(to_victim, b"1"), outgoing(to_flooder, b"2"), outgoing(to_victim, b"3")]
        )
        assert [type(outcome).__name__ for outcome in outcomes] == ["NoneType", "BacklogFull", "NoneType"]
        assert publisher.publish_many(EVENTS_QUEUE, [outgoing(to_victim, b"4")]) == [None]
        with pytest.raises(BacklogFull, match="the worker is behind"):
            publisher.publish(EVENTS_QUEUE, *outgoing(to_flooder, b"5")[:3])
    finally:
        publisher.close()
    assert channel.queue_declare(victims_shard, passive=True).message_count == 3
    assert channel.queue_declare(flooded, passive=True).message_count == MAX_LANE_MESSAGES
