"""Messages broken at the transport level, each case as it was seen, on the broker where it was
seen, through a real worker: every message ends stored or dead-lettered exactly once, the good
ones are stored, the queue drains and the worker stays up."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from tests.common.databases import flushed_redis
from tests.common.factories import envelope, new_key
from tests.common.transport import (
    BATCH_FAILED,
    BROKERS,
    DROP,
    REDIS_URL,
    TRANSPORT_REASONS,
    TRANSPORT_RESOURCE,
    AmqpPublisher,
    celery_headers,
    changed,
    clean_broker,
    database_text,
    dead_letter_reasons,
    push,
    redis_message,
    secret_in,
    settled,
    stored_event_ids,
    track_body,
    transport_worker,
    wait_until_drained,
)
from tests.common.workers import database_fixtures
from userpath_client.contract import EVENTS_QUEUE, JOBS_QUEUE, TRACK_TASK

pytestmark = pytest.mark.slow


database, clean_database = database_fixtures(TRANSPORT_RESOURCE)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    yield from flushed_redis(REDIS_URL)


def new_id() -> str:
    return str(uuid.uuid4())


def good_items(key: str, count: int, prefix: str) -> list[bytes]:
    """``count`` good Redis messages of one event each, event ids ``prefix-0-0``, ``prefix-1-0``..."""
    return [redis_message(track_body(envelope(key, 1, f"{prefix}-{n}")), headers(new_id())) for n in range(count)]


def headers(message_id: str, **changes: Any) -> dict[str, Any]:
    """The contract's headers with ``changes``; a change to DROP leaves the header out."""
    return changed(celery_headers(message_id), changes)


