"""Batches on RabbitMQ: a prefetch window on a channel of the step's own, messages gathered
until a batch is full or its first message has waited ``GATHER_SECONDS``, and one
``multiple=True`` acknowledgement for every run of settled deliveries.

Fairness: the step consumes each ingestion queue, its shards and its overflow queue (the
contract's lanes), each with a window of its own, and a batch takes ``QUANTUM`` messages from each
queue that has some in turn, so a quiet key's shard waits for no flood's backlog.

A ``multiple`` ack settles every delivery up to its tag on the channel, so it is sent only for
the longest prefix of deliveries that are all settled: a batch that finishes before an older
one waits for it. Nothing is ever requeued: a batch that fails is kept and tried again (see
the step), and what a closed channel held, RabbitMQ delivers again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.ingestion.decoder import Oversized, Transported
from tasks.ingestion.redis_transport import Taken
from userpath_client.contract import exchange_of, ingestion_queue_of, lane_queue_arguments, lane_queues
from userpath_worker.events.services import Refused

logger = logging.getLogger("userpath.worker")

NAME = "amqp"
GATHER_SECONDS = 0.02  # the latency a batch that is not full adds at most
MAX_PREFETCH = 65_535  # basic.qos's prefetch count is 16 bits
# RabbitMQ bounds a window by messages only (no prefetch_size): the count is set from the
# messages' average size so that what the window holds stays about this size.
WINDOW_BYTES = 32 * 1024 * 1024
ASSUMED_MESSAGE_BYTES = 32 * 1024  # until the first batch tells: a large envelope
QUANTUM = 10  # messages a queue gives a batch in its turn

# (queue, body, content type, content encoding, headers): what the pool job needs of a delivery.
Delivered = tuple[str, "bytes | Oversized", Any, Any, Any]


class AmqpBatches:
    name = NAME

    def __init__(
        self,
        connection: Any,
        queues: Sequence[str],
        batch_messages: int,
        slots: int,
        on_full: Callable[[], None],
        declare: Sequence[LaneQueue] = (),
        windows: int = 1,
    ) -> None:
        """``declare``: queues to declare first (the lanes); ``windows``: how many windows of
        WINDOW_BYTES the consumers share: a queue's window holds WINDOW_BYTES / ``windows``; under a
        flood only the flooded queues' fill."""
        self.batch_messages, self.slots, self.windows, self.on_full = batch_messages, slots, windows, on_full
        self.channel = connection.channel()
        for lane in declare:
            lane.declare(self.channel)
        self.average_bytes = float(ASSUMED_MESSAGE_BYTES)
        self.prefetch = self._window()
        self.channel.basic_qos(0, self.prefetch, False)
        self.gathered: dict[str, deque[tuple[int, Delivered]]] = {queue: deque() for queue in queues}
        self.turn = 0  # where the next batch starts taking queues in turn
        self.gathered_count = self.gathered_bytes = 0
        self.first_arrival = 0.0
        self.unsettled: deque[int] = deque()  # delivery tags, in delivery order
        self.settled: set[int] = set()  # settled, but behind an unsettled older one
        self.resizing = False
        self.consumers = {queue: self._consume(queue) for queue in queues}

    def _consume(self, queue: str) -> str:
        # A lane's delivery travels on as its ingestion queue's: the queue names the source.
        return self.channel.basic_consume(
            queue, callback=functools.partial(self._arrived, queue, ingestion_queue_of(queue))
        )

    def _arrived(self, queue: str, ingestion_queue: str, message: Any) -> None:
        properties = message.properties
        tag = message.delivery_info["delivery_tag"]
        if not self.gathered_count:
            self.first_arrival = time.monotonic()
        # An oversized body never travels on to a pool process: its dead letter needs only this.
        body = Oversized.of(message.body) or message.body
        self.gathered_count += 1
        self.gathered[queue].append(
            (
                tag,
                (
                    ingestion_queue,
                    body,
                    properties.get("content_type"),
                    properties.get("content_encoding"),
                    properties.get("application_headers"),
                ),
            )
        )
        self.gathered_bytes += _size(body)
        self.unsettled.append(tag)
        if self.gathered_count >= self.batch_messages and not self.resizing:
            self.on_full()

    def next_batch(self, messages: int, max_bytes: int) -> Taken | None:
        """A full batch, or whatever was gathered once its first message has waited long enough:
        QUANTUM messages from each queue in turn."""
        if not self.gathered_count:
            return None
        full = self.gathered_count >= messages or self.gathered_bytes >= max_bytes
        if not full and time.monotonic() - self.first_arrival < GATHER_SECONDS:
            return None
        tags, items, size = [], [], 0
        queues = list(self.gathered.values())
        self.turn = (self.turn + 1) % len(queues)
        while len(items) < messages and size < max_bytes and len(items) < self.gathered_count:
            for gathered in queues[self.turn :] + queues[: self.turn]:
                for _ in range(min(QUANTUM, len(gathered))):
                    if len(items) >= messages or size >= max_bytes:
                        break
                    tag, delivered = gathered.popleft()
                    tags.append(tag)
                    items.append(delivered)
                    size += _size(delivered[1])
            if not any(queues):
                break
        self.gathered_count -= len(items)
        self.gathered_bytes -= size
        self.first_arrival = time.monotonic()
        self._resize(size / len(items))
        return Taken(tags, items)

    def _window(self) -> int:
        """Every pool process's batch and the one being gathered, within WINDOW_BYTES."""
        by_size = WINDOW_BYTES // (self.windows * max(1, int(self.average_bytes)))
        return max(self.slots + 1, min(MAX_PREFETCH, self.batch_messages * (self.slots + 1), by_size))

    def _resize(self, batch_average_bytes: float) -> None:
        self.average_bytes = 0.8 * self.average_bytes + 0.2 * batch_average_bytes
        window = self._window()
        if self.resizing or self.prefetch / 1.25 <= window <= self.prefetch * 1.25:
            return
        # A consumer keeps the prefetch count it started with, so each consumes again. Its
        # deliveries not yet acknowledged stay on the channel, and their tags stay valid.
        self.resizing = True  # deliveries that arrive while we wait below are only gathered
        try:
            self.prefetch = window
            self.channel.basic_qos(0, window, False)
            for queue, consumer_tag in self.consumers.items():
                self.channel.basic_cancel(consumer_tag)
                self.consumers[queue] = self._consume(queue)
        finally:
            self.resizing = False

    def acknowledge(self, tags: Sequence[int]) -> None:
        self.settled.update(tags)
        last = None
        while self.unsettled and self.unsettled[0] in self.settled:
            last = self.unsettled.popleft()
            self.settled.discard(last)
        if last is not None:
            self.channel.basic_ack(last, multiple=True)

    def forget(self, tags: Sequence[int]) -> None:
        """Nothing to do: RabbitMQ delivers again what a closed channel held."""

    def restore_older_than(self, seconds: float) -> int:
        return 0  # RabbitMQ re-delivers a dead worker's messages as soon as its connection closes

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone already
            self.channel.close()


@dataclass(frozen=True)
class LaneQueue:
    """A shard or overflow queue, bound by its name to its ingestion queue's exchange."""

    name: str
    exchange: str
    arguments: dict[str, object]

    def declare(self, channel: Any) -> None:
        """As Celery declares the ingestion queues (durable, direct exchange); idempotent."""
        channel.exchange_declare(self.exchange, "direct", durable=True, auto_delete=False)
        channel.queue_declare(self.name, durable=True, auto_delete=False, arguments=self.arguments)
        channel.queue_bind(self.name, self.exchange, routing_key=self.name)


def lane_declarations(queues: Sequence[str], queue_type: str) -> list[LaneQueue]:
    """The shards and overflow queue of each of ``queues``."""
    return [
        LaneQueue(lane, exchange_of(queue), lane_queue_arguments(queue_type))
        for queue in queues
        for lane in lane_queues(queue)
    ]


def _size(body: bytes | Oversized) -> int:
    return 0 if isinstance(body, Oversized) else len(body)


def transported(item: Delivered) -> Transported | Refused:
    queue, body, content_type, content_encoding, headers = item
    if isinstance(body, Oversized):
        return body.refused(queue)
    return Transported(headers, body, content_type, content_encoding, queue)
