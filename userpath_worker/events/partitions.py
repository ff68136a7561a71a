"""The time partitions of ``events`` and of ``event_ids`` on PostgreSQL (SQLite keeps one table).

``events`` is partitioned by day of ``received_at`` (the worker's clock, so every row lands near
now, whatever a producer's clock says); ``event_ids``, the dedupe table, by week (``period``,
a Monday). Beat creates the partitions ahead (``ensure_partitions``); each table also has a
DEFAULT partition, a safety net that must stay empty: what lands there is counted and warned
about, and moved out when its own partition is made. Retention drops whole partitions
(``events.retention``).

All partition DDL attaches a table made beforehand (``ATTACH PARTITION`` takes only a SHARE
UPDATE EXCLUSIVE lock on the parent, so ingestion goes on) or detaches one with a short lock
that gives up instead of queueing behind a long query (``lock_timeout``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

logger = logging.getLogger("userpath.partitions")

EVENTS = "events"
EVENT_IDS = "event_ids"
# Before the online move (migration 0015), ``events`` is the old plain table and its partitioned
# successor has this name; ingestion writes the old table, whose trigger copies every row here.
EVENTS_DURING_MOVE = "events_partitioned"
DAYS_AHEAD = 7  # events' daily partitions made ahead: a week without beat still has them
WEEK = dt.timedelta(days=7)
# How long a DDL statement waits for a lock before giving up (and retrying later): a partition
# change must never hold ingestion back for longer than this.
LOCK_TIMEOUT = "2s"
COPY_BATCH = 20_000  # rows of the online move per transaction
SWAP_ATTEMPTS = 30

_BOUND = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True, slots=True)
class Partition:
    """One range partition: rows with ``low <= key < high``."""

    name: str
    low: dt.datetime
    high: dt.datetime


def is_partitioned(connection: Connection, table: str = EVENTS) -> bool:
    return connection.dialect.name == "postgresql" and bool(
        connection.scalar(text("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(:table)"), {"table": table})
    )


def partitioned_events(connection: Connection) -> str | None:
    """The name of the partitioned events table (``events``, or its successor during the online
    move), None on SQLite."""
    for table in (EVENTS, EVENTS_DURING_MOVE):
        if is_partitioned(connection, table):
            return table
    return None


def week_of(day: dt.date) -> dt.date:
    """The ``event_ids`` period a day belongs to: its ISO week's Monday."""
    return day - dt.timedelta(days=day.weekday())


def utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def partitions(connection: Connection, table: str) -> list[Partition]:
    """The range partitions of ``table``, oldest first (the DEFAULT partition is not one)."""
    connection.execute(text("SET LOCAL TimeZone = 'UTC'"))  # the bounds are printed in it
    found = []
    for name, bound in connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:table)"
        ),
        {"table": table},
    ):
        matched = _BOUND.fullmatch(bound)
        if matched:
            low, high = (_as_utc(dt.datetime.fromisoformat(value)) for value in matched.groups())
            found.append(Partition(name, low, high))
    return sorted(found, key=lambda partition: partition.low)


def day_spans(first: dt.date, last: dt.date) -> Iterator[tuple[dt.date, dt.date]]:
    """[day, next day) for every day from ``first`` to ``last`` included."""
    day = first
    while day <= last:
        yield day, day + dt.timedelta(days=1)
        day += dt.timedelta(days=1)


