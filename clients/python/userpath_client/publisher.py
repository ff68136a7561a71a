"""The one rule for putting a contract message on the broker, shared by the client's sender thread
and the worker's HTTP edge (``userpath_worker.edge``).

On Redis a message is pushed onto the list named as its queue (kombu's default exchange); on
RabbitMQ it goes to the queue's own exchange, with publisher confirms, once a passive declare has
shown that the worker made the queue. Nothing is ever declared, so a producer user that may only
publish is enough. ``publish`` returns only once the broker has the message (Redis' reply to
LPUSH, RabbitMQ's confirm) and raises on any failure; the caller decides whether to retry.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kombu import Connection, Producer

from userpath_client.contract import DEFAULT_EXCHANGE, exchange_of
from userpath_client.wire import transport_options


class Publisher:
    """One connection to the broker, made on first use and dropped on the first failure.

    Not thread-safe: one per thread (kombu's connections are not shared between threads).
    """

    def __init__(self, broker_url: str, timeout: float) -> None:
        self._broker_url = broker_url
        self._timeout = timeout
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._amqp = False  # RabbitMQ: publish to the queue's exchange, once it is known to exist
        self._queues_found: set[str] = set()  # on this connection

    @property
    def connected(self) -> bool:
        """Whether a connection made earlier will be used (it may have died since)."""
        return self._producer is not None

    def publish(self, queue: str, body: bytes, message: dict[str, Any]) -> None:
        """Publish ``body`` with ``message`` (``wire.Encoder.message``'s headers and properties)."""
        try:
            producer = self._ensure_producer()
            if self._amqp and queue not in self._queues_found:
                # Never declared, so that a producer user needs no permission but to write to the
                # queue's exchange: a passive declare (which needs none) fails while no worker has
                # made the queue, and the message is refused here instead of dropped unroutable.
                producer.channel.queue_declare(queue=queue, passive=True)
                self._queues_found.add(queue)
            producer.publish(
                body,
                exchange=exchange_of(queue) if self._amqp else DEFAULT_EXCHANGE,
                routing_key=queue,
                retry=False,  # callers retry (or answer) themselves
                **message,
            )
        except BaseException:
            self.close()  # a connection that failed once is not trusted again
            raise

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = self._producer = None

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            scheme = self._broker_url.partition("://")[0]
            self._connection = Connection(
                self._broker_url,
                connect_timeout=self._timeout,
                transport_options=transport_options(scheme, self._timeout),
            )
            # One connection attempt (kombu's default_channel would retry for connect_timeout):
            # the caller retries, or answers that the broker is unavailable.
            self._connection.connect()
            self._producer = Producer(self._connection.channel())
            self._amqp = self._connection.transport.driver_type == "amqp"
            self._queues_found.clear()
        return self._producer
