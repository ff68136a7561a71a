"""The brokers the tests talk to, and reading back what a producer put on them."""

from __future__ import annotations

import time

from kombu import Connection, Queue
from kombu.message import Message

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
CLIENT_REDIS_URL = "redis://127.0.0.1:6379/7"  # the client tests' own database: flushed by them


def read_messages(broker_url: str, queue: str, expected: int, timeout: float = 10.0) -> list[Message]:
    """Take ``expected`` messages off ``queue`` (bounded in time), then make sure no more arrive."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    with Connection(broker_url) as connection:
        bound = Queue(queue)(connection.channel())
        while len(messages) < expected and time.monotonic() < deadline:
            message = bound.get(no_ack=True, accept=["json"])
            if message is None:
                time.sleep(0.02)
            else:
                messages.append(message)
        time.sleep(0.1)
        extra = bound.get(no_ack=True, accept=["json"])
    assert extra is None, f"more than {expected} messages on {queue}"
    assert len(messages) == expected, f"{len(messages)} of {expected} messages on {queue} after {timeout}s"
    return messages