def history_spans(oldest: dt.date, today: dt.date) -> Iterator[tuple[dt.date, dt.date]]:
    """Spans that cover existing rows from ``oldest`` up to ``today`` (excluded): one per calendar
    month before the previous month, one per day after, so that years of history do not make
    thousands of partitions and recent days still drop one at a time."""
    daily_from = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    month = oldest.replace(day=1)
    while month < daily_from:
        following = (month + dt.timedelta(days=32)).replace(day=1)
        yield month, following
        month = following
    yield from day_spans(max(oldest, daily_from), today - dt.timedelta(days=1))


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What a partition pass made, and the rows it found in each DEFAULT partition."""

    made: list[str]
    default_rows: dict[str, int]


def maintain(engine: Engine, today: dt.date) -> Maintenance:
    """Beat's partition pass: make what is missing, then look into the DEFAULT partitions (a
    WARNING for each that holds rows)."""
    with engine.begin() as connection:
        made = ensure_partitions(connection, today)
        events = partitioned_events(connection)
        tables = (events, EVENT_IDS) if events else ()
        default_rows = {table: default_partition_rows(connection, table) for table in tables}
    for table, rows in default_rows.items():
        if rows:
            logger.warning(
                "%s_default holds %d rows: a partition was missing when they arrived; the partition pass "
                "moves them once their partition exists (is beat running?)",
                table,
                rows,
            )
    return Maintenance(made, default_rows)


def ensure_partitions(connection: Connection, today: dt.date, days_ahead: int = DAYS_AHEAD) -> list[str]:
    """Make the partitions that are missing: ``events``' days from yesterday to ``days_ahead``
    after ``today``, ``event_ids``' previous, current and next weeks. Returns the names made."""
    events = partitioned_events(connection)
    if events is None:
        return []
    made = []
    for low, high in day_spans(today - dt.timedelta(days=1), today + dt.timedelta(days=days_ahead)):
        made += create_partition(connection, events, "received_at", low, high)
    this_week = week_of(today)
    for monday in (this_week - WEEK, this_week, this_week + WEEK):
        made += create_partition(connection, EVENT_IDS, "period", monday, monday + WEEK)
    return made


def ensure_days(connection: Connection, days: set[dt.date]) -> list[str]:
    """Make ``events``' partitions for these days if missing (a replayed dead letter keeps the day
    it was received, which may be older than every partition made ahead)."""
    events = partitioned_events(connection)
    if events is None:
        return []
    return [
        made
        for day in sorted(days)
        for made in create_partition(connection, events, "received_at", day, day + dt.timedelta(days=1))
    ]


def create_partition(connection: Connection, table: str, column: str, low: dt.date, high: dt.date) -> list[str]:
    """Make ``table``'s partition for [low, high) unless one covers it already; rows of that span
    that fell into the DEFAULT partition are moved into it. Returns [its name] if it was made."""
    existing = partitions(connection, table)
    start, end = utc_midnight(low), utc_midnight(high)
    if any(part.low < end and start < part.high for part in existing):
        return []
    name = partition_name(table, low, high)
    bounds = {"low": start, "high": end}
    connection.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
    default = f"{table}_default"
    moved = connection.execute(
        text(
            f"WITH moved AS (DELETE FROM {default} WHERE {column} >= :low AND {column} < :high RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved"
        ),
        bounds,
    ).rowcount
    if moved:
        logger.warning("moved %d rows of %s out of %s into its new partition %s", moved, table, default, name)
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    # The bounds are dates made here, not input: literals, as DDL takes no parameters.
    written = (low.isoformat(), high.isoformat()) if table == EVENT_IDS else (start.isoformat(), end.isoformat())
    connection.execute(
        text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{written[0]}') TO ('{written[1]}')")
    )
    connection.execute(text("SET LOCAL lock_timeout = 0"))
    return [name]


def partition_name(table: str, low: dt.date, high: dt.date) -> str:
    if high - low == dt.timedelta(days=1) or table == EVENT_IDS:
        return f"{table}_p{low:%Y%m%d}"
    return f"{table}_p{low:%Y%m}"


def drop_partition(connection: Connection, table: str, partition: Partition) -> None:
    """Detach (a lock of the parent for an instant, given up after LOCK_TIMEOUT) then drop."""
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    connection.execute(text(f"ALTER TABLE {table} DETACH PARTITION {partition.name}"))
    connection.execute(text("SET LOCAL lock_timeout = 0"))
    connection.execute(text(f"DROP TABLE {partition.name}"))


