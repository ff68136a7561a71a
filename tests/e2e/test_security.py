"""Organization isolation through a real worker: a key stores only in its own organization and
environment, whatever the payload says.

Proven elsewhere (see the README's Guarantees): the key leak scan of DEBUG logs, tables, dead
letters and task events, and a deleted key refused by every worker process within 5 s
(tests/e2e/test_worker_e2e.py); owner-only rules in the service API and the CLI
(tests/userpath_worker/keys/test_keys.py, tests/userpath_worker/cli/test_cli.py); no key lookup
for a malformed or mistyped key (tests/userpath_worker/events/test_ingest.py).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX, truncate_all
from tests.common.factories import envelope, new_key
from tests.common.workers import (
    FAULTS_REDIS_URL,
    empty_queues,
    migrated_database,
    producer,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event
from userpath_worker.keys.tokens import Environment


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, Engine]]:
    url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_security")
    yield url, engine
    engine.dispose()


@pytest.mark.slow
def test_a_key_stores_only_in_its_own_organization_and_environment(
    database: tuple[str, Engine], tmp_path: Path
) -> None:
    """Whatever a payload claims, events land in the key's organization, and a test key's events
    in the test environment: through a real worker, not only in the core."""
    database_url, engine = database
    truncate_all(engine)
    redis.Redis.from_url(FAULTS_REDIS_URL).flushdb()
    empty_queues(FAULTS_REDIS_URL)
    org_a, key_a_id, key_a = new_key(engine)
    org_b, _, _ = new_key(engine)
    org_t, key_t_id, test_key = new_key(engine, Environment.TEST)
    claims = {"org_id": org_b, "organization": org_b, "environment": "live", "api_key_id": 1}
    app = producer(FAULTS_REDIS_URL)
    for message in (
        envelope(key_a, 5, "a", properties=claims, context=claims),
        {**envelope(key_a, 1, "claim"), "org_id": org_b},  # not a field: refused
        envelope(test_key, 3, "t", properties=claims),
    ):
        app.send_task(TRACK_TASK, args=[message], queue=EVENTS_QUEUE)
    app.send_task(
        WEBHOOK_TASK,
        args=[
            {
                "api_key": key_a,
                "provider": "stripe",
                "delivery_id": "evt_isolation",
                "received_at": dt.datetime.now(dt.UTC).isoformat(),
                "body": json.dumps({"type": "invoice.paid", "org_id": org_b}),
            }
        ],
        queue=WEBHOOKS_QUEUE,
    )

    with running_worker(worker_environment(database_url, FAULTS_REDIS_URL), tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (5 + 3 + 1, 1), timeout=60)

    with Session(engine) as session:
        stored = {(e.org_id, e.api_key_id, e.environment) for e in session.scalars(select(Event))}
        refused = session.scalars(select(DeadLetter)).one()
    assert stored == {(org_a, key_a_id, "live"), (org_t, key_t_id, "test")}
    assert (refused.reason, refused.org_id) == ("invalid_envelope", org_a)
