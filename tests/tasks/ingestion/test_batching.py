"""Batched ingestion (tasks/ingestion/): how a raw Redis delivery is judged at the boundary, and
how a batch is held until acknowledged, given back, or restored after its worker died."""

from __future__ import annotations

import base64
import contextlib
import json
import pickle
import time
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
import redis

from tasks.backoff import backoff_seconds
from tasks.ingestion.amqp_transport import AmqpBatches
from tasks.ingestion.decoder import MAX_RAW_BYTES, decode
from tasks.ingestion.job import Handoff
from tasks.ingestion.redis_transport import UNACKED, UNACKED_INDEX, RedisBatches, held, transported
from tests.common.databases import TEST_DATABASE_PREFIX, flushed_redis
from tests.common.workers import (
    rabbitmq_vhost,
    wait_for,
)
from userpath_client.contract import (
    EVENTS_QUEUE,
    JOBS_QUEUE,
    MAX_ENVELOPE_BYTES,
    MAX_NESTING,
    TRACK_TASK,
    WEBHOOK_TASK,
    WEBHOOKS_QUEUE,
)
from userpath_worker.deadletter.models import Reason
from userpath_worker.events.models import Source
from userpath_worker.events.services import Incoming, Refused
from userpath_worker.events.verdicts import size_refusal
from userpath_worker.keys import tokens
from userpath_worker.keys.tokens import Environment

REDIS_URL = "redis://127.0.0.1:6379/13"
KEY = tokens.generate(Environment.LIVE)  # never stored: it must not reach a dead letter as it is