def default_partition_rows(connection: Connection, table: str, limit: int = 1_000_000) -> int:
    """Rows in ``table``'s DEFAULT partition, counted up to ``limit`` (it should hold none)."""
    return connection.scalar(text(f"SELECT count(*) FROM (SELECT 1 FROM {table}_default LIMIT {limit}) AS held")) or 0


# The online move of an existing plain ``events`` table into partitions (migrations 0012, 0015).


def prepare_move(connection: Connection, today: dt.date) -> None:
    """Create ``events_partitioned``, with partitions for every row ``events`` holds, and the
    trigger that copies each row inserted into (or deleted from) ``events`` from now on.

    CREATE TRIGGER waits for the transactions that are writing ``events`` and holds new ones back
    for an instant: every row committed before it is in ``events`` for the batched copy, and every
    row after it is copied by the trigger.
    """
    connection.execute(
        text(
            f"CREATE TABLE {EVENTS_DURING_MOVE} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            "PARTITION BY RANGE (received_at)"
        )
    )
    connection.execute(
        text(f"ALTER TABLE {EVENTS_DURING_MOVE} ADD CONSTRAINT pk_{EVENTS_DURING_MOVE} PRIMARY KEY (id, received_at)")
    )
    connection.execute(
        text(f"CREATE INDEX ix_{EVENTS_DURING_MOVE}_org_occurred ON {EVENTS_DURING_MOVE} (org_id, occurred_at)")
    )
    connection.execute(text(f"CREATE TABLE {EVENTS_DURING_MOVE}_default PARTITION OF {EVENTS_DURING_MOVE} DEFAULT"))
    oldest = connection.scalar(text("SELECT min(received_at) FROM events"))
    if oldest is not None:
        for low, high in history_spans(oldest.astimezone(dt.UTC).date(), today):
            create_partition(connection, EVENTS_DURING_MOVE, "received_at", low, high)
    ensure_partitions(connection, today)
    connection.execute(
        text(
            f"""
            CREATE FUNCTION events_copy_to_partitions() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    INSERT INTO {EVENTS_DURING_MOVE} SELECT NEW.* ON CONFLICT DO NOTHING;
                    IF NEW.received_at
                        >= (date_trunc('week', now() AT TIME ZONE 'UTC') - interval '7 days') AT TIME ZONE 'UTC' THEN
                        INSERT INTO event_ids (org_id, event_id, period)
                        VALUES (NEW.org_id, NEW.event_id, date_trunc('week', NEW.received_at AT TIME ZONE 'UTC')::date)
                        ON CONFLICT DO NOTHING;
                    END IF;
                ELSE
                    DELETE FROM {EVENTS_DURING_MOVE} WHERE id = OLD.id AND received_at = OLD.received_at;
                END IF;
                RETURN NULL;
            END $$
            """
        )
    )
    connection.execute(
        text(
            "CREATE TRIGGER events_copy_to_partitions AFTER INSERT OR DELETE ON events "
            "FOR EACH ROW EXECUTE FUNCTION events_copy_to_partitions()"
        )
    )


@dataclass(frozen=True, slots=True)
class Move:
    """What the online move did: rows copied by the batches, and how long the swap held events."""

    copied: int
    swap_seconds: float


def move_into_partitions(
    engine: Engine, batch: int = COPY_BATCH, progress: Callable[[int, int], None] | None = None
) -> Move:
    """Move ``events`` into ``events_partitioned`` while ingestion goes on: the batched copy, then
    the swap (retried while a long transaction holds the lock), then the old table dropped.
    Safe to run again after an interruption."""
    with engine.connect() as connection:
        if is_partitioned(connection, EVENTS):
            return Move(0, 0.0)  # swapped already
    copied = copy_into_partitions(engine, batch, progress or (lambda copied, total: None))
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            started = time.monotonic()
            with engine.begin() as connection:
                swap_in_partitions(connection)
            swap_seconds = time.monotonic() - started
            break
        except OperationalError as error:  # lock_timeout: a long transaction held events
            if attempt == SWAP_ATTEMPTS:
                raise
            logger.warning(
                "swapping in the partitioned events table waited too long for its lock (%s); retrying", error.orig
            )
            time.sleep(attempt)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE events_unpartitioned"))
    return Move(copied, swap_seconds)


