"""The one rule for putting a contract message on the broker, shared by the client's sender thread
and the worker's HTTP edge (``userpath_worker.edge``).

A message goes into its key's lane (contract, "lanes"). On Redis one script checks the lane's
length against the ceiling, pushes the message in kombu's Redis form onto the lane's list and lists
the lane in its queue's ready set, atomically. On RabbitMQ it goes to the queue's own exchange with
the lane's shard queue (or, past the lane's rate, the overflow queue) as routing key, with
publisher confirms (awaited together for the messages of one ``publish_many``), once a passive
declare has shown that the worker made that queue; a shard at its ``x-max-length`` nacks it.
Nothing is ever declared, so a producer user that may only publish is enough. ``publish`` returns
only once the broker has the message and raises on any failure (``BacklogFull`` when the lane is
full); the caller decides whether to retry.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import redis
from amqp.channel import Channel
from kombu import Connection, Producer
from redis.exceptions import NoScriptError

from userpath_client.contract import (
    DEFAULT_EXCHANGE,
    LANE_BURST_EVENTS,
    LANE_RATE_EVENTS,
    MAX_LANE_MESSAGES,
    exchange_of,
    lane_list,
    overflow_queue,
    ready_lanes,
    shard_queue,
)
from userpath_client.errors import BacklogFull
from userpath_client.wire import redis_document, transport_options

# KEYS: the lane's list, the queue's ready set. ARGV: the message, the ceiling, the lane.
# A lane that joins the ready set joins at its front (score 0): a quiet key's message is taken next.
_PUSH = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[3])
return 1
"""
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class LaneRates:
    """RabbitMQ: a token bucket per lane, shared by a process's publishers, that tells which lanes
    send past ``LANE_RATE_EVENTS`` (after a burst) and go to the overflow queue."""

    MAX_LANES = 100_000  # forgotten all at once past this: a full bucket each, which is generous

    def __init__(self, rate: float = LANE_RATE_EVENTS, burst: float = LANE_BURST_EVENTS) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # lane -> (tokens, when)
        self._lock = threading.Lock()

    def overflows(self, lane: str, events: int) -> bool:
        """Take ``events`` tokens from ``lane``'s bucket; True when it had too few."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= self.MAX_LANES:
                self._buckets.clear()
            tokens, then = self._buckets.get(lane, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < events:
                self._buckets[lane] = (tokens, now)
                return True
            self._buckets[lane] = (tokens - events, now)
            return False


LANE_RATES = LaneRates()

# What ``Publisher.publish`` takes besides the queue: body, message, lane, events, overflow.
Outgoing = tuple[bytes, dict[str, Any], str, int, bool]


def _redis_outcome(result: Any, queue: str) -> Exception | None:
    """The push script's answer as ``publish_many`` reports it: None once the lane has the message."""
    if isinstance(result, Exception):
        return result
    if result:
        return None
    return BacklogFull(
        f"the broker holds {MAX_LANE_MESSAGES} messages of this key on {queue} already; the worker is "
        "behind: send again later"
    )


class Confirms:
    """RabbitMQ's publisher confirms on one channel, awaited for a batch of messages at once: a
    publish of many envelopes waits one round trip, not one each. Delivery tags count the
    channel's publishes from 1 (AMQP's confirm mode); an ack or nack with ``multiple`` settles
    every tag of the batch up to its own. A batch is awaited whole before the next begins (a
    failure closes the connection), so no earlier tag is ever outstanding."""

    def __init__(self, channel: Channel, timeout: float) -> None:
        channel.confirm_select()
        self._channel, self._timeout = channel, timeout
        self._published = 0
        self._first = 1  # of the batch
        self._acked: dict[int, bool] = {}  # tag of the batch -> taken (False: nacked)
        channel.events["basic_ack"].add(lambda tag, multiple: self._settle(tag, multiple, True))
        channel.events["basic_nack"].add(lambda tag, multiple: self._settle(tag, multiple, False))

    def begin(self) -> None:
        self._acked.clear()
        self._first = self._published + 1

    def published(self) -> None:
        self._published += 1

    def wait(self) -> list[bool]:
        """Whether RabbitMQ took each message of the batch, in order, once it has said it of all;
        ``socket.timeout`` or the connection's error when it does not in time."""
        while len(self._acked) < self._published + 1 - self._first:
            self._channel.connection.drain_events(timeout=self._timeout)
        return [self._acked[tag] for tag in range(self._first, self._published + 1)]

    def _settle(self, tag: int, multiple: bool, acked: bool) -> None:
        for settled in range(self._first if multiple else tag, tag + 1):
            self._acked.setdefault(settled, acked)


