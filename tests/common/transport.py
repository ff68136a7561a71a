"""Messages broken at the transport level, sent as raw as they come to a real worker's broker,
and what a test needs to see where they went. Shared by tests/e2e/test_transport_*.py.

- ``redis_message``: one list item in kombu's Redis form (docs/contract.md, "(a) Redis") with any
  field replaced by any JSON value, or left out; ``push`` LPUSHes items as producers do.
- ``AmqpPublisher``: AMQP messages published with py-amqp, with publisher confirms, to the default
  exchange, with any properties, any application headers and any body bytes.
- ``pending_messages``: what is still on the broker, in flight included.
- ``database_text`` and ``secret_in``: every table as text, and a secret searched for in a text
  as it is and inside every base64-looking string.

The resources are these tests' own, so other test runs on the machine are not disturbed:
Redis database 14, and a PostgreSQL database and a RabbitMQ vhost named ``TRANSPORT_RESOURCE``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import amqp
import redis
from sqlalchemy import Engine, select

from config.celery import QUEUES
from tests.common.databases import TEST_DATABASE_PREFIX, table_dump
from tests.common.workers import counts, empty_queues, rabbitmq_vhost, running_worker, wait_for, worker_environment
from userpath_client.contract import EVENTS_QUEUE, INGESTION_QUEUES, LANE_INFIX, TRACK_TASK, lane_queues
from userpath_client.wire import task_headers as _task_headers
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event

REDIS_URL = "redis://127.0.0.1:6379/14"
TRANSPORT_RESOURCE = f"{TEST_DATABASE_PREFIX}_transport"  # the PostgreSQL database and the RabbitMQ vhost
BROKERS = ("redis", "rabbitmq")
NO_WORKFLOW = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# The reasons a message broken at the transport level may get; the decoder chooses which.
TRANSPORT_REASONS = frozenset({"invalid_envelope", "unknown_task", "undecodable"})
BATCH_FAILED = "a batch failed"  # the batched consumer's log line when it gives a batch back whole


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()  # as a field's or a header's new value: leave it out


def celery_headers(message_id: str, task: str = TRACK_TASK) -> dict[str, Any]:
    """The protocol-2 headers of docs/contract.md, "The message", as the bundled client writes them."""
    return _task_headers(task, message_id, "({'api_key': 'up_live_AbCd...wxyz', 'batch': <1 events>},)")


def changed(fields: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with ``changes`` applied; a change to ``DROP`` removes the field."""
    result = dict(fields)
    for name, value in changes.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def track_body(envelope: Any) -> bytes:
    """A ``userpath.track`` body as the contract has it: ``[[envelope], {}, no workflow]``."""
    return json.dumps([[envelope], {}, NO_WORKFLOW]).encode()


# redis_message's changes: where each field is in the document. Properties are replaced before
# the fields inside them are.
_REDIS_FIELDS = {
    "headers": (),
    "content_type": (),
    "content_encoding": (),
    "body": (),
    "properties": (),
    "delivery_info": ("properties",),
    "body_encoding": ("properties",),
}
_REDIS_NAMES = {"content_type": "content-type", "content_encoding": "content-encoding"}


def redis_message(payload: bytes, headers: Any, queue: str = EVENTS_QUEUE, **changes: Any) -> bytes:
    """One list item as kombu's Redis transport stores it, the body ``payload`` in base64.

    ``changes`` replace fields with any JSON value, or ``DROP`` them: ``headers``, ``content_type``,
    ``content_encoding``, ``body`` (as stored, after base64), ``properties``, and inside the
    properties ``delivery_info`` and ``body_encoding``.
    """
    unknown = set(changes) - set(_REDIS_FIELDS)
    if unknown:
        raise TypeError(f"not a field of a Redis message: {sorted(unknown)}")
    message_id = headers.get("id") if isinstance(headers, dict) else None
    document: dict[str, Any] = {
        "body": base64.b64encode(payload).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": message_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    for name, path in _REDIS_FIELDS.items():
        if name in changes:
            container = document
            for step in path:
                container = container[step]
            key = _REDIS_NAMES.get(name, name)
            if changes[name] is DROP:
                del container[key]
            else:
                container[key] = changes[name]
    return json.dumps(document).encode()


def push(client: redis.Redis, queue: str, items: Sequence[bytes]) -> None:
    """LPUSH as producers do: the worker pops from the other end, so ``items[0]`` comes first."""
    if items:
        client.lpush(queue, *items)


class AmqpPublisher:
    """Raw AMQP messages through py-amqp, with publisher confirms: once ``publish`` returns, the
    broker has the message. Queues are the worker's (a running worker has declared them)."""

    def __init__(self, broker_url: str) -> None:
        url = urlparse(broker_url)
        self.connection = amqp.Connection(
            host=f"{url.hostname}:{url.port or 5672}",
            userid=unquote(url.username or "guest"),
            password=unquote(url.password or "guest"),
            virtual_host=unquote(url.path[1:]) or "/",
            confirm_publish=True,
            connect_timeout=10,
        )
        self.connection.connect()
        self.channel = self.connection.channel()

    def publish(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, Any] | None,
        content_type: str | None = "application/json",
        content_encoding: str | None = "utf-8",
        **properties: Any,
    ) -> None:
        """Publish to the default exchange, routed to ``queue``. Application headers may hold any
        AMQP value (str, int, bool, None, list, dict, bytes, datetime, Decimal, float); a property
        that is None or ``DROP`` is left out."""
        message_id = (headers or {}).get("id")
        properties = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "application_headers": dict(headers) if headers is not None else None,
            "delivery_mode": 2,
            "priority": 0,
            "correlation_id": message_id if isinstance(message_id, str) else None,
            **properties,
        }
        sent = {name: value for name, value in properties.items() if value is not None and value is not DROP}
        self.channel.basic_publish(amqp.Message(body, **sent), exchange="", routing_key=queue, confirm_timeout=30)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()

    def __enter__(self) -> AmqpPublisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def pending_messages(broker_url: str) -> dict[str, int]:
    """Messages still on the broker, per queue, those delivered but not acknowledged included.

    Redis: each queue's length, and every hash named ``...unacked`` (kombu's, and a batching
    consumer's own): what consumers hold. RabbitMQ: rabbitmqctl's ``messages``, ready +
    unacknowledged; a passive queue_declare would count only the ready ones, and a worker holding
    a message forever would go unseen.
    """
    if broker_url.startswith("redis"):
        with contextlib.closing(redis.Redis.from_url(broker_url)) as client:
            held = {name.decode(): client.hlen(name) for name in client.scan_iter(match="*unacked", _type="hash")}
            lanes = {name.decode(): client.llen(name) for name in client.scan_iter(match=f"*{LANE_INFIX}*")}
            return {queue: client.llen(queue) for queue in QUEUES} | lanes | held
    vhost = unquote(urlparse(broker_url).path[1:]) or "/"
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    depths = dict(line.split("\t") for line in listing.splitlines() if line.count("\t") == 1)
    lanes = [lane for queue in INGESTION_QUEUES for lane in lane_queues(queue)]
    return {queue: int(depths.get(queue, 0)) for queue in (*QUEUES, *lanes)}