def copy_into_partitions(engine: Engine, batch: int, progress: Callable[[int, int], None]) -> int:
    """Copy every row of ``events`` that the trigger did not, ``batch`` ids per transaction, and
    the ids of the last two weeks' rows into ``event_ids`` (so that a re-sent event is still kept
    once after the swap). Rows are locked FOR KEY SHARE while copied, so a concurrent delete waits
    and the trigger then deletes the copy. Returns the rows copied."""
    with engine.connect() as connection:
        lowest, highest = connection.execute(text("SELECT min(id), max(id) FROM events")).one()
    if highest is None:
        return 0
    window_start = utc_midnight(week_of(dt.datetime.now(dt.UTC).date()) - WEEK)
    copied, after = 0, lowest - 1
    while after < highest:
        bounds = {"after": after, "upto": after + batch, "window_start": window_start}
        with engine.begin() as connection:
            copied += connection.execute(
                text(
                    f"INSERT INTO {EVENTS_DURING_MOVE} SELECT * FROM events WHERE id > :after AND id <= :upto "
                    "FOR KEY SHARE ON CONFLICT DO NOTHING"
                ),
                bounds,
            ).rowcount
            connection.execute(
                text(
                    "INSERT INTO event_ids (org_id, event_id, period) "
                    "SELECT org_id, event_id, date_trunc('week', received_at AT TIME ZONE 'UTC')::date FROM events "
                    "WHERE id > :after AND id <= :upto AND received_at >= :window_start ON CONFLICT DO NOTHING"
                ),
                bounds,
            )
        after += batch
        progress(copied, highest - lowest + 1)
    return copied


def swap_in_partitions(connection: Connection) -> None:
    """Put the partitioned table in the place of the plain one, in one short transaction (the
    caller's): every row is in both already, so this is renames only. The plain table is left as
    ``events_unpartitioned`` for the caller to drop once this committed."""
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    connection.execute(text(f"LOCK TABLE events, {EVENTS_DURING_MOVE} IN ACCESS EXCLUSIVE MODE"))
    connection.execute(text("DROP TRIGGER events_copy_to_partitions ON events"))
    connection.execute(text("DROP FUNCTION events_copy_to_partitions()"))
    connection.execute(text("ALTER TABLE events RENAME TO events_unpartitioned"))
    for index in ("pk_events", "uq_events_org_id_event_id", "ix_events_org_occurred"):
        connection.execute(text(f"ALTER INDEX {index} RENAME TO {index}_unpartitioned"))
    connection.execute(text(f"ALTER TABLE {EVENTS_DURING_MOVE} RENAME TO events"))
    connection.execute(text(f"ALTER INDEX pk_{EVENTS_DURING_MOVE} RENAME TO pk_events"))
    connection.execute(text(f"ALTER INDEX ix_{EVENTS_DURING_MOVE}_org_occurred RENAME TO ix_events_org_occurred"))
    connection.execute(text(f"ALTER TABLE {EVENTS_DURING_MOVE}_default RENAME TO events_default"))
    for partition in partitions(connection, EVENTS):
        connection.execute(
            text(f"ALTER TABLE {partition.name} RENAME TO {partition.name.replace(EVENTS_DURING_MOVE, EVENTS)}")
        )
    # The id sequence belongs to the table that stays, or dropping the old one would drop it.
    connection.execute(text("ALTER SEQUENCE events_id_seq OWNED BY events.id"))


def _as_utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