def redis_message(
    body: Any,
    task: str | None = TRACK_TASK,
    queue: str = EVENTS_QUEUE,
    content_type: str = "application/json",
    **headers: Any,
) -> bytes:
    """One message as kombu's Redis transport stores it (docs/contract.md, "(a) Redis")."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    document = {
        "body": base64.b64encode(raw).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": ({"task": task, "id": "t-1", "eta": None, "expires": None} if task else {}) | headers,
        "properties": {
            "delivery_info": {"exchange": "", "routing_key": queue},
            "body_encoding": "base64",
            "delivery_tag": "d-1",
            "priority": 0,
        },
    }
    return json.dumps(document).encode()


def judged(item: bytes, queue: str = EVENTS_QUEUE) -> Incoming | Refused:
    unwrapped = transported((queue, item))
    return unwrapped if isinstance(unwrapped, Refused) else decode(unwrapped)


def envelope() -> list[Any]:
    event = {"event": "Signed Up", "user_id": "u1", "timestamp": "2026-05-01T12:00:00+00:00"}
    return [[{"api_key": KEY, "batch": [event]}], {}, {"callbacks": None}]


@pytest.mark.parametrize(
    ("queue", "task", "source"),
    [
        (EVENTS_QUEUE, TRACK_TASK, Source.SERVER),
        (JOBS_QUEUE, TRACK_TASK, Source.JOB),
        (WEBHOOKS_QUEUE, WEBHOOK_TASK, Source.WEBHOOK),
    ],
)
def test_an_ingestion_message_becomes_the_core_s_input(queue: str, task: str, source: Source) -> None:
    incoming = judged(redis_message(envelope(), task=task, queue=queue), queue)
    assert isinstance(incoming, Incoming)
    assert (incoming.task, incoming.source, incoming.delivery.queue) == (task, source, queue)
    assert incoming.args[0]["api_key"] == KEY and incoming.kwargs == {}


@pytest.mark.parametrize(
    ("item", "reason", "detail"),
    [
        (b"not json", Reason.INVALID_ENVELOPE, "not a message in kombu's Redis form"),
        (redis_message(envelope(), task=None), Reason.INVALID_ENVELOPE, "no task header"),
        (redis_message(envelope(), task="proj.tasks.add"), Reason.UNKNOWN_TASK, "no task named 'proj.tasks.add'"),
        (
            redis_message(pickle.dumps(envelope()), content_type="application/x-python-serialize"),
            Reason.UNDECODABLE,
            "application/x-python-serialize is refused",
        ),
        (redis_message(b'[[{"api_key": "' + KEY.encode() + b'"'), Reason.UNDECODABLE, "cannot decode the body"),
        (redis_message({"api_key": KEY}), Reason.INVALID_ENVELOPE, "not [args, kwargs, embed]"),
        (redis_message([[{"api_key": KEY}], [], None]), Reason.INVALID_ENVELOPE, "not [args, kwargs, embed]"),
        (redis_message(envelope(), expires="2026-05-01T12:00:00+00:00"), Reason.INVALID_ENVELOPE, "expires"),
    ],
)
def test_what_is_not_an_ingestion_message_is_dead_lettered_with_its_reason_and_no_key(
    item: bytes, reason: Reason, detail: str
) -> None:
    refused = judged(item)
    assert isinstance(refused, Refused)
    rejection, delivery = refused.rejection, refused.delivery
    assert rejection.reason == reason and detail in rejection.detail
    assert KEY not in json.dumps(rejection.payload, default=str) and KEY not in rejection.detail
    assert delivery.queue == EVENTS_QUEUE


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    yield from flushed_redis(REDIS_URL)


def test_a_batch_is_held_in_the_steps_unacked_hash_until_acknowledged(broker: redis.Redis) -> None:
    messages = [redis_message(envelope() + [n]) for n in range(5)]
    broker.lpush(EVENTS_QUEUE, *messages)  # as producers do; consumers pop from the other end
    batches = RedisBatches(broker)

    taken = batches.take(EVENTS_QUEUE, messages=3, max_bytes=10**6)
    assert taken.items == taken.tags and broker.llen(EVENTS_QUEUE) == 2  # handles only: no message leaves Redis
    assert [broker.hget(UNACKED, tag) for tag in taken.tags] == messages[:3]  # as they were, never parsed
    assert held(broker, taken.items) == [(EVENTS_QUEUE, message) for message in messages[:3]]
    assert broker.zcard(UNACKED_INDEX) == 3
    assert not broker.exists("unacked")  # kombu's own hash is left to kombu

    batches.acknowledge(taken.tags)
    assert broker.hlen(UNACKED) == 0 and broker.zcard(UNACKED_INDEX) == 0


def test_a_failed_batch_goes_back_to_the_consuming_end_of_its_queue(broker: redis.Redis) -> None:
    messages = [redis_message(envelope() + [n]) for n in range(4)]
    broker.lpush(EVENTS_QUEUE, *messages)
    batches = RedisBatches(broker)
    taken = batches.take(EVENTS_QUEUE, messages=2, max_bytes=10**6)

    batches.give_back(taken.tags)

    assert broker.hlen(UNACKED) == 0 and broker.zcard(UNACKED_INDEX) == 0
    again = batches.take(EVENTS_QUEUE, messages=10, max_bytes=10**6)
    assert sorted(item for _, item in held(broker, again.items)) == sorted(messages)


def test_what_a_dead_worker_held_is_restored_after_the_visibility_timeout_whatever_it_is(broker: redis.Redis) -> None:
    # Not JSON: kombu's own restore would raise on it, and restore nothing older.
    messages = [b"not json \xff", redis_message(envelope())]
    broker.lpush(EVENTS_QUEUE, *messages)
    batches = RedisBatches(broker)
    taken = batches.take(EVENTS_QUEUE, messages=10, max_bytes=10**6)
    assert broker.llen(EVENTS_QUEUE) == 0

    assert batches.restore_older_than(3600) == 0  # still within its visibility timeout
    assert batches.restore_older_than(0) == 2

    assert sorted(broker.lrange(EVENTS_QUEUE, 0, -1)) == sorted(messages)
    assert broker.hlen(UNACKED) == 0 and broker.zcard(UNACKED_INDEX) == 0
    batches.acknowledge(taken.tags)  # a late acknowledgement of restored messages is harmless
    assert broker.llen(EVENTS_QUEUE) == 2


def test_a_batch_is_bounded_in_bytes(broker: redis.Redis) -> None:
    messages = [redis_message(envelope() + ["x" * 1000]) for _ in range(10)]
    broker.lpush(EVENTS_QUEUE, *messages)
    taken = RedisBatches(broker).take(EVENTS_QUEUE, messages=10, max_bytes=2500)
    assert len(taken.items) == 2  # the message that passes the bound is the last one taken


def test_backoff_is_capped_whatever_the_number_of_failures() -> None:
    assert all(30 <= backoff_seconds(failures) <= 60 for failures in (6, 64, 1024, 10**6))
    assert 0.5 <= backoff_seconds(0) <= 1


@pytest.fixture
def rabbitmq() -> Iterator[amqp.Connection]:
    url = rabbitmq_vhost(f"{TEST_DATABASE_PREFIX}_batching")
    connection = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest", virtual_host=url.rsplit("/", 1)[1])
    connection.connect()
    channel = connection.channel()
    channel.queue_declare(EVENTS_QUEUE, durable=True, auto_delete=False)
    channel.queue_purge(EVENTS_QUEUE)
    yield connection
    connection.collect()


def gathered(connection: amqp.Connection, batches: AmqpBatches, count: int) -> None:
    def arrived() -> bool:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.2)
        return batches.gathered_count == count

    wait_for(arrived, 10, f"{count} deliveries")


def ready_in_queue(connection: amqp.Connection) -> int:
    return connection.channel().queue_declare(EVENTS_QUEUE, passive=True).message_count


def test_rabbitmq_batches_are_acknowledged_only_once_every_older_delivery_is_settled(rabbitmq: amqp.Connection) -> None:
    publisher = rabbitmq.channel()
    for number in range(6):
        publisher.basic_publish(
            amqp.Message(b"message %d" % number, delivery_mode=2), exchange="", routing_key=EVENTS_QUEUE
        )
    batches = AmqpBatches(rabbitmq, [EVENTS_QUEUE], batch_messages=2, slots=2, on_full=lambda: None)
    gathered(rabbitmq, batches, 6)
    first, second, third = (batches.next_batch(2, 10**6) for _ in range(3))
    assert [item[1] for batch in (first, second, third) for item in batch.items] == [
        b"message %d" % n for n in range(6)
    ]

    batches.acknowledge(second.tags)  # the older first batch is not settled: nothing is acknowledged yet
    batches.acknowledge(third.tags)
    batches.close()  # what is not acknowledged goes back to the queue
    assert wait_for(lambda: ready_in_queue(rabbitmq) == 6 or None, 10, "all six back")

    batches = AmqpBatches(rabbitmq, [EVENTS_QUEUE], batch_messages=2, slots=2, on_full=lambda: None)
    gathered(rabbitmq, batches, 6)
    first, second, third = (batches.next_batch(2, 10**6) for _ in range(3))
    batches.acknowledge(second.tags)
    batches.acknowledge(first.tags)  # one multiple ack now settles both
    batches.close()
    assert wait_for(lambda: ready_in_queue(rabbitmq) == 2 or None, 10, "the third batch back")


def test_a_message_longer_than_the_limit_is_refused_by_its_length_alone_in_constant_time() -> None:
    """Seen: a 40 MB message held a pool process 18.9 s, 16.8 s of it scanning for keys."""
    huge = redis_message(envelope() + ["x" * (40 * 1024 * 1024)])
    started = time.perf_counter()
    refused = judged(huge)
    seconds = time.perf_counter() - started
    assert isinstance(refused, Refused)
    assert refused.rejection.reason == Reason.TOO_LARGE and refused.rejection.payload is None
    assert f"{len(huge)} bytes" in refused.rejection.detail and refused.delivery.queue == EVENTS_QUEUE
    assert seconds < 0.05, f"{seconds:.3f} s"  # about a millisecond; a parse alone takes a tenth of a second
    again = judged(huge)
    assert isinstance(again, Refused) and again.delivery.message_id == refused.delivery.message_id  # recorded once


def test_a_message_just_within_the_limit_is_read() -> None:
    payload = envelope()
    payload[0][0]["batch"][0]["properties"] = {"pad": "x" * (MAX_ENVELOPE_BYTES - len(json.dumps(payload)) - 100)}
    padded = redis_message(payload)
    assert len(json.dumps(payload)) <= MAX_ENVELOPE_BYTES < len(padded) < MAX_RAW_BYTES
    assert isinstance(judged(padded), Incoming)


@pytest.mark.parametrize("levels", [300, 1_000, 3_000, 100_000])
def test_a_message_nested_past_the_contract_s_limit_is_an_invalid_event_without_payload(levels: int) -> None:
    """Seen: 1,000 levels were dead-lettered as internal_error ("RecursionError") by the failure path."""
    deep = "[" * levels + "]" * levels
    body = json.dumps(envelope()).replace('"u1"', '"u1", "properties": {"deep": @}', 1).replace("@", deep)
    judgement = judged(redis_message(body.encode()))
    if isinstance(judgement, Incoming):  # parsed: the core refuses it before anything recurses into it
        judgement = Refused(size_refusal(judgement.args[0]), judgement.delivery)
    assert judgement.rejection.reason == Reason.INVALID_EVENT
    assert f"more than {MAX_NESTING} levels" in judgement.rejection.detail and judgement.rejection.payload is None


def test_the_pool_job_s_arguments_show_no_message() -> None:
    """Celery logs a pool job's arguments at DEBUG; a base64 body there gave back a whole key."""
    item = redis_message(envelope())
    for handoff in (Handoff("redis", [b"1|userpath.events"]), Handoff("amqp", [(EVENTS_QUEUE, item, None, None, {})])):
        shown = repr((handoff,))
        assert shown.startswith("(<1 ") and "deliveries>" in shown
        assert KEY not in shown and base64.b64encode(item).decode()[:40] not in shown