class Publisher:
    """One connection to the broker, made on first use and dropped on the first failure.

    Not thread-safe: one per thread (kombu's connections are not shared between threads).
    """

    def __init__(self, broker_url: str, timeout: float) -> None:
        self._broker_url = broker_url
        self._timeout = timeout
        self._redis: redis.Redis | None = None
        self._push: Any = None
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._confirms: Confirms | None = None
        self._amqp = False
        self._queues_found: set[str] = set()  # on this connection

    @property
    def connected(self) -> bool:
        """Whether a connection made earlier will be used (it may have died since)."""
        return self._producer is not None or self._redis is not None

    def publish(
        self, queue: str, body: bytes, message: dict[str, Any], lane: str, events: int = 1, overflow: bool = False
    ) -> None:
        """Publish ``body`` with ``message`` (``wire.Encoder.message``'s headers and properties) into
        ``lane``. ``events``: how many it carries (RabbitMQ's lane rate counts events); ``overflow``:
        send it to the overflow queue whatever the lane's rate (an operator's slow key)."""
        if self._broker_url.startswith(_REDIS_SCHEMES):
            try:
                self._publish_redis(queue, body, message, lane)
            except BaseException:
                self.close()  # a connection that failed once is not trusted again
                raise
            return
        (outcome,) = self._publish_kombu(queue, [(body, message, lane, events, overflow)])
        if outcome is not None:
            raise outcome

    def publish_many(self, queue: str, messages: list[Outgoing]) -> list[Exception | None]:
        """Each of ``messages`` published as ``publish`` would, and what became of each: None once
        the broker has it, else its error (``BacklogFull`` when its lane is full). On Redis they
        travel in one round trip (a pipeline of the push script); on RabbitMQ one after another,
        their confirms awaited together, and when the connection fails every one gets its error."""
        if not self._broker_url.startswith(_REDIS_SCHEMES):
            if not messages:
                return []
            try:
                return self._publish_kombu(queue, messages)
            except Exception as error:  # the connection is closed: none is known to be taken
                return [error] * len(messages)
        try:
            push = self._redis_push()
            documents = [(lane, redis_document(body, message, queue)) for body, message, lane, _, _ in messages]
            pushed = self._pipelined(push.sha, queue, documents)
            unknown = [index for index, result in enumerate(pushed) if isinstance(result, NoScriptError)]
            if unknown:  # Redis lost its scripts (a restart, SCRIPT FLUSH): load it, push those again
                self._redis.script_load(_PUSH)  # type: ignore[union-attr]
                again = self._pipelined(push.sha, queue, [documents[index] for index in unknown])
                for index, result in zip(unknown, again, strict=True):
                    pushed[index] = result
        except BaseException:
            self.close()
            raise
        return [_redis_outcome(result, queue) for result in pushed]

    def _pipelined(self, sha: str, queue: str, documents: list[tuple[str, bytes]]) -> list[Any]:
        """The push script on each (lane, document), in one round trip. Its sha is sent without
        the ``SCRIPT EXISTS`` round trip redis-py's pipelines add before every script."""
        pipeline = self._redis.pipeline(transaction=False)  # type: ignore[union-attr]
        for lane, document in documents:
            pipeline.evalsha(sha, 2, lane_list(queue, lane), ready_lanes(queue), document, MAX_LANE_MESSAGES, lane)
        return pipeline.execute(raise_on_error=False)

    def _redis_push(self) -> Any:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self._broker_url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
            )
            self._push = self._redis.register_script(_PUSH)
        return self._push

    def _publish_redis(self, queue: str, body: bytes, message: dict[str, Any], lane: str) -> None:
        push = self._redis_push()
        document = redis_document(body, message, queue)
        outcome = _redis_outcome(
            push(keys=[lane_list(queue, lane), ready_lanes(queue)], args=[document, MAX_LANE_MESSAGES, lane]), queue
        )
        if outcome is not None:
            raise outcome

    def _publish_kombu(self, queue: str, messages: list[Outgoing]) -> list[Exception | None]:
        """``messages`` through kombu (RabbitMQ, or the embedded broker), with what became of each;
        raises, the connection closed, when the connection fails."""
        try:
            producer = self._ensure_producer()
            if self._amqp:
                return self._publish_amqp(producer, queue, messages)
            for body, message, _, _, _ in messages:  # the embedded broker: one queue, taken by Celery's own consumer
                producer.publish(body, exchange=DEFAULT_EXCHANGE, routing_key=queue, retry=False, **message)
            return [None] * len(messages)
        except BaseException:
            self.close()  # a connection that failed once is not trusted again
            raise

    def _publish_amqp(self, producer: Producer, queue: str, messages: list[Outgoing]) -> list[Exception | None]:
        """Each message to its shard (or the overflow queue), then every confirm awaited at once:
        None for a message RabbitMQ took, ``BacklogFull`` for one its shard nacked."""
        targets = [
            overflow_queue(queue) if overflow or LANE_RATES.overflows(lane, events) else shard_queue(queue, lane)
            for _, _, lane, events, overflow in messages
        ]
        for target in targets:
            if target not in self._queues_found:
                # Never declared, so that a producer user needs no permission but to write to the
                # queue's exchange: a passive declare (which needs none) fails while no worker has
                # made the queue, and the message is refused here instead of dropped unroutable.
                producer.channel.queue_declare(queue=target, passive=True)
                self._queues_found.add(target)
        confirms = self._confirms
        assert confirms is not None  # made with the producer
        confirms.begin()
        for (body, message, _, _, _), target in zip(messages, targets, strict=True):
            # retry=False: callers retry (or answer) themselves
            producer.publish(body, exchange=exchange_of(queue), routing_key=target, retry=False, **message)
            confirms.published()
        return [
            None
            if taken
            else BacklogFull(  # the shard is at its x-max-length (reject-publish): the worker is behind
                f"the broker holds {MAX_LANE_MESSAGES} messages on {target} already; the worker is behind: "
                "send again later"
            )
            for taken, target in zip(confirms.wait(), targets, strict=True)
        ]

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis.close()
        self._connection = self._producer = self._redis = self._push = self._confirms = None

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            scheme = self._broker_url.partition("://")[0]
            self._connection = Connection(
                self._broker_url,
                connect_timeout=self._timeout,
                transport_options=transport_options(scheme, self._timeout, confirm_each_publish=False),
            )
            # One connection attempt (kombu's default_channel would retry for connect_timeout):
            # the caller retries, or answers that the broker is unavailable.
            self._connection.connect()
            self._producer = Producer(self._connection.channel())
            self._amqp = self._connection.transport.driver_type == "amqp"
            if self._amqp:
                self._confirms = Confirms(self._producer.channel, self._timeout)
            self._queues_found.clear()
        return self._producer
