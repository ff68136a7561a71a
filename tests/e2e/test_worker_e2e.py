"""End to end: real worker processes consume from the real Redis or RabbitMQ on 127.0.0.1 and
write to the real PostgreSQL. Producers here know only task names, as a non-Python one would."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Producer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.brokers import RABBITMQ_URL
from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database, table_dump, truncate_all
from tests.common.factories import envelope, new_key, now
from tests.common.workers import (
    REPOSITORY,
    counts,
    empty_queues,
    producer,
    running_worker,
    wait_for,
    worker_environment,
)
from userpath_client.contract import EVENTS_QUEUE, JOBS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker import schema
from userpath_worker.db import make_engine
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event, Source
from userpath_worker.keys import tokens
from userpath_worker.keys.services import KeyService

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, Engine]]:
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_e2e")
    engine = make_engine(url)
    schema.upgrade(engine)
    yield url, engine
    engine.dispose()


@pytest.fixture
def clean_database(database: tuple[str, Engine]) -> tuple[str, Engine]:
    url, engine = database
    truncate_all(engine)
    return url, engine


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    url = REDIS_URL if request.param == "redis" else RABBITMQ_URL
    empty_queues(url)
    return url


def protocol2_headers(task: str) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None}


def publish_raw(broker_url: str, queue: str, body: Any, task: str = TRACK_TASK, **options: Any) -> None:
    with Connection(broker_url) as connection:
        Producer(connection).publish(body, routing_key=queue, headers=protocol2_headers(task), **options)


def send_mixed_traffic(broker_url: str, key: str) -> tuple[int, int]:
    """Good, duplicated and bad messages of every kind; returns the (events, dead letters) expected."""
    app = producer(broker_url)
    first = envelope(key, 10, "a")
    for message in (first, envelope(key, 10, "b"), envelope(key, 10, "c"), first):  # the last is a re-send
        app.send_task(TRACK_TASK, args=[message], queue=EVENTS_QUEUE)
    app.send_task(
        TRACK_TASK,
        args=[envelope(key, 5, "job", context={"job": {"name": "nightly", "run_id": "r1"}})],
        queue=JOBS_QUEUE,
    )
    mixed = envelope(key, 2, "m")
    mixed["batch"] += [
        {"event": "No User", "timestamp": now()},
        {"event": "Naive", "user_id": "u", "timestamp": "2026-01-01T00:00:00"},
    ]
    app.send_task(TRACK_TASK, args=[mixed], queue=EVENTS_QUEUE)
    stripe = {
        "api_key": key,
        "provider": "stripe",
        "delivery_id": "evt_1",
        "received_at": now(),
        "headers": {},
        "body": json.dumps({"type": "invoice.paid"}),
    }
    app.send_task(WEBHOOK_TASK, args=[stripe], queue=WEBHOOKS_QUEUE)
    app.send_task(WEBHOOK_TASK, args=[stripe], queue=WEBHOOKS_QUEUE)  # redelivered by the provider
    bad_checksum = key[:-1] + ("0" if key[-1] != "0" else "1")
    app.send_task(TRACK_TASK, args=[envelope(bad_checksum, 3, "x")], queue=EVENTS_QUEUE)
    app.send_task(TRACK_TASK, args=[envelope(key, 1, "two"), {}], queue=EVENTS_QUEUE)
    app.send_task("userpath.delete_everything", args=[envelope(key, 1, "u")], queue=EVENTS_QUEUE)
    publish_raw(broker_url, EVENTS_QUEUE, [[envelope(key, 1, "p")], {}, {}], serializer="pickle")
    publish_raw(
        broker_url,
        EVENTS_QUEUE,
        b'[[{"api_key": "' + key.encode() + b'", "batch": [',
        content_type="application/json",
        content_encoding="utf-8",
    )
    return 10 * 3 + 5 + 2 + 1, 2 + 1 + 1 + 1 + 1 + 1


def test_every_message_is_stored_once_or_dead_lettered(clean_database, broker_url: str, tmp_path: Path) -> None:
    database_url, engine = clean_database
    org_id, key_id, key = new_key(engine)
    expected = send_mixed_traffic(broker_url, key)
    log = tmp_path / "worker.log"
    with running_worker(worker_environment(database_url, broker_url), log, "--concurrency=2"):
        wait_for(lambda: counts(engine) == expected, 60, f"{expected} (events, dead letters); have {counts(engine)}")
        time.sleep(1)  # anything extra would show up now
    assert counts(engine) == expected

    with Session(engine) as session:
        stored = session.scalars(select(Event)).all()
        letters = session.scalars(select(DeadLetter).order_by(DeadLetter.id)).all()
        dump = table_dump(session, engine)
    assert {(e.org_id, e.api_key_id) for e in stored} == {(org_id, key_id)}
    assert sorted({e.source for e in stored}) == sorted({Source.SERVER, Source.JOB, Source.WEBHOOK})
    assert sorted(d.reason for d in letters) == sorted(
        [
            "invalid_event",
            "invalid_event",
            "bad_checksum",
            "invalid_envelope",
            "unknown_task",
            "undecodable",
            "undecodable",
        ]
    )
    assert key not in log.read_text() and key not in dump
    assert not tokens.KEY_PATTERN.search(dump)
    # The logs count truthfully: the re-sent envelope's 10 events and the redelivered webhook are
    # duplicates, not stored twice.
    handled = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and ("batch handled" in line or "message handled" in line)
    ]
    assert sum(entry["stored"] for entry in handled) == expected[0]
    assert sum(entry["duplicates"] for entry in handled) == 10 + 1


def test_secrets_stay_out_of_debug_logs_tables_and_task_events(clean_database, tmp_path: Path) -> None:
    database_url, engine = clean_database
    empty_queues(REDIS_URL)
    _, _, key = new_key(engine)
    app = producer(REDIS_URL)
    seen_events: list[dict[str, Any]] = []

    def capture_task_events(stop: threading.Event) -> None:
        with Connection(REDIS_URL) as connection:
            receiver = app.events.Receiver(connection, handlers={"*": seen_events.append})
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue
                except OSError:
                    continue

    stop = threading.Event()
    listener = threading.Thread(target=capture_task_events, args=(stop,), daemon=True)
    patterns = redis.Redis.from_url(REDIS_URL).pubsub_numpat  # kombu subscribes to task events by pattern
    subscribed_before = patterns()
    listener.start()
    wait_for(lambda: patterns() > subscribed_before, 10, "the task-event listener to subscribe")
    log = tmp_path / "worker.log"
    try:
        # Task events exist for messages run as Celery tasks: not batched (tasks/batching.py).
        unbatched = worker_environment(database_url, REDIS_URL, USERPATH_INGEST_BATCH_MESSAGES="1")
        with running_worker(unbatched, log, "--concurrency=1", "--loglevel=DEBUG", "--task-events"):
            expected = send_mixed_traffic(REDIS_URL, key)
            wait_for(lambda: counts(engine) == expected, 60, "the traffic to be handled")
            wait_for(lambda: sum(e.get("type") == "task-received" for e in seen_events) >= 10, 10, "task events")
    finally:
        stop.set()
        listener.join(5)

    received = [e for e in seen_events if e.get("type") == "task-received"]
    assert all("up_live_" in e["args"] for e in received if e.get("name") == TRACK_TASK), (
        "argsrepr shows the display form"
    )
    with Session(engine) as session:
        dump = table_dump(session, engine)
    haystack = log.read_text() + json.dumps(seen_events, default=str) + dump
    assert "DEBUG" in log.read_text()
    assert not tokens.KEY_PATTERN.search(haystack)


def test_a_deleted_key_is_refused_by_every_worker_process_within_5_seconds(clean_database, tmp_path: Path) -> None:
    database_url, engine = clean_database
    empty_queues(REDIS_URL)
    _, key_id, key = new_key(engine)
    app = producer(REDIS_URL)
    with running_worker(
        worker_environment(database_url, REDIS_URL),
        tmp_path / "worker.log",
        "--concurrency=2",
        "--prefetch-multiplier=1",
    ):
        for n in range(20):  # warm both processes' caches
            app.send_task(TRACK_TASK, args=[envelope(key, 1, f"before-{n}")], queue=EVENTS_QUEUE)
        wait_for(lambda: counts(engine) == (20, 0), 30, "the first events")
        with Session(engine) as session, session.begin():
            KeyService(session).delete(key_id, "owner@example.com")
        time.sleep(5)
        for n in range(20):
            app.send_task(TRACK_TASK, args=[envelope(key, 1, f"after-{n}")], queue=EVENTS_QUEUE)
        wait_for(lambda: counts(engine) == (20, 20), 30, "the refusals")
    with Session(engine) as session:
        assert set(session.scalars(select(DeadLetter.reason))) == {"deleted_key"}


def test_a_worker_refuses_to_start_on_a_schema_that_is_behind(tmp_path: Path) -> None:
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_behind")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "--loglevel=WARNING"],
        env=worker_environment(url, REDIS_URL),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "run `userpath db upgrade` first" in result.stderr
    assert "Traceback" not in result.stderr
