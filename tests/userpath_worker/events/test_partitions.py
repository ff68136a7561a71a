"""Events at scale on PostgreSQL: day partitions made ahead, a watched DEFAULT partition, exactly
once across partitions (event_ids), and retention that drops whole partitions. SQLite keeps one
table: the retention cases run on both."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from typing import Any

import pytest
import time_machine
from sqlalchemy import Connection, Engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.common.factories import event_row, make_organization
from userpath_worker.db import is_transient
from userpath_worker.events import partitions, retention, storage
from userpath_worker.events.models import Event
from userpath_worker.events.storage import insert_events
from userpath_worker.organizations import services as organizations

# A Sunday: the day after is a Monday, the first day of an event_ids week.
SUNDAY = dt.datetime(2027, 1, 10, 23, 50, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _cheaper_statement_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a process that saw no re-sent event yet."""
    monkeypatch.setattr(storage, "_claim_around", 0)


@pytest.fixture
def postgres(session: Session) -> Connection:
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("partitions are PostgreSQL's; SQLite keeps one table")
    return session.connection()


def store_at(session: Session, moment: dt.datetime, *rows: dict[str, Any]) -> set[tuple[int, str]]:
    """Insert ``rows`` with the clock at ``moment`` (event_ids' weeks follow the clock)."""
    with time_machine.travel(moment, tick=False):
        return insert_events(session, list(rows))


def partition_of(session: Session, event_id: str) -> str:
    return session.execute(
        text("SELECT tableoid::regclass::text FROM events WHERE event_id = :id"), {"id": event_id}
    ).scalar_one()


def stored(session: Session, event_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Event).where(Event.event_id == event_id)) or 0


def insert_days_ago(session: Session, now: dt.datetime, days: tuple[int, ...], **org_ids: int) -> None:
    """For each organization (by prefix) an event ``{prefix}-{days ago}`` received each of ``days`` ago."""
    for days_ago in days:
        moment = now - dt.timedelta(days=days_ago)
        insert_events(
            session, [event_row(org_id, f"{prefix}-{days_ago}", moment) for prefix, org_id in org_ids.items()]
        )


def make_days(connection: Connection, first: dt.datetime, days: int) -> None:
    partitions.ensure_partitions(connection, first.date(), days_ahead=days)


def test_the_migrations_make_partitions_ahead_and_the_pass_makes_what_is_missing(postgres: Connection) -> None:
    today = dt.datetime.now(dt.UTC).date()
    names = {part.name for part in partitions.partitions(postgres, "events")}
    for ahead in range(partitions.DAYS_AHEAD + 1):
        assert f"events_p{today + dt.timedelta(days=ahead):%Y%m%d}" in names
    weeks = {part.name for part in partitions.partitions(postgres, "event_ids")}
    assert f"event_ids_p{partitions.week_of(today):%Y%m%d}" in weeks
    later = today + dt.timedelta(days=30)
    made = partitions.ensure_partitions(postgres, later)
    assert f"events_p{later + dt.timedelta(days=partitions.DAYS_AHEAD):%Y%m%d}" in made
    assert partitions.ensure_partitions(postgres, later) == []  # nothing twice


def test_a_resent_event_is_stored_once_across_a_day_boundary(session: Session, postgres: Connection) -> None:
    make_days(postgres, SUNDAY - dt.timedelta(days=3), 3)
    wednesday = SUNDAY - dt.timedelta(days=4)  # 23:50, the week's middle
    thursday = wednesday + dt.timedelta(minutes=20)
    assert store_at(session, wednesday, event_row(1, "resent", wednesday)) == {(1, "resent")}
    assert store_at(session, thursday, event_row(1, "resent", thursday), event_row(1, "new", thursday)) == {(1, "new")}
    assert stored(session, "resent") == 1
    assert partition_of(session, "resent") != partition_of(session, "new")


@pytest.mark.parametrize("minutes_into_the_week", [30, 61, 60 * 24 * 6])
def test_a_resent_event_is_stored_once_across_a_week_boundary(
    session: Session, postgres: Connection, minutes_into_the_week: int
) -> None:
    """The first copy claimed in the week before; the second arrives in the week's first hour
    (claimed in both weeks), just after it (the week before probed), or six days later."""
    make_days(postgres, SUNDAY - dt.timedelta(days=1), 8)
    again = SUNDAY + dt.timedelta(minutes=10 + minutes_into_the_week)
    assert store_at(session, SUNDAY, event_row(1, "resent", SUNDAY)) == {(1, "resent")}
    assert store_at(session, again, event_row(1, "resent", again)) == set()
    assert stored(session, "resent") == 1


def test_a_resent_event_is_stored_again_only_after_the_dedupe_window(session: Session, postgres: Connection) -> None:
    """The window: at least 7 days, here 14 days and more after the first copy's week ended."""
    make_days(postgres, SUNDAY - dt.timedelta(days=1), 16)
    store_at(session, SUNDAY, event_row(1, "old", SUNDAY))
    week_later = SUNDAY + dt.timedelta(days=7)
    assert store_at(session, week_later, event_row(1, "old", week_later)) == set()
    two_weeks_later = SUNDAY + dt.timedelta(days=15)
    assert store_at(session, two_weeks_later, event_row(1, "old", two_weeks_later)) == {(1, "old")}


