"""The consumer step that owns the ingestion queues on Redis and RabbitMQ.

Through Celery's consumer every message costs the main process a request object, a pool
dispatch and a result, and on Redis three round trips: about 0.8 ms, so a worker could not pass
about a thousand messages a second, whatever their size. This step takes the ingestion queues
over from Celery's consumer and hands the pool whole batches (``job.ingest_batch``), through a
small adapter per transport (``redis_transport``, ``amqp_transport``).

The step owns its batches' fate. One that succeeds is acknowledged. One that meets a database
outage is kept and tried again after a backoff, and the step pauses. One that fails otherwise
(its pool process died, it ran out of time) is split in halves and each tried again, down to a
single message, which after a second failure is recorded as a dead letter without its payload
and acknowledged.
After a broker reconnect, the batches Celery's pool dropped before a process took them
(``pool.flush()``) are forgotten, so the count of batches in flight is true again.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from celery import bootsteps

from config.settings import get_settings
from tasks.backoff import backoff_seconds
from tasks.ingestion import amqp_transport, redis_transport
from tasks.ingestion.job import DatabaseUnavailable, Handoff, ingest_batch, record_unprocessable
from userpath_client.contract import INGESTION_QUEUES, lane_queues
from userpath_worker import metrics
from userpath_worker.events import lanes

logger = logging.getLogger("userpath.worker")

# A full-size envelope: bounds a pool process's memory, and how long a batch takes (about 5,000
# events, a quarter of a second on two cores), which is how long a quiet key's event may wait for a
# pool process while a flood drains (issue 22: under a second).
MAX_BATCH_BYTES = 1024 * 1024
ATTEMPTS_PER_MESSAGE = 2  # a message whose job fails on its own this often is recorded, not retried
POLL_SECONDS = 0.02  # how often an idle step looks for work: the latency it adds at most
_REDIS_SCHEMES, _AMQP_SCHEMES = ("redis://", "rediss://", "unix://"), ("amqp://", "amqps://", "pyamqp://")


@dataclass(slots=True)
class Batch:
    number: int
    transport: Any  # the adapter that took it, and settles it: a reconnect makes a new one
    tags: list[Any]
    items: list[Any]
    unprocessable: str | None = None  # why, when only a record of the message is left to make
    failures: int = 0  # times a batch of this one message failed on its own
    accepted: bool = field(default=False, compare=False)  # a pool process has started it

    def halves(self, numbers: itertools.count[int]) -> list[Batch]:
        middle = len(self.items) // 2
        return [
            replace(self, number=next(numbers), tags=self.tags[part], items=self.items[part], accepted=False)
            for part in (slice(None, middle), slice(middle, None))
        ]


class SlowLanes:
    """Redis: the lanes of the keys an operator forced slow (USERPATH_SLOW_KEYS), found among the
    lanes workers recorded the owners of, handed to the take; what is taken from them is counted,
    and said in the log once a minute per key."""

    REFRESH_SECONDS = 10.0  # how soon a key's lane is slowed once a worker has stored from it
    LOG_SECONDS = 60.0

    def __init__(self, key_ids: frozenset[int], transport: redis_transport.RedisBatches) -> None:
        self.key_ids, self.transport = key_ids, transport
        self.key_of_lane: dict[str, int] = {}
        self.taken: Counter[int] = Counter()
        self.logged_at = time.monotonic()

    def refresh(self) -> None:
        try:
            self.key_of_lane = lanes.lanes_of_keys(self.transport.client, self.key_ids)
        except redis.RedisError as error:  # tried again at the next interval
            logger.warning("could not read whose lanes these are (%s)", type(error).__name__)
            return
        self.transport.slow_lanes = frozenset(self.key_of_lane)
        if time.monotonic() - self.logged_at >= self.LOG_SECONDS:
            self._log()

    def count(self, tags: list[bytes]) -> None:
        for tag in tags:
            key_id = self.key_of_lane.get(tag.decode().split("|", 2)[-1])
            if key_id is not None:
                self.taken[key_id] += 1
                metrics.SLOW_LANE_MESSAGES.labels(str(key_id)).inc()

    def _log(self) -> None:
        found = set(self.key_of_lane.values())
        for key_id in sorted(self.key_ids):
            if key_id in found:
                logger.info(
                    "key %s is in the slow lane (USERPATH_SLOW_KEYS): %s message(s) taken in the last minute",
                    key_id,
                    self.taken[key_id],
                )
            else:
                logger.info("key %s is to be in the slow lane (USERPATH_SLOW_KEYS); no message of it seen yet", key_id)
        self.taken.clear()
        self.logged_at = time.monotonic()


def transport_name(broker_url: str) -> str | None:
    if broker_url.startswith(_REDIS_SCHEMES):
        return redis_transport.NAME
    if broker_url.startswith(_AMQP_SCHEMES):
        return amqp_transport.NAME
    return None  # the embedded SQLAlchemy broker keeps Celery's own path


class BatchedIngestion(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.settings = get_settings()
        self.numbers = itertools.count()
        self.in_flight: dict[int, Batch] = {}
        self.waiting: deque[Batch] = deque()  # batches to try again, first in line
        self.transport: Any = None
        self.running = False
        self.paused_until = 0.0
        self.failures = 0
        self.timers: list[Any] = []
        self.slow: SlowLanes | None = None

    def include_if(self, c: Any) -> bool:
        # Unbatched too: Celery's consumer then takes the queues themselves, a message a task, and
        # the step only their lanes (which Celery knows nothing of), a message a batch.
        return transport_name(self.settings.broker_url) is not None and getattr(c, "hub", None) is not None

    @property
    def lanes_only(self) -> bool:
        return self.settings.ingest_batch_messages == 1

    @property
    def batch_messages(self) -> int:
        return self.settings.ingest_batch_messages

    def start(self, c: Any) -> None:
        consumed = {queue.name for queue in c.task_consumer.queues}
        queues = [queue for queue in INGESTION_QUEUES if queue in consumed]
        if not queues:
            return
        if not self.lanes_only:
            for queue in queues:
                c.task_consumer.cancel_by_queue(queue)
        name = transport_name(self.settings.broker_url)
        self._forget_dropped()
        self.pool, self.slots = c.pool, max(1, getattr(c.pool, "limit", None) or 1)
        self.time_limits = {"soft_timeout": c.app.conf.task_soft_time_limit, "timeout": c.app.conf.task_time_limit}
        if name == redis_transport.NAME:
            client = redis.Redis.from_url(self.settings.broker_url)
            self.transport = redis_transport.RedisBatches(client, queues, self.lanes_only)
        else:
            lanes = [lane for queue in queues for lane in lane_queues(queue)]
            self.transport = amqp_transport.AmqpBatches(
                c.connection.connection,
                lanes if self.lanes_only else [*queues, *lanes],
                self.batch_messages,
                self.slots,
                on_full=self.fill,
                declare=amqp_transport.lane_declarations(queues, self.settings.queue_type),
                windows=len(queues),
            )
        self.running = True
        self.timers = [c.hub.call_repeatedly(POLL_SECONDS, self.fill)]
        if name == redis_transport.NAME:
            # No Celery consumer restores what a dead worker held in the step's own structures.
            every = min(10, self.settings.visibility_timeout)
            self.timers.append(c.hub.call_repeatedly(every, self.restore))
            if self.settings.slow_keys:
                self.slow = SlowLanes(self.settings.slow_keys, self.transport)
                self.slow.refresh()
                self.timers.append(c.hub.call_repeatedly(SlowLanes.REFRESH_SECONDS, self.slow.refresh))
        logger.info(
            "batched ingestion on %s: up to %s messages a batch from %s, their lanes taken in turn",
            name,
            self.batch_messages,
            ", ".join(queues),
        )

    def stop(self, c: Any) -> None:
        self.running = False  # batches that finish now start no new ones
        for timer in self.timers:
            timer.cancel()
        self.timers = []
        self._forget_waiting()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _forget_waiting(self) -> None:
        while self.waiting:
            batch = self.waiting.popleft()
            batch.transport.forget(batch.tags)

    def _forget_dropped(self) -> None:
        """After a reconnect: Celery's pool.flush() dropped the batches no pool process had
        started, and their callbacks never run. The others finish, and settle, as usual."""
        for number, batch in list(self.in_flight.items()):
            if not batch.accepted:
                del self.in_flight[number]
                batch.transport.forget(batch.tags)

    def fill(self) -> None:
        """Keep every pool process busy with a batch while there is work."""
        try:
            while self.running and len(self.in_flight) < self.slots and time.monotonic() >= self.paused_until:
                batch = self.waiting.popleft() if self.waiting else self._take()
                if batch is None:
                    return
                self._dispatch(batch)
        except Exception as error:  # noqa: BLE001 - the broker went away; Celery reconnects
            logger.warning("batched ingestion cannot reach the broker (%s); trying again", type(error).__name__)
            self.paused_until = time.monotonic() + 1

    def restore(self) -> None:
        try:
            restored = self.transport.restore_older_than(self.settings.visibility_timeout)
        except Exception as error:  # noqa: BLE001 - tried again at the next interval
            logger.warning("could not restore unacknowledged messages (%s)", type(error).__name__)
            return
        if restored:
            logger.warning("restored %s message(s) a worker took and never acknowledged", restored)

    def _take(self) -> Batch | None:
        taken = self.transport.next_batch(self.batch_messages, MAX_BATCH_BYTES)
        if not taken:
            return None
        if self.slow is not None:
            self.slow.count(taken.tags)
        return Batch(next(self.numbers), self.transport, taken.tags, taken.items)

    def _dispatch(self, batch: Batch) -> None:
        self.in_flight[batch.number] = batch
        name = batch.transport.name
        handoff = Handoff(name, batch.items)
        if batch.unprocessable:
            job, args = record_unprocessable, (handoff, batch.unprocessable)
        else:
            job, args = ingest_batch, (handoff,)
        self.pool.apply_async(
            job,
            args=args,
            callback=functools.partial(self._done, batch),
            error_callback=functools.partial(self._failed, batch),
            accept_callback=functools.partial(self._accepted, batch),
            **self.time_limits,
        )

    def _accepted(self, batch: Batch, *_: Any) -> None:
        batch.accepted = True

    def _done(self, batch: Batch, _result: Any) -> None:
        self.in_flight.pop(batch.number, None)
        self.failures = 0
        self._acknowledge(batch)
        self.fill()

    def _failed(self, batch: Batch, failure: Any) -> None:
        self.in_flight.pop(batch.number, None)
        error = getattr(failure, "exception", failure)  # billiard hands over an ExceptionInfo
        why = type(error).__name__
        if isinstance(error, DatabaseUnavailable):
            delay = backoff_seconds(self.failures)
            self.failures += 1
            self.paused_until = time.monotonic() + delay
            metrics.RETRIES.labels("batch").inc()
            logger.warning("database unavailable, batch kept", extra={"retry_in": round(delay, 1)})
            self.waiting.appendleft(replace(batch, accepted=False))
        elif batch.unprocessable:
            logger.error("could not record %s unprocessable message(s) (%s); they are dropped", len(batch.items), why)
            self._acknowledge(batch)
        elif len(batch.items) > 1:
            logger.error("a batch failed (%s); its halves are tried again", why)
            self.waiting.extendleft(reversed(batch.halves(self.numbers)))
        elif batch.failures + 1 < ATTEMPTS_PER_MESSAGE:
            # Once may be bad luck (a pool process killed from outside), not the message's fault.
            logger.error("a message failed (%s); it is tried again", why)
            self.waiting.appendleft(replace(batch, failures=batch.failures + 1, accepted=False))
        else:
            logger.error("a message failed again (%s); it is recorded without its payload", why)
            self.waiting.appendleft(replace(batch, unprocessable=why, accepted=False))
        if not self.running:
            self._forget_waiting()  # stopped: what waits goes back to its queue now

    def _acknowledge(self, batch: Batch) -> None:
        try:
            batch.transport.acknowledge(batch.tags)
        except Exception as error:  # noqa: BLE001 - the broker re-delivers it; storage is idempotent
            logger.warning("could not acknowledge a stored batch (%s)", type(error).__name__)
