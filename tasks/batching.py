"""Batched ingestion on Redis: many deliveries, one pool job, one transaction, then one ack.

Through Celery's consumer every message costs the main process three Redis round trips, a
request object, a pool dispatch and a result: about 0.8 ms, so a worker cannot pass about a
thousand messages a second, whatever their size. This consumer step takes the ingestion
queues over from it (on Redis, with ``USERPATH_INGEST_BATCH_MESSAGES`` above 1):

- one Lua call moves up to that many messages from a queue into kombu's own ``unacked`` hash
  and index, as kombu does for each message it delivers, so a worker that dies holding them
  loses nothing: kombu gives them back after ``USERPATH_VISIBILITY_TIMEOUT``, as any message;
- a pool process decodes them (tasks are not run: the same checks as our Celery consumer and
  request, then the core's ``Ingestor.ingest``) and stores all of them in one transaction;
- then one call removes them from ``unacked``. A batch that fails goes back to the queue whole
  (storage is idempotent); one that meets a database outage also pauses the step, with backoff.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import bootsteps
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import loads

from config.settings import get_settings
from tasks.base import backoff_seconds
from tasks.deadletters import (
    EXPIRES_REFUSED,
    NO_TASK_HEADER,
    failed_unexpectedly,
    invalid_message,
    refused_content,
    rejection_of,
    undecodable,
    unknown_task,
)
from tasks.ingest import ingestor
from userpath_worker import metrics
from userpath_worker.db import is_transient, utcnow
from userpath_worker.deadletter.models import Reason
from userpath_worker.deadletter.services import Delivery, Rejection
from userpath_worker.events.models import Source
from userpath_worker.events.schemas import EVENTS_QUEUE, JOBS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.events.services import Incoming, Outcome

logger = logging.getLogger("userpath.worker")

BATCHED_QUEUES = (EVENTS_QUEUE, JOBS_QUEUE, WEBHOOKS_QUEUE)
INGESTION_TASKS = (TRACK_TASK, WEBHOOK_TASK)
MAX_BATCH_BYTES = 2 * 1024 * 1024  # two full-size envelopes: bounds a pool process's memory
POLL_SECONDS = 0.02  # how often an idle step looks at its queues: the latency it adds at most
# kombu's Redis transport keeps each priority in a list of its own (the contract says 0).
_PRIORITY_SEPARATOR, _PRIORITIES = "\x06\x16", (3, 6, 9)
_UNACKED, _UNACKED_INDEX = "unacked", "unacked_index"  # kombu's names (no key prefix is configured)
_TAG_COUNTER = "userpath.batch_tags"

# Moves up to ARGV[1] messages (and about ARGV[2] bytes) from the queue's lists into kombu's
# unacked hash and index, in kombu's own form ([message, exchange, routing key]; exchange ""
# routes to the queue named by the routing key), under tags of our own. Returns tag, message...
_TAKE = """
local taken, size = {}, 0
for i = 4, #KEYS do
  while #taken < 2 * tonumber(ARGV[1]) and size < tonumber(ARGV[2]) do
    local message = redis.call('RPOP', KEYS[i])
    if not message then break end
    local tag = 'userpath-batch-' .. redis.call('INCR', KEYS[3])
    redis.call('HSET', KEYS[1], tag, '[' .. message .. ',"",' .. ARGV[4] .. ']')
    redis.call('ZADD', KEYS[2], ARGV[3], tag)
    taken[#taken + 1] = tag
    taken[#taken + 1] = message
    size = size + #message
  end
end
return taken
"""
# Puts the messages of ARGV's tags back at the consuming end of the queue, and forgets them.
_GIVE_BACK = """
for i = 1, #ARGV do
  local entry = redis.call('HGET', KEYS[1], ARGV[i])
  if entry then
    redis.call('RPUSH', KEYS[3], string.sub(entry, 2, -(#KEYS[4] + 1)))
  end
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
return #ARGV
"""


class RedisBatches:
    """kombu's Redis queues and unacked structures, a batch at a time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._take = client.register_script(_TAKE)
        self._give_back = client.register_script(_GIVE_BACK)

    def take(self, queue: str, messages: int, max_bytes: int) -> tuple[list[bytes], list[bytes]]:
        """Up to ``messages`` messages (and about ``max_bytes``), oldest first: (tags, messages)."""
        lists = [queue] + [f"{queue}{_PRIORITY_SEPARATOR}{priority}" for priority in _PRIORITIES]
        taken = self._take(
            keys=[_UNACKED, _UNACKED_INDEX, _TAG_COUNTER, *lists],
            args=[messages, max_bytes, time.time(), json.dumps(queue)],
        )
        return taken[0::2], taken[1::2]

    def acknowledge(self, tags: Sequence[bytes]) -> None:
        self.client.pipeline(transaction=False).hdel(_UNACKED, *tags).zrem(_UNACKED_INDEX, *tags).execute()

    def give_back(self, tags: Sequence[bytes], queue: str) -> None:
        """Put the messages back where the next take finds them first."""
        suffix = f',"",{json.dumps(queue)}]'
        self._give_back(keys=[_UNACKED, _UNACKED_INDEX, queue, suffix], args=list(tags))


class DatabaseUnavailable(Exception):
    """The batch met a database outage: give it back and pause."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as kombu's Redis transport stores it, enough of it for a dead letter."""

    headers: dict[str, Any] | None
    delivery_info: dict[str, Any] | None
    body: Any
    content_type: str | None
    content_encoding: str | None = None


def ingest_batch(messages: Sequence[bytes]) -> dict[str, int]:
    """In a pool process: decode the messages and store them in one transaction."""
    started = time.perf_counter()
    authenticator = ingestor().authenticator
    hits, misses = authenticator.hits, authenticator.misses
    decoded = [_decode(message) for message in messages]
    incoming = [item for item in decoded if isinstance(item, tuple) and isinstance(item[1], Incoming)]
    refused = [item for item in decoded if isinstance(item, tuple) and isinstance(item[0], Rejection)]
    try:
        outcomes = ingestor().ingest([message for _, message in incoming], refused)
    except Exception as error:
        if is_transient(error):
            raise DatabaseUnavailable(type(error).__name__) from None
        # One message the database refuses (our bug) must not hold up the others.
        outcomes = _one_at_a_time(incoming, refused)
    seconds = time.perf_counter() - started
    for (raw, message), outcome in zip(incoming, outcomes, strict=False):
        metrics.record(_summary(outcome, message.source))
        logger.debug(
            "message handled",
            extra={
                "task_id": (raw.headers or {}).get("id"),
                "org_id": outcome.org_id,
                "key": outcome.key,
                "source": message.source.value,
                "stored": outcome.stored,
                "dead_lettered": outcome.dead_lettered,
            },
        )
    for rejection, _ in refused:
        metrics.DEAD_LETTERS.labels(rejection.reason.value, "unknown").inc()
    metrics.BATCH_WRITE_SECONDS.observe(seconds)
    for result, count in (("hit", authenticator.hits - hits), ("miss", authenticator.misses - misses)):
        metrics.AUTH_CACHE.labels(result).inc(count)
    totals = {
        "messages": len(messages),
        "stored": sum(outcome.stored for outcome in outcomes),
        "dead_lettered": sum(outcome.dead_lettered for outcome in outcomes) + len(refused),
    }
    logger.info("batch handled", extra=totals | {"seconds": round(seconds, 4)})
    return totals


def _one_at_a_time(
    incoming: list[tuple[RawMessage, Incoming]], refused: list[tuple[Rejection, Delivery]]
) -> list[Outcome]:
    outcomes = []
    try:
        ingestor().ingest([], refused)
        for raw, message in incoming:
            try:
                [outcome] = ingestor().ingest([message])
            except Exception as error:
                if is_transient(error):
                    raise
                logger.exception("a message failed unexpectedly; it is dead-lettered as internal_error")
                verdict = failed_unexpectedly(error)
                ingestor().ingest([], [rejection_of(raw, *verdict)])
                outcome = Outcome(0, 1, {verdict[0].value: 1})
            outcomes.append(outcome)
    except Exception as error:
        if is_transient(error):
            raise DatabaseUnavailable(type(error).__name__) from None
        raise
    return outcomes


def _summary(outcome: Outcome, source: Source) -> dict[str, Any]:
    return {"stored": outcome.stored, "dead_letters": outcome.reasons, "source": source.value}


def _decode(item: bytes) -> tuple[RawMessage, Incoming] | tuple[Rejection, Delivery]:
    """What our Celery consumer and request make of a message, without running a task."""
    try:
        document = json.loads(item)
        properties = document["properties"]
        body = document["body"]
        if properties.get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True)
        raw = RawMessage(
            document.get("headers"),
            properties.get("delivery_info"),
            body,
            document.get("content-type"),
            document.get("content-encoding"),
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        odd = RawMessage(None, None, item, None)
        return rejection_of(odd, Reason.INVALID_ENVELOPE, "not a message in kombu's Redis form")
    headers = raw.headers if isinstance(raw.headers, dict) else {}
    task = headers.get("task")
    if task is None:
        return rejection_of(raw, *NO_TASK_HEADER)
    if task not in INGESTION_TASKS:
        return rejection_of(raw, *unknown_task(task))
    try:
        payload = loads(raw.body, raw.content_type, raw.content_encoding or "utf-8", accept={"application/json"})
    except ContentDisallowed:
        return rejection_of(raw, *refused_content(raw.content_type))
    except (DecodeError, RecursionError) as error:
        return rejection_of(raw, *undecodable(error))
    if not (
        isinstance(payload, list)
        and len(payload) == 3
        and isinstance(payload[0], list)
        and isinstance(payload[1], dict)
        and isinstance(payload[2], dict | None)
    ):
        return rejection_of(raw, *invalid_message("the body is not [args, kwargs, embed]"))
    if headers.get("expires") is not None:
        return rejection_of(raw, *invalid_message(EXPIRES_REFUSED))
    args, kwargs, _ = payload
    queue = (raw.delivery_info or {}).get("routing_key")
    source = Source.WEBHOOK if task == WEBHOOK_TASK else Source.for_queue(queue)
    delivery = Delivery(task=task, queue=queue, received_at=utcnow())
    return raw, Incoming(task, args, kwargs, source, delivery)


class BatchedIngestion(bootsteps.StartStopStep):
    """The consumer step that takes the ingestion queues over from Celery's consumer on Redis."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.settings = get_settings()
        self.queues: list[str] = []
        self.in_flight = 0
        self.running = False
        self.paused_until = 0.0
        self.failures = 0
        self.timer: Any = None

    def start(self, c: Any) -> None:
        if not self._applies(c):
            return
        consumed = {queue.name for queue in c.task_consumer.queues}
        self.queues = [queue for queue in BATCHED_QUEUES if queue in consumed]
        for queue in self.queues:
            c.task_consumer.cancel_by_queue(queue)
        self.batches = RedisBatches(redis.Redis.from_url(self.settings.broker_url))
        self.pool, self.slots = c.pool, max(1, getattr(c.pool, "limit", None) or 1)
        self.time_limits = {"soft_timeout": c.app.conf.task_soft_time_limit, "timeout": c.app.conf.task_time_limit}
        self.next_queue = 0
        self.timer = c.hub.call_repeatedly(POLL_SECONDS, self.fill)
        self.running = True
        logger.info("batched ingestion: up to %s messages a batch from %s", self.batch_messages, ", ".join(self.queues))

    def stop(self, c: Any) -> None:
        self.running = False  # batches that finish now must not start new ones
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    @property
    def batch_messages(self) -> int:
        return self.settings.ingest_batch_messages

    def _applies(self, c: Any) -> bool:
        return (
            self.settings.broker_url.startswith(("redis://", "rediss://", "unix://"))
            and self.batch_messages > 1
            and getattr(c, "hub", None) is not None
        )

    def fill(self) -> None:
        """Keep every pool process busy with a batch while the queues have messages."""
        try:
            while self.running and self.in_flight < self.slots and time.monotonic() >= self.paused_until:
                if not self._dispatch_one():
                    return
        except redis.RedisError as error:
            logger.warning("batched ingestion cannot reach Redis (%s); trying again", type(error).__name__)
            self.paused_until = time.monotonic() + 1

    def _dispatch_one(self) -> bool:
        for offset in range(len(self.queues)):
            queue = self.queues[(self.next_queue + offset) % len(self.queues)]
            tags, messages = self.batches.take(queue, self.batch_messages, MAX_BATCH_BYTES)
            if tags:
                self.next_queue = (self.next_queue + offset + 1) % len(self.queues)
                self.in_flight += 1
                self.pool.apply_async(
                    ingest_batch,
                    args=(messages,),
                    callback=lambda result, tags=tags: self._done(tags),
                    error_callback=lambda error, tags=tags, queue=queue: self._failed(tags, queue, error),
                    **self.time_limits,
                )
                return True
        return False

    def _done(self, tags: list[bytes]) -> None:
        self.in_flight -= 1
        self.failures = 0
        try:
            self.batches.acknowledge(tags)
        except redis.RedisError as error:
            # Stored but not acknowledged: kombu re-delivers them later, and storage is idempotent.
            logger.warning("could not acknowledge a stored batch (%s)", type(error).__name__)
        self.fill()

    def _failed(self, tags: list[bytes], queue: str, failure: Any) -> None:
        self.in_flight -= 1
        error = getattr(failure, "exception", failure)  # billiard hands over an ExceptionInfo
        if isinstance(error, DatabaseUnavailable):
            delay = backoff_seconds(self.failures)
            self.failures += 1
            self.paused_until = time.monotonic() + delay
            metrics.RETRIES.labels("batch").inc()
            logger.warning("database unavailable, batch given back", extra={"retry_in": round(delay, 1)})
        else:
            logger.error("a batch failed (%s); its messages go back to the queue", type(error).__name__)
        try:
            self.batches.give_back(tags, queue)
        except redis.RedisError as unreachable:
            # Still in kombu's unacked hash: re-delivered after the visibility timeout.
            logger.warning("could not give a batch back (%s)", type(unreachable).__name__)
