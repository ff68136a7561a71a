"""The two brokers the worker consumes from, as the benchmark empties, fills and inspects them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from typing import Protocol

import amqp
import redis

from bench.harness import BenchError
from bench.messages import TaskMessage
from tasks.ingestion.amqp_transport import lane_declarations

REDIS_URL = "redis://127.0.0.1:6379/11"
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/11"  # nothing listens on port 1: the client only buffers
RABBITMQ_HOST = "127.0.0.1:5672"
RABBITMQ_VHOST = "userpath_bench"
RABBITMQ_URL = f"amqp://guest:guest@{RABBITMQ_HOST}/{RABBITMQ_VHOST}"

# Published messages RabbitMQ may hold unconfirmed, and how long it may take to confirm one.
_UNCONFIRMED_WINDOW = 1000
_CONFIRM_TIMEOUT_SECONDS = 30


class Broker(Protocol):
    name: str  # as on the command line and in the JSON
    label: str  # as in the printed table
    url: str  # the worker's USERPATH_BROKER_URL

    def empty(self) -> None:
        """Nothing left from an earlier run: no message, no unacknowledged delivery, no binding."""

    def declare(self, queue: str) -> None:
        """Make ``queue`` and its lanes as a worker does, so that producers may publish before one starts."""

    def preload(self, queue: str, messages: Iterable[TaskMessage]) -> int:
        """Put every message on ``queue`` as the contract's producers do; returns the count."""

    def depth(self, queue: str) -> int:
        """The messages waiting on ``queue``."""

    def version(self) -> str:
        """The server's version, for the report's machine section."""


class Redis:
    name = "redis"
    label = "Redis"
    url = REDIS_URL

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def empty(self) -> None:
        self.client().flushdb()  # database 11 is the benchmark's own

    def declare(self, queue: str) -> None:
        """Nothing to make: a list or a lane exists once a message is pushed onto it."""

    def preload(self, queue: str, messages: Iterable[TaskMessage], chunk: int = 1000) -> int:
        client = self.client()
        pushed = 0
        pending: list[bytes] = []
        for message in messages:
            pending.append(message.redis_document(queue))
            if len(pending) == chunk:
                client.lpush(queue, *pending)
                pushed += len(pending)
                pending.clear()
        if pending:
            client.lpush(queue, *pending)
            pushed += len(pending)
        return pushed

    def depth(self, queue: str) -> int:
        return int(self.client().llen(queue))

    def version(self) -> str:
        return str(self.client().info("server")["redis_version"])


class RabbitMQ:
    name = "rabbitmq"
    label = "RabbitMQ"
    url = RABBITMQ_URL

    def empty(self) -> None:
        _rabbitmqctl("delete_vhost", RABBITMQ_VHOST, check=False)  # fails when it does not exist yet
        _rabbitmqctl("add_vhost", RABBITMQ_VHOST)
        _rabbitmqctl("set_permissions", "-p", RABBITMQ_VHOST, "guest", ".*", ".*", ".*")

    def declare(self, queue: str) -> None:
        with self._connection() as connection:
            channel = connection.channel()
            # As the worker declares it (config/celery.py): Queue(name, Exchange(name), routing_key=name).
            channel.exchange_declare(queue, "direct", durable=True, auto_delete=False)
            channel.queue_declare(queue, durable=True, auto_delete=False)
            channel.queue_bind(queue, queue, routing_key=queue)
            for lane in lane_declarations([queue], "classic"):  # where the edge and the client publish
                lane.declare(channel)

    def preload(self, queue: str, messages: Iterable[TaskMessage]) -> int:
        """Publish persistent messages to the default exchange, at most a window of them unconfirmed."""
        unconfirmed: set[int] = set()

        def on_ack(delivery_tag: int, multiple: bool) -> None:
            unconfirmed.difference_update(
                {tag for tag in unconfirmed if tag <= delivery_tag} if multiple else {delivery_tag}
            )

        def on_nack(delivery_tag: int, multiple: bool) -> None:
            raise BenchError(f"RabbitMQ refused message {delivery_tag} on {queue}")

        self.declare(queue)
        with self._connection() as connection:
            channel = connection.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(on_ack)
            channel.events["basic_nack"].add(on_nack)
            published = 0
            for message in messages:
                channel.basic_publish(message.amqp_message(), exchange="", routing_key=queue)
                published += 1  # delivery tags count the channel's publishes from 1
                unconfirmed.add(published)
                while len(unconfirmed) >= _UNCONFIRMED_WINDOW:
                    connection.drain_events(timeout=_CONFIRM_TIMEOUT_SECONDS)
            while unconfirmed:
                connection.drain_events(timeout=_CONFIRM_TIMEOUT_SECONDS)
        return published

    def depth(self, queue: str) -> int:
        with self._connection() as connection:
            return int(connection.channel().queue_declare(queue, passive=True).message_count)

    def version(self) -> str:
        return _rabbitmqctl("version").stdout.strip()

    def _connection(self) -> amqp.Connection:
        return amqp.Connection(RABBITMQ_HOST, userid="guest", password="guest", virtual_host=RABBITMQ_VHOST)


def _rabbitmqctl(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *arguments], capture_output=True, text=True, timeout=60, check=check)


REDIS = Redis()
BROKERS: dict[str, Broker] = {broker.name: broker for broker in (REDIS, RabbitMQ())}
