"""Scale-out: three worker nodes on one broker drain the same preloaded queues while one of them
is SIGKILLed mid-drain (main process and pool) and started again. Afterwards every event is
stored once, every dead letter is recorded once, nothing is left waiting or unacknowledged,
and the surviving nodes are still running.

Only real processes, the broker and the database are involved: no worker internals, so the
test holds whichever consumer (per message or batched) the worker uses on either broker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from config.celery import QUEUES
from tests.common.databases import TEST_DATABASE_PREFIX, flushed_redis
from tests.common.signing import TEST_KEY_PEPPER
from tests.common.workers import (
    counts,
    database_fixtures,
    kill_group,
    pool_children,
    producer,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    wait_for,
    worker_environment,
)
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.keys import tokens
from userpath_worker.keys.services import KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations.services import create_organization

pytestmark = pytest.mark.slow

# Resources of this module alone, so that other runs of the suite are not disturbed (a second run
# on the same machine sets its own Redis database here, as for the fault tests).
SCALE_REDIS_URL = os.environ.get("USERPATH_TEST_SCALE_REDIS_URL", "redis://127.0.0.1:6379/15")
SCALE_RESOURCE_NAME = f"{TEST_DATABASE_PREFIX}_scale"  # the PostgreSQL database and the RabbitMQ vhost

NODES = ("node1", "node2", "node3")
VICTIM = "node1"  # started first, so certainly holding messages when it is killed
# Redis gives a dead node's messages back only after this many seconds; RabbitMQ at once.
VISIBILITY_TIMEOUT_SECONDS = 5
# Small batches (a setting; the worker's default is 1000 messages): many short transactions, so the
# drain outlasts the nodes' start-up and the kill lands between commits, not after the last one.
BATCH_MESSAGES = 20

ENVELOPES = 10_000
EVENTS_PER_ENVELOPE = 20
INVALID_EVENT_EVERY = 10  # one more event, refused (unknown field), in every 10th envelope
UNKNOWN_KEY_EVERY = 50  # every 50th envelope (offset by 25, so never one of the above) has a key nobody owns

DRAIN_SECONDS = 180  # on 2 cores, with the Redis visibility timeout after the kill


database, clean_database = database_fixtures(SCALE_RESOURCE_NAME)


@pytest.fixture
def scale_redis() -> Iterator[redis.Redis]:
    # A flush also drops what a killed node of an earlier run left unacknowledged.
    yield from flushed_redis(SCALE_REDIS_URL)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("scale_redis")
        return SCALE_REDIS_URL
    url = rabbitmq_vhost(SCALE_RESOURCE_NAME)
    recreate_queues(url)
    return url


def recreate_queues(rabbitmq_url: str) -> None:
    """Delete our queues (messages and bindings of an earlier run) and declare them as the worker does."""
    with Connection(rabbitmq_url) as connection:
        channel = connection.channel()
        for name in QUEUES:
            channel.queue_delete(name)
            Queue(name, Exchange(name), routing_key=name)(channel).declare()


def messages_left(broker_url: str) -> int:
    """Messages still waiting in our queues or delivered and not yet acknowledged."""
    if broker_url.startswith("redis"):
        with Connection(broker_url) as connection:
            channel = connection.default_channel
            waiting = sum(Queue(name)(channel).queue_declare().message_count for name in QUEUES)
        # Delivered, unacknowledged messages wait in kombu's "unacked" hash, or in a batching consumer's
        # own "...unacked": the database is ours alone, so every such hash is counted.
        with contextlib.closing(redis.Redis.from_url(broker_url)) as client:
            held = sum(client.hlen(name) for name in client.scan_iter(match="*unacked", _type="hash"))
        return waiting + held
    vhost = broker_url.rsplit("/", 1)[1]
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],  # messages = ready + unacked
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in listing.splitlines()]
    return sum(int(row[1]) for row in rows if len(row) == 2 and row[0] in QUEUES)


def new_key(engine: Engine) -> str:
    """The plaintext of a fresh live key of a new organization, committed."""
    with Session(engine) as session, session.begin():
        organization = create_organization(session, f"Org {uuid.uuid4().hex[:8]}", "owner@example.com")
        _, plaintext = KeyService(session, TEST_KEY_PEPPER).create(organization, "Scale-out test", "owner@example.com")
        return plaintext


def envelope(key: str, number: int, with_invalid_event: bool) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).isoformat()
    batch: list[dict[str, Any]] = [
        {"event_id": f"scale-{number}-{n}", "event": "Page Viewed", "user_id": f"user-{n}", "timestamp": now}
        for n in range(EVENTS_PER_ENVELOPE)
    ]
    if with_invalid_event:
        # The contract refuses unknown fields: this event alone is dead-lettered.
        batch.append({"event_id": f"scale-{number}-typo", "event": "Typo", "userId": "u", "timestamp": now})
    return {"api_key": key, "sent_at": now, "batch": batch}


def preload(broker_url: str, key: str) -> tuple[int, int]:
    """Publish the whole load before any node starts; returns the (events, dead letters) expected."""
    unknown_key = tokens.generate(Environment.LIVE)  # well-formed, right checksum, in no database
    expected_events = expected_dead_letters = 0
    app = producer(broker_url)
    with app.producer_or_acquire() as publisher:
        for number in range(ENVELOPES):
            with_invalid_event = number % INVALID_EVENT_EVERY == 0
            if number % UNKNOWN_KEY_EVERY == UNKNOWN_KEY_EVERY // 2:
                message = envelope(unknown_key, number, with_invalid_event)
                expected_dead_letters += 1  # the whole envelope, as one dead letter
            else:
                message = envelope(key, number, with_invalid_event)
                expected_events += EVENTS_PER_ENVELOPE
                expected_dead_letters += int(with_invalid_event)
            app.send_task(TRACK_TASK, args=[message], queue=EVENTS_QUEUE, producer=publisher)
    return expected_events, expected_dead_letters


def node(
    environment: dict[str, str], tmp_path: Path, name: str, log_name: str | None = None
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """One worker node, one pool process (the machine has 2 cores for three nodes)."""
    log = tmp_path / f"{log_name or name}.log"
    return running_worker(environment, log, "--concurrency=1", "-n", f"{name}@%h")


def repeated_dead_letters(engine: Engine) -> list[str]:
    """Dead letters recorded more than once (every one of the load is different), shortened."""
    with engine.connect() as connection:
        letters = connection.execute(select(DeadLetter.reason, DeadLetter.payload)).all()
    recorded = Counter(f"{reason} {json.dumps(payload, sort_keys=True)}" for reason, payload in letters)
    return [letter[:120] for letter, times in recorded.items() if times > 1]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1]  # after the command name
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state.startswith("Z")  # a zombie is dead, only not yet reaped


def test_three_nodes_drain_one_broker_through_the_loss_of_one(
    clean_database: tuple[str, Engine], broker_url: str, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    expected = preload(broker_url, new_key(engine))
    environment = worker_environment(
        database_url,
        broker_url,
        USERPATH_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_SECONDS),
        USERPATH_INGEST_BATCH_MESSAGES=str(BATCH_MESSAGES),
    )

    with contextlib.ExitStack() as nodes:
        workers = {name: nodes.enter_context(node(environment, tmp_path, name)) for name in NODES}
        wait_for(lambda: counts(engine)[0] > 0, 60, "the drain to be under way")
        stored_before_kill = counts(engine)[0]
        assert stored_before_kill < expected[0], (
            f"the drain finished before the kill ({stored_before_kill} of {expected[0]} events stored): "
            "the test proved nothing; preload more"
        )

        victim = workers[VICTIM]
        victim_pool = pool_children(victim.pid)
        assert victim_pool, f"{VICTIM} has a pool process to lose"
        kill_group(victim)
        wait_for(lambda: all(gone(pid) for pid in victim_pool), 10, f"{VICTIM}'s pool to die with it")

        # A log of its own: running_worker waits for "ready." in the log, which the old one has already.
        workers[VICTIM] = nodes.enter_context(node(environment, tmp_path, VICTIM, log_name=f"{VICTIM}-restarted"))
        try:
            wait_for(
                lambda: counts(engine)[0] >= expected[0] and messages_left(broker_url) == 0,
                DRAIN_SECONDS,
                "every message to be handled and acknowledged",
                interval=1,
            )
        except AssertionError as timeout:
            left = messages_left(broker_url)
            raise AssertionError(f"{timeout}: have {counts(engine)} of {expected}, {left} messages left") from None
        # Nothing is left to deliver, so what is recorded is final: a message handled twice shows now.
        repeated = repeated_dead_letters(engine)
        assert not repeated, f"{len(repeated)} dead letters recorded more than once, e.g. {repeated[:3]}"
        settle_at(engine, expected, timeout=10, quiet_seconds=VISIBILITY_TIMEOUT_SECONDS)
        assert messages_left(broker_url) == 0
        stopped = [name for name, worker in workers.items() if worker.poll() is not None]
        assert not stopped, f"nodes {stopped} stopped during the drain"