def interleaved(good: list[bytes], broken: list[bytes]) -> list[bytes]:
    """The broken items spread evenly among the good ones."""
    items = list(good)
    step = max(1, len(good) // (len(broken) + 1))
    for position, item in enumerate(broken, start=1):
        items.insert(position * step + position - 1, item)
    return items


def assert_only_transport_reasons(engine: Engine) -> None:
    reasons = dead_letter_reasons(engine)
    assert set(reasons) <= TRANSPORT_REASONS, reasons


def test_redis_transport_breakages_among_200_good_messages_are_each_dead_lettered_once(
    clean_database: tuple[str, Engine], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Seen: one such message made its whole batch fail, given back and failed again, thousands
    of times a minute; the 200 good messages around it were never stored."""
    database_url, engine = clean_database
    _, _, key = new_key(engine)

    def body(name: str) -> bytes:  # the key in every broken body: a dead letter must not keep it
        return track_body(envelope(key, 1, f"broken-{name}"))

    broken = [
        redis_message(body("headers"), [["task", TRACK_TASK], ["id", new_id()]]),
        redis_message(body("nul"), headers(new_id(), task="userpath.track\x00")),
        redis_message(body("type"), headers(new_id()), content_type=["application/json"]),
        redis_message(body("encoding"), headers(new_id()), content_encoding=8),
        redis_message(body("number"), headers(new_id()), body=12345),
    ]
    # Only kombu's bookkeeping, never read: the queue is the list the message was taken from.
    odd_but_harmless = [
        redis_message(track_body(envelope(key, 1, "odd-delivery")), headers(new_id()), delivery_info=EVENTS_QUEUE),
        redis_message(
            track_body(envelope(key, 1, "odd-route")),
            headers(new_id()),
            delivery_info={"exchange": "", "routing_key": "r" * 400},
        ),
    ]
    good = good_items(key, 200, "good") + odd_but_harmless
    push(redis_client, EVENTS_QUEUE, interleaved(good, broken))  # before the worker starts: shared batches

    log = tmp_path / "worker.log"
    with transport_worker(REDIS_URL, database_url, log) as worker:
        settled(worker, engine, (202, len(broken)), timeout=90)
        wait_until_drained(worker)

    assert stored_event_ids(engine).keys() == {f"good-{n}-0" for n in range(200)} | {"odd-delivery-0", "odd-route-0"}
    assert_only_transport_reasons(engine)
    failures = log.read_text(errors="replace").count(BATCH_FAILED)
    assert failures <= len(broken), f"{failures} batches failed for {len(broken)} broken messages"


def test_a_dead_letter_the_database_refuses_is_stored_once_not_on_a_loop(
    clean_database: tuple[str, Engine], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Seen: a dead letter with a 300-character routing key (the queue column holds 200) failed its
    whole batch, which went back to the queue and failed again, on a loop. Whatever the batch is
    split into to find it, the other dead letters must not go in again on each round."""
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    body = track_body(envelope(key, 1, "bad"))
    bad = [
        redis_message(
            body, headers(new_id(), task="proj.unknown"), delivery_info={"exchange": "", "routing_key": "q" * 300}
        ),
        redis_message(body, headers(new_id(), task="proj.other")),
        redis_message(b"not json " + body, headers(new_id())),
        redis_message(track_body(envelope(key, 1, "x"))[:-3], headers(new_id())),
        redis_message(body, headers(new_id(), expires="2030-01-01T00:00:00+00:00")),
    ]
    push(redis_client, EVENTS_QUEUE, interleaved(good_items(key, 3, "good"), bad))

    log = tmp_path / "worker.log"
    with transport_worker(REDIS_URL, database_url, log) as worker:
        settled(worker, engine, (3, len(bad)), timeout=60, quiet_seconds=5)
        wait_until_drained(worker)

    assert stored_event_ids(engine).keys() == {f"good-{n}-0" for n in range(3)}
    assert sum(dead_letter_reasons(engine).values()) == len(bad)
    assert log.read_text(errors="replace").count(BATCH_FAILED) <= len(bad)


def test_rabbitmq_headers_that_are_not_celery_s_are_dead_lettered_and_the_worker_stays_up(
    clean_database: tuple[str, Engine], tmp_path: Path
) -> None:
    """Seen: headers like these stopped the worker (a timelimit that is not a pair: ``Unrecoverable
    error: ValueError('not enough values to unpack')``), and a dead letter the database refused (a
    NUL in the task name) went back to the queue, on a loop. Good messages sent after them must be
    stored."""
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    url = clean_broker("rabbitmq")
    broken_headers = [
        headers(new_id(), task="userpath.track\x00"),
        headers(new_id(), id=[new_id()]),
        headers(new_id(), retries="twice"),
        headers(new_id(), eta="not a time"),
        headers(new_id(), timelimit=[1]),
        headers(new_id(), id=DROP),
    ]
    log = tmp_path / "worker.log"
    with transport_worker(url, database_url, log) as worker, AmqpPublisher(url) as publisher:
        for number, broken in enumerate(broken_headers):
            publisher.publish(EVENTS_QUEUE, track_body(envelope(key, 1, f"broken-{number}")), broken)
        for number in range(5):
            publisher.publish(JOBS_QUEUE, track_body(envelope(key, 2, f"good-{number}")), headers(new_id()))
        settled(worker, engine, (10, len(broken_headers)), timeout=60)
        wait_until_drained(worker)

    assert stored_event_ids(engine).keys() == {f"good-{n}-{i}" for n in range(5) for i in range(2)}
    assert_only_transport_reasons(engine)
    assert "Unrecoverable error" not in log.read_text(errors="replace")


def test_a_key_in_line_wrapped_base64_is_not_stored_in_any_form(
    clean_database: tuple[str, Engine], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Seen: a body in base64 with a line break every 76 characters (what MIME encoders write) is
    refused by the decoder, and its dead letter kept the refused text, the key in base64 within."""
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    wrapped = base64.encodebytes(track_body(envelope(key, 3, "wrapped"))).decode()
    assert "\n" in wrapped.rstrip("\n")
    push(redis_client, EVENTS_QUEUE, [redis_message(b"", headers(new_id()), body=wrapped)])

    log = tmp_path / "worker.log"
    with transport_worker(REDIS_URL, database_url, log) as worker:
        settled(worker, engine, (0, 1), timeout=60)
        wait_until_drained(worker)

    assert_only_transport_reasons(engine)
    assert secret_in(database_text(engine), key) is None, "the raw key is in a table"
    assert secret_in(log.read_text(errors="replace"), key) is None, "the raw key is in the worker's log"


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = clean_broker(request.param)
    yield url
    clean_broker(request.param)


def test_a_broken_message_delivered_twice_is_dead_lettered_once(
    clean_database: tuple[str, Engine], broker_url: str, tmp_path: Path
) -> None:
    """Delivery is at least once: the same broken message (same id, same body) can arrive twice,
    and it is one dead letter. (On both brokers: nothing about this is Redis's or RabbitMQ's.)"""
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    body, unknown_task = track_body(envelope(key, 1, "twice")), headers(new_id(), task="proj.unknown")

    with transport_worker(broker_url, database_url, tmp_path / "worker.log") as worker:
        if worker.broker == "redis":
            item = redis_message(body, unknown_task)
            with contextlib.closing(redis.Redis.from_url(broker_url)) as client:
                push(client, EVENTS_QUEUE, [item, item])
        else:
            with AmqpPublisher(broker_url) as publisher:
                for _ in range(2):
                    publisher.publish(EVENTS_QUEUE, body, unknown_task)
        wait_until_drained(worker)  # both copies consumed and acknowledged
        settled(worker, engine, (0, 1), timeout=30, quiet_seconds=3)
