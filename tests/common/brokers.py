"""The brokers the tests talk to, and reading back what a producer put on them."""

from __future__ import annotations

import time

import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message

from tasks.ingestion.amqp_transport import lane_declarations
from userpath_client.contract import INGESTION_QUEUES, exchange_of, lane_list, lane_queues, ready_lanes

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
CLIENT_REDIS_URL = "redis://127.0.0.1:6379/7"  # the client tests' own database: flushed by them


def lanes_of(broker_url: str, queue: str) -> list[str]:
    """Where a producer may have put a message for ``queue``: the queue and its lanes (contract)."""
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        try:
            return [queue, *(lane_list(queue, lane.decode()) for lane in client.zrange(ready_lanes(queue), 0, -1))]
        finally:
            client.close()
    return [queue, *lane_queues(queue)]


def declare_ingestion_queues(broker_url: str, purge: bool = False) -> None:
    """RabbitMQ: the ingestion queues and their lanes, as a worker declares them (and emptied)."""
    with Connection(broker_url) as connection:
        channel = connection.channel()
        for name in INGESTION_QUEUES:
            Queue(name, Exchange(exchange_of(name)), routing_key=name)(channel).declare()
        for lane in lane_declarations(INGESTION_QUEUES, "classic"):
            lane.declare(connection.connection.channel())
        if purge:
            for name in (*INGESTION_QUEUES, *(lane for queue in INGESTION_QUEUES for lane in lane_queues(queue))):
                channel.queue_purge(name)


def read_messages(broker_url: str, queue: str, expected: int, timeout: float = 10.0) -> list[Message]:
    """Take ``expected`` messages off ``queue`` and its lanes (bounded in time), then make sure no
    more arrive. A key's messages are all in one lane, so they come back in the order sent."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    if not broker_url.startswith("redis") and queue in INGESTION_QUEUES:
        declare_ingestion_queues(broker_url)  # a fresh broker has no lanes yet: getting from one is NOT_FOUND
    with Connection(broker_url) as connection:
        channel = connection.channel()

        def take() -> Message | None:
            for name in lanes_of(broker_url, queue):
                message = Queue(name)(channel).get(no_ack=True, accept=["json"])
                if message is not None:
                    return message
            return None

        while len(messages) < expected and time.monotonic() < deadline:
            message = take()
            if message is None:
                time.sleep(0.02)
            else:
                messages.append(message)
        time.sleep(0.1)
        extra = take()
    assert extra is None, f"more than {expected} messages on {queue}"
    assert len(messages) == expected, f"{len(messages)} of {expected} messages on {queue} after {timeout}s"
    return messages
