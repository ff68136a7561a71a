"""The worker's boundary against a hostile producer, through a real worker on each broker: no key
in any log line at DEBUG, in any encoding; a 40 MB message refused by its length alone; a message
nested 1,000 levels deep an invalid event. Each case was reproduced on an earlier main."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.factories import envelope, new_key
from tests.common.transport import (
    AmqpPublisher,
    Worker,
    celery_headers,
    redis_message,
    secret_in,
    settled,
    track_body,
    wait_until_drained,
)
from tests.common.workers import database_fixtures, empty_queues, rabbitmq_vhost, running_worker, worker_environment
from userpath_client.contract import EVENTS_QUEUE
from userpath_worker.deadletter.models import DeadLetter

pytestmark = pytest.mark.slow

BOUNDARY = f"{TEST_DATABASE_PREFIX}_boundary"  # the PostgreSQL database and the RabbitMQ vhost
REDIS_URL = "redis://127.0.0.1:6379/11"

database, clean_database = database_fixtures(BOUNDARY)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return REDIS_URL if request.param == "redis" else rabbitmq_vhost(BOUNDARY)


@contextlib.contextmanager
def debug_worker(broker_url: str, database_url: str, log: Path) -> Iterator[Worker]:
    empty_queues(broker_url)
    environment = worker_environment(database_url, broker_url, USERPATH_LOG_LEVEL="DEBUG")
    broker = "redis" if broker_url.startswith("redis") else "rabbitmq"
    with running_worker(environment, log, "--concurrency=1") as process:
        yield Worker(broker, broker_url, process, log)


def send(broker_url: str, items: list[tuple[bytes, dict[str, Any], dict[str, Any]]]) -> None:
    """Each item (body, headers, properties) as a raw message on the events queue."""
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        for body, headers, properties in items:
            client.lpush(EVENTS_QUEUE, redis_message(body, headers, **properties))
        client.close()
        return
    with AmqpPublisher(broker_url) as publisher:
        for body, headers, properties in items:
            publisher.publish(EVENTS_QUEUE, body, headers, **properties)


def new_headers(**extra: Any) -> dict[str, Any]:
    return celery_headers(str(uuid.uuid4())) | extra


def test_no_key_reaches_a_debug_log_line_in_any_encoding(
    clean_database: tuple[str, Engine], broker_url: str, tmp_path: Path
) -> None:
    """Seen on Redis: Celery logs a pool job's arguments at DEBUG, and a base64-decoded line gave
    back the whole key of every message in the batch."""
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    encoded_key = base64.b64encode(key.encode()).decode()
    percent_key = "".join(f"%{byte:02X}" for byte in key.encode())
    good = [(track_body(envelope(key, 1, f"good-{n}")), new_headers(), {}) for n in range(20)]
    odd_but_good = [
        (track_body(envelope(key, 1, "in-a-header")), new_headers(x_note=encoded_key), {}),
        (track_body(envelope(key, 1, "percent", properties={"note": percent_key})), new_headers(), {}),
    ]
    refused = [
        (track_body(envelope(key, 1, "unknown")), new_headers(task="proj.tasks.add"), {}),
        (zlib.compress(track_body(envelope(key, 1, "zipped"))), new_headers(compression="application/x-gzip"), {}),
        (encoded_key.encode(), new_headers(), {"content_type": "application/octet-stream"}),
    ]
    log = tmp_path / "worker.log"
    with debug_worker(broker_url, database_url, log) as worker:
        send(broker_url, good + odd_but_good + refused)
        settled(worker, engine, (len(good) + len(odd_but_good), len(refused)), timeout=90)
        wait_until_drained(worker)

    lines = log.read_text(errors="replace").splitlines()
    assert any("TaskPool: Apply" in line and "deliveries>" in line for line in lines), "Celery's DEBUG line is there"
    for number, line in enumerate(lines, start=1):
        for form in (line, unquote(line)):
            found = secret_in(form, key)
            assert found is None, f"line {number} holds the key {found}: {line[:300]}"


def test_a_40_mb_message_is_refused_by_its_length_within_a_second_and_deep_nesting_is_an_invalid_event(
    clean_database: tuple[str, Engine], broker_url: str, tmp_path: Path
) -> None:
    """Seen: a 40 MB message on Redis held the only pool process 18.9 s, 16.8 s of it scanning the
    payload for keys; a message nested 1,000 levels deep was an internal_error (RecursionError)."""
    database_url, engine = clean_database
    _, _, key = new_key(engine)
    huge = track_body(envelope(key, 1, "huge", properties={"padding": "x" * (40 * 1024 * 1024)}))
    deep_properties = json.dumps({"deep": "@"}).replace('"@"', "[" * 1000 + "]" * 1000)
    deep = track_body(envelope(key, 1, "deep")).replace(
        b'"user_id"', b'"properties": ' + deep_properties.encode() + b', "user_id"', 1
    )
    good = [(track_body(envelope(key, 1, f"good-{n}")), new_headers(), {}) for n in range(5)]
    log = tmp_path / "worker.log"
    with debug_worker(broker_url, database_url, log) as worker:
        send(broker_url, [(huge, new_headers(), {}), (deep, new_headers(), {}), *good])
        settled(worker, engine, (len(good), 2), timeout=120)

    with Session(engine) as session:
        letters = {letter.reason: letter for letter in session.scalars(select(DeadLetter))}
    assert set(letters) == {"too_large", "invalid_event"}
    assert letters["too_large"].payload is None and "bytes; the limit is 1048576" in letters["too_large"].detail
    assert letters["invalid_event"].payload is None and "more than 254 levels" in letters["invalid_event"].detail
    batches = [json.loads(line) for line in log.read_text(errors="replace").splitlines() if '"batch handled"' in line]
    assert batches and max(batch["seconds"] for batch in batches) < 1.0, [batch["seconds"] for batch in batches]
