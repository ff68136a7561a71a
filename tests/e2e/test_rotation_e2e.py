"""Key rotation with real processes and real volume: a celery beat process firing the pass on
a seconds-long schedule, and one pass over 100,000 keys in bounded memory."""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import time_machine
from sqlalchemy import Engine, func, insert, select

from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database
from tests.common.workers import REPOSITORY, running_worker, stop, wait_for, worker_environment
from userpath_worker import schema
from userpath_worker.db import make_engine, make_session_factory
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations.models import Organization
from userpath_worker.rotation.models import Reminder
from userpath_worker.rotation.services import BATCH_SIZE, RotationPolicy, run_pass

pytestmark = pytest.mark.slow

NOW = dt.datetime(2026, 6, 1, 3, 0, tzinfo=dt.UTC)
POLICY = RotationPolicy(
    max_age=dt.timedelta(days=90),
    unused_for=dt.timedelta(days=30),
    expiring_window=dt.timedelta(days=7),
    reminder_interval=dt.timedelta(days=7),
)
KEY_COUNT = 100_000
MEMORY_BOUND = 50 * 2**20  # bytes of Python allocations at the peak of the pass
# Seconds for the pass while tracemalloc traces every allocation, which slows it about 3 times
# (about 17 s untraced on 2 cores).
TIME_BOUND = 90.0


def fresh_database(suffix: str) -> tuple[str, Engine]:
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_{suffix}")
    engine = make_engine(url)
    schema.upgrade(engine)
    return url, engine


def insert_keys(engine: Engine, count: int, created_at: dt.datetime, expires_every: int = 0) -> None:
    """``count`` keys in one organization, inserted in bulk; every ``expires_every``-th one expired."""
    with engine.begin() as connection:
        org_id = connection.scalar(
            insert(Organization).values(name="Bulk", created_at=created_at).returning(Organization.id)
        )
        for start in range(0, count, 10_000):
            connection.execute(
                insert(ApiKey),
                [
                    {
                        "org_id": org_id,
                        "name": f"Key {number}",
                        "environment": Environment.LIVE,
                        "digest": f"{number:064x}",
                        "display": f"up_live_...{number:04d}",
                        "created_by": "bulk@example.com",
                        "created_at": created_at,
                        "expires_at": NOW - dt.timedelta(hours=1)
                        if expires_every and number % expires_every == 0
                        else None,
                    }
                    for number in range(start, min(start + 10_000, count))
                ],
            )


def test_one_pass_over_100000_keys_stays_within_its_memory_bound() -> None:
    _, engine = fresh_database("100k")
    insert_keys(engine, KEY_COUNT, NOW - dt.timedelta(days=100), expires_every=10)
    sessions = make_session_factory(engine)
    totals: Counter[str] = Counter()

    with time_machine.travel(NOW, tick=True):
        tracemalloc.start()
        started = time.monotonic()
        try:
            for batch in run_pass(sessions.begin, POLICY):
                totals.update(batch.counts())
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    print(
        f"\n100,000-key pass: {elapsed:.1f} s, peak Python allocations {peak / 2**20:.1f} MiB (batches of {BATCH_SIZE})"
    )

    assert totals == Counter(flagged=90_000, reminded=90_000, expired=10_000)
    assert peak < MEMORY_BOUND
    assert elapsed < TIME_BOUND
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Reminder)) == 90_000
    engine.dispose()


@contextlib.contextmanager
def running_beat(environment: dict[str, str], log_path: Path, schedule_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``userpath beat``: Celery beat on tasks.app, stopped (and killed if need be) on exit."""
    command = [
        sys.executable,
        "-c",
        "from userpath_worker.cli import main; main()",
        "beat",
        f"--schedule={schedule_file}",
        "--loglevel=DEBUG",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=environment, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop(process)


def test_beat_fires_the_pass_on_its_schedule_against_redis_and_postgresql(tmp_path: Path) -> None:
    database_url, engine = fresh_database("beat")
    insert_keys(engine, 3, dt.datetime.now(dt.UTC) - dt.timedelta(days=100))
    broker_url = "redis://127.0.0.1:6379/5"
    redis.Redis.from_url(broker_url).flushdb()
    environment = worker_environment(database_url, broker_url, USERPATH_ROTATION_SCHEDULE="2s")
    beat_log, worker_log = tmp_path / "beat.log", tmp_path / "worker.log"

    with (
        running_worker(environment, worker_log, "--pool=solo"),
        running_beat(environment, beat_log, tmp_path / "celerybeat-schedule"),
    ):

        def reminders_delivered() -> int:
            with engine.connect() as connection:
                return (
                    connection.scalar(
                        select(func.count()).select_from(Reminder).where(Reminder.delivered_at.is_not(None))
                    )
                    or 0
                )

        try:
            wait_for(lambda: reminders_delivered() == 3, 45, "beat's pass to flag the keys and deliver their reminders")
            # Later firings of the pass record nothing new: one reminder per key per interval.
            wait_for(lambda: worker_log.read_text().count("rotation pass:") >= 3, 30, "two more passes")
        except AssertionError:
            print(beat_log.read_text(errors="replace")[-3000:], worker_log.read_text(errors="replace")[-3000:])
            raise
    assert (tmp_path / "celerybeat-schedule").exists() or list(tmp_path.glob("celerybeat-schedule*"))
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Reminder)) == 3
        assert connection.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.flagged_at.is_not(None))) == 3
    assert "Sending due task userpath.flag_stale_keys" in beat_log.read_text()
    engine.dispose()
