"""Batched ingestion through real worker processes: a message the database refuses is bisected out
of its batch, and quorum queues are consumed in batches."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX, flushed_redis
from tests.common.factories import envelope as e2e_envelope
from tests.common.factories import new_key
from tests.common.workers import (
    counts,
    migrated_database,
    producer,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_client import UserPath
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_worker.db import make_session_factory
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.events.replay import replay_dead_letters
from userpath_worker.organizations.models import Organization

REDIS_URL = "redis://127.0.0.1:6379/13"

pytestmark = pytest.mark.slow


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    yield from flushed_redis(REDIS_URL)


def test_a_message_the_database_refuses_is_dead_lettered_alone_and_the_rest_of_its_batch_stored(
    broker: redis.Redis, tmp_path: Path
) -> None:
    database_url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_batching")
    with engine.begin() as connection:  # a refusal our validation cannot foresee: a bug, for the worker
        connection.execute(
            text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.name = 'Poison' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
            )
        )
        connection.execute(
            text("CREATE TRIGGER refuse_poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_poison()")
        )
    _, _, key = new_key(engine)
    app = producer(REDIS_URL)
    for message in (e2e_envelope(key, 2, "first"), e2e_envelope(key, 1, "poison"), e2e_envelope(key, 2, "last")):
        if message["batch"][0]["event_id"].startswith("poison"):
            message["batch"][0]["event"] = "Poison"
        app.send_task(TRACK_TASK, args=[message], queue=EVENTS_QUEUE)  # queued first: one batch

    log = tmp_path / "worker.log"
    with running_worker(worker_environment(database_url, REDIS_URL), log, "--concurrency=1"):
        settle_at(engine, (4, 1), timeout=30)

    with Session(engine) as session:
        [letter] = session.scalars(select(DeadLetter)).all()
        assert letter.reason == Reason.INTERNAL_ERROR.value and "the database refused" in letter.detail
        assert letter.org_id is not None and letter.api_key_id is not None  # its owner can replay it
        assert key not in json.dumps(letter.payload) and "Poison" in json.dumps(letter.payload)
    assert '"messages": 3' in log.read_text()  # the three shared a batch

    with engine.begin() as connection:  # the bug is fixed
        connection.execute(text("DROP TRIGGER refuse_poison ON events"))
    sessions = make_session_factory(engine)
    with sessions() as session:
        organization = session.get(Organization, letter.org_id)
    [replayed] = list(replay_dead_letters(sessions.begin, organization, "owner@example.com", Reason.INTERNAL_ERROR))
    assert replayed.stored == 1 and counts(engine) == (5, 1)
    engine.dispose()


def test_quorum_queues_are_consumed_in_batches_and_the_client_publishes_to_them_undeclared(tmp_path: Path) -> None:
    vhost = f"{TEST_DATABASE_PREFIX}_quorum"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)
    broker_url = rabbitmq_vhost(vhost)
    database_url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_quorum")
    _, _, key = new_key(engine)
    environment = worker_environment(database_url, broker_url, USERPATH_QUEUE_TYPE="quorum")
    log = tmp_path / "worker.log"
    with running_worker(environment, log, "--concurrency=2"):
        with UserPath(key, broker_url) as userpath:
            for number in range(300):
                userpath.track("Signed Up", user_id=f"user-{number}")
        settle_at(engine, (300, 0), timeout=30)
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type", "messages"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "userpath.events\tquorum\t0" in listed and "userpath.maintenance\tclassic" in listed
    assert "batched ingestion on amqp" in log.read_text()
    engine.dispose()