def test_a_batch_with_an_event_claimed_this_week_stores_the_others_and_writes_each_events_row_once(
    session: Session, postgres: Connection
) -> None:
    """The cheaper claim fails on the re-sent event, before any events row is written, and is rolled
    back; the batch then goes through the statement that claims around it."""
    make_days(postgres, SUNDAY - dt.timedelta(days=5), 5)
    wednesday = SUNDAY - dt.timedelta(days=4)
    store_at(session, wednesday, event_row(1, "resent", wednesday))
    later = wednesday + dt.timedelta(minutes=5)
    batch = [event_row(1, f"new-{n}", later) for n in range(3)] + [event_row(1, "resent", later)]
    assert store_at(session, later, *batch) == {(1, f"new-{n}") for n in range(3)}
    assert stored(session, "resent") == 1
    assert session.scalar(select(func.count()).select_from(Event)) == 4  # each events row once
    inserted = "SELECT sum(n_tup_ins) FROM pg_stat_xact_user_tables WHERE relname LIKE :tables"
    assert postgres.scalar(text(inserted), {"tables": "event\\_ids\\_%"}) > 4  # it was tried
    assert postgres.scalar(text(inserted), {"tables": "events\\_p%"}) == 4  # no events row wasted


def test_after_a_batch_with_a_resent_event_the_next_ones_are_claimed_around_at_once(
    session: Session, postgres: Connection
) -> None:
    make_days(postgres, SUNDAY - dt.timedelta(days=5), 5)
    wednesday = SUNDAY - dt.timedelta(days=4)
    tried: list[str] = []  # the cheaper claim, once for each batch it was tried for

    def counted(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement == storage._CLAIM_THIS_WEEK:
            tried.append(statement)

    event.listen(postgres, "before_cursor_execute", counted)
    store_at(session, wednesday, event_row(1, "resent", wednesday))
    assert store_at(session, wednesday, event_row(1, "resent", wednesday), event_row(1, "new", wednesday)) == {
        (1, "new")
    }
    for number in range(storage.CLAIM_AROUND_AFTER_A_RESEND + 1):
        assert store_at(session, wednesday, event_row(1, f"then-{number}", wednesday)) == {(1, f"then-{number}")}
    assert len(tried) == 3  # the first, the re-sent, and again after CLAIM_AROUND_AFTER_A_RESEND batches


def test_two_copies_in_flight_at_once_in_the_same_week_are_stored_once(engine: Engine) -> None:
    """The second copy's claim waits for the first's transaction; once that commits, it fails and
    the batch is stored by the statement that claims around it: the other event only."""
    if engine.dialect.name != "postgresql":
        pytest.skip("event_ids is PostgreSQL's")
    now = dt.datetime.now(dt.UTC)
    if storage._at_week_start(now):
        now += storage.WEEK_START_OVERLAP
    first, other = f"in-flight-{uuid.uuid4()}", f"in-flight-{uuid.uuid4()}"
    second_stored: list[set[tuple[int, str]]] = []

    def store_the_second_copy() -> None:
        with Session(engine) as second, second.begin():
            second_stored.append(insert_events(second, [event_row(1, first, now), event_row(1, other, now)]))

    try:
        with Session(engine) as session, session.begin(), time_machine.travel(now, tick=True):
            assert insert_events(session, [event_row(1, first, now)]) == {(1, first)}
            waiting = threading.Thread(target=store_the_second_copy)
            waiting.start()
            _wait_for_a_lock_wait(engine)
        waiting.join(timeout=30)
        assert second_stored == [{(1, other)}]
        with engine.connect() as connection:
            copies = connection.execute(
                select(Event.event_id, func.count()).where(Event.event_id.in_([first, other])).group_by(Event.event_id)
            )
            assert dict(copies.all()) == {first: 1, other: 1}
    finally:
        with engine.begin() as connection:
            for table in ("events", "event_ids"):
                connection.execute(
                    text(f"DELETE FROM {table} WHERE event_id IN (:first, :other)"), {"first": first, "other": other}
                )


def test_a_connection_lost_while_a_batch_is_staged_is_an_outage_not_a_refusal(engine: Engine) -> None:
    """The COPY runs on the driver's own connection; its failure is raised as SQLAlchemy raises
    its statements', so that the job keeps the batch for later (db.is_transient) rather than
    dead-letter it, and the lost connection is not handed out again."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the staging table is PostgreSQL's")
    with Session(engine) as session:
        pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with engine.connect() as other:
            assert other.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 10000)").scalar_one()
        with pytest.raises(OperationalError) as raised:
            insert_events(session, [event_row(1, "lost", dt.datetime.now(dt.UTC))])
    assert is_transient(raised.value)
    assert raised.value.connection_invalidated


def _wait_for_a_lock_wait(engine: Engine) -> None:
    """Until a session of this database waits for a transaction's lock (10 s at most)."""
    with engine.connect() as connection:
        for _ in range(200):
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'transactionid'"
                )
            )
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError("the second copy's insert never waited for the first one's transaction")