def clean_broker(broker: str) -> str:
    """The URL of these tests' own ``broker`` ("redis" or "rabbitmq"), its queues emptied."""
    url = REDIS_URL if broker == "redis" else rabbitmq_vhost(TRANSPORT_RESOURCE)
    empty_queues(url)
    return url


@dataclass(frozen=True)
class Worker:
    """A running worker of these tests: its broker, its process and its log."""

    broker: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def death_notice(self) -> str:
        return f"the worker exited ({self.process.returncode}):\n{self.log_since(0)[-3000:]}"


@contextlib.contextmanager
def transport_worker(broker_url: str, database_url: str, log: Path) -> Iterator[Worker]:
    """A real worker with two pool processes on these tests' broker and database."""
    broker = "redis" if broker_url.startswith("redis") else "rabbitmq"
    with running_worker(worker_environment(database_url, broker_url), log, "--concurrency=2") as process:
        yield Worker(broker, broker_url, process, log)


def settled(
    worker: Worker, engine: Engine, expected: tuple[int, int], timeout: float, quiet_seconds: float = 2.0
) -> None:
    """Wait until (stored events, dead letters) is ``expected`` and stays there a while. A worker
    that dies, or a count past the expected one (counts never go down), fails the wait at once."""

    def done_or_beyond() -> bool:
        have = counts(engine)
        return have == expected or have[0] > expected[0] or have[1] > expected[1] or not worker.is_alive()

    try:
        wait_for(done_or_beyond, timeout, f"{expected} (events, dead letters)")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; have {counts(engine)}") from None
    assert worker.is_alive(), worker.death_notice()
    assert counts(engine) == expected, f"expected {expected} (events, dead letters), have {counts(engine)}"
    time.sleep(quiet_seconds)  # a duplicate, a late extra or a dead letter inserted on a loop shows up now
    assert counts(engine) == expected, f"{expected} (events, dead letters) did not stay: {counts(engine)}"
    assert worker.is_alive(), worker.death_notice()


def wait_until_drained(worker: Worker, timeout: float = 30.0) -> None:
    """Wait until nothing is left on the broker, in flight included."""
    try:
        wait_for(lambda: not any(pending_messages(worker.url).values()), timeout, "the queues to drain", interval=0.5)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; left: {pending_messages(worker.url)}") from None


def stored_event_ids(engine: Engine) -> Counter[str]:
    with engine.connect() as connection:
        return Counter(connection.scalars(select(Event.event_id)))


def dead_letter_reasons(engine: Engine) -> Counter[str]:
    with engine.connect() as connection:
        return Counter(connection.scalars(select(DeadLetter.reason)))


def database_text(engine: Engine) -> str:
    """Every row of every table as text."""
    with engine.connect() as connection:
        return table_dump(connection, engine)  # a Connection executes text as a Session does


# A line break inside a stored or logged string: escaped once or more (\n, \\n) or as it is. A
# producer's line-wrapped base64 is one string again without them.
_LINE_BREAK = re.compile(r"\\+[nr]|[\r\n]")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}")


def secret_in(text: str, secret: str, depth: int = 2) -> str | None:
    """Where ``secret`` is in ``text``: "as it is", "in base64" (also base64 of base64, up to
    ``depth``), or None. A base64 run may begin inside the text around it, so every alignment
    of it is decoded."""
    if secret in text:
        return "as it is"
    if depth == 0:
        return None
    for run in _BASE64_RUN.findall(_LINE_BREAK.sub("", text)):
        for shift in range(4):
            aligned = run[shift:]
            aligned = aligned[: len(aligned) - 1] if len(aligned) % 4 == 1 else aligned + "=" * (-len(aligned) % 4)
            decoded = base64.b64decode(aligned).decode("latin-1")  # the last partial quantum too
            if secret_in(decoded, secret, depth - 1):
                return "in base64"
    return None
