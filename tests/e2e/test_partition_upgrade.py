"""Upgrading a running installation: ``userpath db upgrade`` moves a plain ``events`` table (the
schema before 0012) into day partitions while a real worker ingests, losing and duplicating
nothing, and holding ingestion back for at most a short swap.

CI moves 100,000 rows; ``USERPATH_TEST_UPGRADE_ROWS=1000000`` moves a million (the issue's size,
run by hand: see the README's Performance section).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database
from tests.common.factories import OWNER, envelope
from tests.common.signing import TEST_KEY_PEPPER
from tests.common.workers import (
    FAULTS_REDIS_URL,
    REPOSITORY,
    empty_queues,
    producer,
    running_worker,
    wait_for,
    worker_environment,
)
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK
from userpath_worker import schema
from userpath_worker.db import make_engine, utcnow
from userpath_worker.events import partitions
from userpath_worker.keys import tokens
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations

pytestmark = pytest.mark.slow

ROWS = int(os.environ.get("USERPATH_TEST_UPGRADE_ROWS", "100000"))
DAYS = 60  # the old rows are spread over the last 60 days
SENDING_SECONDS_AT_MOST = 600


def upgrade_to(engine: Engine, revision: str) -> None:
    with engine.connect() as connection:
        config = schema.alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def key_of_the_previous_release(engine: Engine) -> tuple[int, str]:
    """(org id, plaintext) of a key made with only the columns a database at 0012 has: the later
    online migrations add key columns this release's ORM would write."""
    plaintext = tokens.generate(Environment.LIVE)
    with Session(engine) as session, session.begin():
        organization = organizations.create_organization(session, "Upgraded Inc", OWNER)
        session.execute(
            insert(ApiKey.__table__).values(
                org_id=organization.id,
                name="App X Production Server",
                environment=Environment.LIVE.value,
                digest=tokens.digest(plaintext, TEST_KEY_PEPPER),
                display=tokens.display_form(plaintext),
                created_by=OWNER,
                created_at=utcnow(),
            )
        )
        return organization.id, plaintext


def count(engine: Engine, pattern: str) -> tuple[int, int]:
    """(rows, distinct event ids) whose event_id is LIKE ``pattern``."""
    with engine.connect() as connection:
        rows, distinct = connection.execute(
            text("SELECT count(*), count(DISTINCT event_id) FROM events WHERE event_id LIKE :pattern"),
            {"pattern": pattern},
        ).one()
    return rows, distinct


def test_db_upgrade_moves_a_plain_events_table_into_partitions_while_a_worker_ingests(tmp_path: Path) -> None:
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_upgrade")
    engine = make_engine(url)
    upgrade_to(engine, "0008")
    # The release before partitioning, with ROWS events: one in 60 (n % 60 == 0) received today.
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO events (org_id, api_key_id, environment, source, event_id, name, properties, "
                '"timestamp", received_at, occurred_at) '
                "SELECT 1, 1, 'live', 'server', 'old-' || n, 'Old', jsonb_build_object('n', n), at, at, at "
                "FROM generate_series(1, :rows) AS n, "
                "LATERAL (SELECT now() - (n % :days) * interval '1 day' - interval '1 minute') AS received(at)"
            ),
            {"rows": ROWS, "days": DAYS},
        )
    upgrade_to(engine, "0012")  # the short, additive step: this release's workers run from here
    org_id, key = key_of_the_previous_release(engine)
    assert org_id == 1  # the old rows' organization

    empty_queues(FAULTS_REDIS_URL)
    sent = [0]
    sending = threading.Event()
    sending.set()

    def send() -> None:
        app = producer(FAULTS_REDIS_URL)
        deadline = time.monotonic() + SENDING_SECONDS_AT_MOST
        while sending.is_set() and time.monotonic() < deadline:
            app.send_task(TRACK_TASK, args=[envelope(key, 10, f"new-{sent[0]}")], queue=EVENTS_QUEUE)
            sent[0] += 1
            time.sleep(0.02)  # about 500 events a second

    log = tmp_path / "worker.log"
    environment = worker_environment(url, FAULTS_REDIS_URL)
    with running_worker(environment, log, "--concurrency=2"):
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_for(lambda: count(engine, "new-%")[0] > 0, 30, "the worker to store events before the upgrade")
        stored_during: list[int] = []
        started = time.monotonic()
        upgrade = subprocess.Popen(
            [str(Path(sys.executable).with_name("userpath")), "db", "upgrade", "--json"],
            env=environment,
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while upgrade.poll() is None and time.monotonic() - started < SENDING_SECONDS_AT_MOST:
            stored_during.append(count(engine, "new-%")[0])
            time.sleep(0.5)
        output, errors = upgrade.communicate(timeout=60)
        upgrade_seconds = time.monotonic() - started
        sending.clear()
        sender.join(timeout=10)
        assert upgrade.returncode == 0, errors
        assert json.loads(output) == {"revision": schema.head_revision(engine)}
        # Re-sent after the move: today's old events (in event_ids since the copy) are kept once.
        app = producer(FAULTS_REDIS_URL)
        resent = [f"old-{n}" for n in range(DAYS, DAYS * 11, DAYS)]
        app.send_task(
            TRACK_TASK, args=[{"api_key": key, "batch": [_event(event_id) for event_id in resent]}], queue=EVENTS_QUEUE
        )
        app.send_task(TRACK_TASK, args=[envelope(key, 10, "after")], queue=EVENTS_QUEUE)
        expected_new = sent[0] * 10
        wait_for(
            lambda: count(engine, "new-%")[0] >= expected_new and count(engine, "after-%")[0] == 10, 120, "the rest"
        )
        time.sleep(2)  # a duplicate would show up now

    assert count(engine, "old-%") == (ROWS, ROWS)
    assert count(engine, "new-%") == (expected_new, expected_new)
    with engine.connect() as connection:
        assert partitions.is_partitioned(connection, "events")
        assert connection.scalar(text("SELECT to_regclass('events_unpartitioned')")) is None
        assert connection.scalar(text("SELECT count(*) FROM dead_letters")) == 0
        assert partitions.default_partition_rows(connection, "events") == 0
    # Ingestion went on while the rows were copied, and the swap held its lock for an instant.
    assert len(set(stored_during)) > 2, stored_during
    swap = re.search(r"the swap held events for ([0-9.]+) s", errors)
    assert swap and float(swap.group(1)) < 2.0, errors
    handled = [json.loads(line) for line in log.read_text().splitlines() if '"batch handled"' in line]
    assert sum(entry.get("duplicates", 0) for entry in handled) == len(resent)
    print(f"moved {ROWS} rows in {upgrade_seconds:.1f} s; {errors.strip().splitlines()[-1]}")


def _event(event_id: str) -> dict[str, str]:
    return {"event": "Old", "event_id": event_id, "user_id": "old", "timestamp": "2026-01-01T00:00:00+00:00"}