def test_an_event_sent_twice_in_one_batch_is_stored_once(session: Session, postgres: Connection) -> None:
    make_days(postgres, SUNDAY - dt.timedelta(days=1), 1)
    assert store_at(session, SUNDAY, event_row(1, "twice", SUNDAY), event_row(1, "twice", SUNDAY)) == {(1, "twice")}
    assert stored(session, "twice") == 1


def test_the_same_event_id_in_two_organizations_is_two_events(session: Session, postgres: Connection) -> None:
    make_days(postgres, SUNDAY - dt.timedelta(days=1), 1)
    assert store_at(session, SUNDAY, event_row(1, "shared", SUNDAY), event_row(2, "shared", SUNDAY)) == {
        (1, "shared"),
        (2, "shared"),
    }


def test_a_row_without_its_partition_lands_in_the_default_one_is_warned_about_and_moved_out(
    session: Session, postgres: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    far = dt.datetime(2031, 5, 5, 12, tzinfo=dt.UTC)
    insert_events(session, [event_row(1, "early", far)])
    assert partition_of(session, "early") == "events_default"
    engine_like = _Engine(postgres)
    with caplog.at_level(logging.WARNING, logger="userpath.partitions"):
        done = partitions.maintain(engine_like, dt.datetime.now(dt.UTC).date())  # type: ignore[arg-type]
    assert done.default_rows["events"] == 1
    assert "events_default holds 1 rows" in caplog.text
    partitions.ensure_days(postgres, {far.date()})
    assert partition_of(session, "early") == "events_p20310505"
    assert partitions.default_partition_rows(postgres, "events") == 0


class _Engine:
    """An engine whose transactions are savepoints of the test's connection."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def begin(self) -> Any:
        outer = self

        class _Savepoint:
            def __enter__(self) -> Connection:
                self.savepoint = outer.connection.begin_nested()
                return outer.connection

            def __exit__(self, *exc: object) -> None:
                if exc[0] is None:
                    self.savepoint.commit()
                else:
                    self.savepoint.rollback()

        return _Savepoint()

    connect = begin


def test_retention_drops_whole_partitions_past_every_organizations_retention_and_deletes_the_shorter_ones(
    session: Session, postgres: Connection
) -> None:
    now = dt.datetime(2027, 3, 1, 12, tzinfo=dt.UTC)
    make_days(postgres, now - dt.timedelta(days=40), 40)
    partitions.ensure_partitions(postgres, now.date(), days_ahead=0)  # and event_ids' weeks around now
    keeps_30, keeps_10 = make_organization(session), make_organization(session)
    organizations.set_event_retention(session, keeps_30, 30)
    organizations.set_event_retention(session, keeps_10, 10)
    session.flush()
    insert_days_ago(session, now, (35, 20, 5), a=keeps_30.id, b=keeps_10.id)
    dry = retention.apply_retention(_Engine(postgres), 20, now, dry_run=True)  # type: ignore[arg-type]
    assert f"events_p{(now - dt.timedelta(days=35)).date():%Y%m%d}" in dry.partitions_dropped
    assert dry.events_deleted == {keeps_10.id: 1}  # b-20: 35 days ago goes with its partition
    assert stored(session, "a-35") == 1  # dry: nothing changed

    run = retention.apply_retention(_Engine(postgres), 20, now)  # type: ignore[arg-type]
    assert run.partitions_dropped == dry.partitions_dropped and run.complete
    remaining = set(session.scalars(select(Event.event_id)))
    assert remaining == {"a-20", "a-5", "b-5"}
    assert all(part.high > now - dt.timedelta(days=30) for part in partitions.partitions(postgres, "events"))
    # The dedupe table keeps this week and the one before.
    weeks = partitions.partitions(postgres, "event_ids")
    assert len(weeks) == 3 and weeks[0].low == partitions.utc_midnight(partitions.week_of(now.date()) - partitions.WEEK)


def test_retention_on_sqlite_deletes_each_organizations_expired_events(session: Session) -> None:
    if session.get_bind().dialect.name != "sqlite":
        pytest.skip("PostgreSQL drops partitions: the test above")
    now = dt.datetime(2027, 3, 1, 12, tzinfo=dt.UTC)
    default, keeps_10 = make_organization(session), make_organization(session)
    organizations.set_event_retention(session, keeps_10, 10)
    session.flush()
    insert_days_ago(session, now, (25, 15, 5), a=default.id, b=keeps_10.id)
    run = retention.apply_retention(_Engine(session.connection()), 20, now)  # type: ignore[arg-type]
    assert run.events_deleted == {default.id: 1, keeps_10.id: 2}
    assert set(session.scalars(select(Event.event_id))) == {"a-15", "a-5", "b-5"}
