"""Beat's storage passes in a real worker on PostgreSQL: the retention pass drops a day partition
that every organization's retention has passed, the partition pass warns about and counts a row
in the DEFAULT partition, and both are counted in the worker's metrics."""

from __future__ import annotations

import datetime as dt
import socket
import urllib.request
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.factories import event_row, make_organization
from tests.common.workers import migrated_database, running_worker, wait_for, worker_environment
from userpath_worker.events import partitions
from userpath_worker.events.storage import insert_events

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_beat_drops_expired_partitions_and_watches_the_default_one(tmp_path: Path) -> None:
    url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_passes")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=500)
    far_ahead = dt.datetime(2031, 5, 5, 12, tzinfo=dt.UTC)
    with Session(engine) as session, session.begin():
        organization = make_organization(session)
        partitions.ensure_days(session.connection(), {long_ago.date()})
        insert_events(session, [event_row(organization.id, "old", long_ago)])
        insert_events(session, [event_row(organization.id, "early", far_ahead)])  # no partition: DEFAULT
    expired = f"events_p{long_ago.date():%Y%m%d}"
    broker_url = "redis://127.0.0.1:6379/5"
    redis.Redis.from_url(broker_url).flushdb()
    port = free_port()
    environment = worker_environment(
        url,
        broker_url,
        USERPATH_RETENTION_SCHEDULE="2s",
        USERPATH_PARTITIONS_SCHEDULE="2s",
        USERPATH_METRICS_PORT=str(port),
    )
    log = tmp_path / "worker.log"
    with running_worker(environment, log, "--pool=solo", "--beat", f"--schedule={tmp_path / 'celerybeat-schedule'}"):

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.read().decode()

        try:
            wait_for(lambda: "retention pass:" in log.read_text(), 30, "a retention pass")
            wait_for(lambda: "events_default holds 1 rows" in log.read_text(), 30, "the DEFAULT partition's warning")
            wait_for(
                lambda: (
                    'userpath_default_partition_rows{table="events"} 1.0' in metrics()
                    and 'userpath_retention_partitions_dropped_total{table="events"} 1.0' in metrics()
                ),
                30,
                "the passes' metrics",
            )
        except AssertionError:
            print(log.read_text(errors="replace")[-3000:])
            raise
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT to_regclass(:name)"), {"name": expired}) is None
        assert connection.scalar(text("SELECT count(*) FROM events WHERE event_id = 'old'")) == 0
        assert connection.scalar(text("SELECT count(*) FROM events WHERE event_id = 'early'")) == 1
    engine.dispose()
