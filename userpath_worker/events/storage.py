"""Storing and reading events: the rows ``events.verdicts`` makes, written exactly once.

Inside the caller's transaction; nothing here commits.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import postgres, pq
from psycopg.adapt import Dumper
from psycopg.errors import UniqueViolation
from sqlalchemy import Row, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from userpath_worker.db import utcnow
from userpath_worker.events import partitions
from userpath_worker.events.models import Event, Source

# PostgreSQL: a batch is copied (COPY, binary) into this connection's temporary staging table,
# then stored from there by INSERT ... SELECT. COPY is PostgreSQL's cheapest way in, and each
# event's JSON, already encoded to be measured, is sent as it is; a JSON document of the whole
# batch parsed by jsonb_array_elements, the release before's way, inserted about a sixth slower
# (python -m bench.inserts: 87% of the plain table against 104%). ON COMMIT DELETE ROWS empties
# it with each transaction (cheaply, without a new file); the DELETE before each batch is for a
# second batch in one transaction, whose deleted rows each later DELETE scans again: callers
# insert once a transaction.
STAGING_TABLE = "incoming_events"
_STAGE = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} (
    org_id integer, api_key_id integer, environment text, source text, event_id text, event jsonb,
    "timestamp" timestamptz, sent_at timestamptz, received_at timestamptz, occurred_at timestamptz, verified boolean
) ON COMMIT DELETE ROWS;
DELETE FROM {STAGING_TABLE}
"""
_COPY = f"COPY {STAGING_TABLE} FROM STDIN (FORMAT BINARY)"
_STAGED_TYPES = (
    "int4", "int4", "text", "text", "text", "jsonb", "timestamptz", "timestamptz", "timestamptz", "timestamptz", "bool"
)  # fmt: skip
_INCOMING = f"""
SELECT org_id, api_key_id, environment, source, event_id, event->>'event' AS name, event->>'user_id' AS user_id,
       event->>'anonymous_id' AS anonymous_id, coalesce(event->'properties', '{{}}') AS properties,
       nullif(event->'context', 'null') AS context, "timestamp", sent_at, received_at, occurred_at, verified
FROM {STAGING_TABLE}
"""
_COLUMNS = (
    "org_id, api_key_id, environment, source, event_id, name, user_id, anonymous_id, properties, context, "
    '"timestamp", sent_at, received_at, occurred_at, verified'
)
# Exactly once across partitions: an event is stored only if its (org_id, event_id) could be
# claimed in event_ids for this week and was not claimed the week before (a probe of one index).
# In the first hour of a week it is claimed in both weeks instead, so that two copies in flight
# at once on either side of Monday 00:00 meet in one unique index. While migration 0015 moves the
# old plain table, its unique (org_id, event_id) may still refuse an event older than the window:
# ``ON CONFLICT DO NOTHING`` then, and only then (it makes every row a speculative insertion,
# about a tenth of the insert rate: python -m bench.inserts).
_CLAIMED_INSERT = f"""
WITH incoming AS ({_INCOMING}),
claimed AS (
    INSERT INTO event_ids (org_id, event_id, period)
    SELECT org_id, event_id, period FROM incoming CROSS JOIN unnest(%(periods)s::date[]) AS claims(period)
    ON CONFLICT DO NOTHING
    RETURNING org_id, event_id
)
INSERT INTO events ({_COLUMNS})
SELECT {_COLUMNS} FROM incoming
WHERE (org_id, event_id) IN ({{fresh}})
{{arbiter}}RETURNING org_id, event_id
"""
_FRESH_THIS_WEEK = """
    SELECT org_id, event_id FROM claimed
    WHERE NOT EXISTS (
        SELECT FROM event_ids seen
        WHERE seen.period = %(previous)s AND seen.org_id = claimed.org_id AND seen.event_id = claimed.event_id
    )
"""
_FRESH_IN_BOTH_WEEKS = "SELECT org_id, event_id FROM claimed GROUP BY org_id, event_id HAVING count(*) = 2"
# By (at a week's start, into the plain table being moved).
_INSERTS = {
    (at_start, moving): _CLAIMED_INSERT.replace(
        "{fresh}", _FRESH_IN_BOTH_WEEKS if at_start else _FRESH_THIS_WEEK
    ).replace("{arbiter}", "ON CONFLICT DO NOTHING\n" if moving else "")
    for at_start in (False, True)
    for moving in (False, True)
}
# The same outcome, cheaper, when no event of the batch was claimed this week yet (the common
# case): the claims by a plain insert, without ON CONFLICT's speculative insertions, then the
# events not claimed last week. If an event was claimed this week already (a redelivery, or a copy
# in flight in another transaction, which committed), the claim fails with a unique violation, is
# rolled back to its savepoint before any events row was written, and the batch goes through
# _CLAIMED_INSERT instead. Last week's index is probed by a lateral LIMIT 1: as NOT EXISTS, the
# planner may hash the whole week instead.
_CLAIM_THIS_WEEK = (
    f"INSERT INTO event_ids (org_id, event_id, period) SELECT org_id, event_id, %(this_week)s FROM {STAGING_TABLE}"
)
_INSERT_UNSEEN = f"""
INSERT INTO events ({_COLUMNS})
SELECT {_COLUMNS} FROM ({_INCOMING}) AS incoming
LEFT JOIN LATERAL (
    SELECT true AS hit FROM event_ids claim
    WHERE claim.period = %(previous)s AND claim.org_id = incoming.org_id AND claim.event_id = incoming.event_id
    LIMIT 1
) AS last_week ON true
WHERE last_week.hit IS NULL
RETURNING org_id, event_id
"""
# Re-sent events come in runs (a client's retries, a broker's redeliveries): after a batch whose
# cheaper statement failed, this process's next ones are claimed around at once instead of each
# failing first (python -m bench.inserts: a failure every batch costs about half the rate).
CLAIM_AROUND_AFTER_A_RESEND = 20  # batches
_claim_around = 0  # batches still to claim around in this process
_PARTITIONED_CHECK_SECONDS = 60.0
_partitioned: dict[str, tuple[bool, float]] = {}  # by database URL: partitioned, checked at
# Longer than any ingest transaction (a batch's time limit is 300 s), so two copies in flight at
# once across the week's start both claim the week before. The window is 7 to 14 days.
WEEK_START_OVERLAP = dt.timedelta(hours=1)


def insert_events(session: Session, rows: list[dict[str, Any]]) -> set[tuple[int, str]]:
    """Insert events rows, each with its ``event_json``; one already stored (the same org_id
    and event_id) is skipped. Returns the (org_id, event_id) of the rows inserted, so that a
    re-sent event is counted as a duplicate, not as stored (RETURNING: SQLite 3.35 or later).

    On PostgreSQL an event counts as stored before if it was in the last 7 days at least (up to
    14): the window of event_ids, whose weekly partitions expire. On SQLite, forever."""
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        inserted = _claim_and_insert(session, _first_of_each(rows), utcnow())
    else:
        insert = (
            sqlite.insert(Event.__table__)
            .on_conflict_do_nothing(index_elements=["org_id", "event_id"])
            .returning(Event.org_id, Event.event_id)
        )
        inserted = session.execute(insert, [_sqlite_row(row) for row in rows])
    return {(org_id, event_id) for org_id, event_id in inserted}


def _claim_and_insert(session: Session, rows: list[dict[str, Any]], now: dt.datetime) -> Sequence[Row[Any]]:
    """The (org_id, event_id) of the rows stored: by the cheaper statements if none was claimed this
    week yet, else (or at a week's start, during the move, or just after a re-sent event) by the
    one that claims around them."""
    global _claim_around
    stage(session, rows)
    this_week, previous = _weeks(now)
    moving = not _events_partitioned(session)
    if not (moving or _claim_around or _at_week_start(now)):
        try:
            with session.begin_nested():  # its SAVEPOINT is sent with the connection's next use
                session.connection().exec_driver_sql(_CLAIM_THIS_WEEK, {"this_week": this_week})
        except IntegrityError as error:
            if not _claimed_already(error):
                raise
            _claim_around = CLAIM_AROUND_AFTER_A_RESEND
        else:
            return session.connection().exec_driver_sql(_INSERT_UNSEEN, {"previous": previous}).all()
    else:
        _claim_around = max(_claim_around - 1, 0)
    return session.connection().exec_driver_sql(*claiming_insert(now, moving)).all()


def stage(session: Session, rows: list[dict[str, Any]]) -> None:
    """Copy ``rows`` into this connection's staging table, which then holds them alone."""
    connection = session.connection()
    driver_connection = connection.connection.driver_connection
    try:
        with driver_connection.cursor() as cursor:
            cursor.adapters.register_dumper(None, _CanonicalJsonb)  # this cursor's COPY only
            cursor.execute(_STAGE)
            with cursor.copy(_COPY) as copy:
                copy.set_types(_STAGED_TYPES)
                for row in rows:
                    copy.write_row(
                        (row["org_id"], row["api_key_id"], row["environment"], row["source"], row["event_id"],
                         row["event_json"], row["timestamp"], row["sent_at"], row["received_at"],
                         row["occurred_at"], row["verified"])
                    )  # fmt: skip
    except psycopg.Error as error:
        # As SQLAlchemy raises for its own statements, so that an outage is told from a refusal
        # (db.is_transient), and a connection that is gone is not handed out again.
        gone = connection.dialect.is_disconnect(error, driver_connection, None)
        if gone:
            connection.invalidate(error)
        raise DBAPIError.instance(_COPY, None, error, psycopg.Error, connection_invalidated=gone) from error


def claiming_insert(now: dt.datetime, moving: bool = False) -> tuple[str, dict[str, Any]]:
    """The PostgreSQL statement that stores the staged rows (each (org_id, event_id) once) at
    ``now``, whatever was claimed before; ``moving``: into the plain table that 0015 is moving."""
    this_week, previous = _weeks(now)
    if _at_week_start(now):
        return _INSERTS[True, moving], {"previous": previous, "periods": [this_week, previous]}
    return _INSERTS[False, moving], {"previous": previous, "periods": [this_week]}


def _weeks(now: dt.datetime) -> tuple[dt.date, dt.date]:
    """This week's period of event_ids and the previous one."""
    this_week = partitions.week_of(now.date())
    return this_week, this_week - partitions.WEEK


def _at_week_start(now: dt.datetime) -> bool:
    return now < partitions.utc_midnight(partitions.week_of(now.date())) + WEEK_START_OVERLAP


def _claimed_already(error: IntegrityError) -> bool:
    """Whether the claim failed because an event was claimed this week already (or is being claimed
    by another transaction, which committed meanwhile)."""
    return isinstance(error.orig, UniqueViolation) and (error.orig.diag.table_name or "").startswith(
        partitions.EVENT_IDS
    )


def _events_partitioned(session: Session) -> bool:
    """Whether ``events`` is partitioned yet, asked again each minute until it is (then for good):
    a worker started while 0015 moves the table sees the swap within a minute, and until then
    inserts with ON CONFLICT, which works on both tables."""
    url = str(session.get_bind().engine.url)
    known, checked = _partitioned.get(url, (False, -_PARTITIONED_CHECK_SECONDS))
    if known or time.monotonic() - checked < _PARTITIONED_CHECK_SECONDS:
        return known
    answer = partitions.is_partitioned(session.connection(), partitions.EVENTS)
    _partitioned[url] = (answer, time.monotonic())
    return answer


def _first_of_each(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first row of each (org_id, event_id): an event sent twice in one batch is stored once."""
    first: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        first.setdefault((row["org_id"], row["event_id"]), row)
    return list(first.values())


def newest_events(session: Session, org_id: int, limit: int = 20) -> list[Event]:
    return find_events(session, org_id, EventFilter(), limit)


def latest_events(session: Session, org_id: int, limit: int) -> list[Event]:
    """The organization's events that occurred last: read backwards along the (org_id, occurred_at)
    index of each partition, however many events other organizations have (Live events)."""
    query = select(Event).where(Event.org_id == org_id).order_by(Event.occurred_at.desc(), Event.id.desc())
    return list(session.scalars(query.limit(limit)))


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which of an organization's events to list; every field left unset matches all."""

    name: str | None = None
    user_id: str | None = None
    source: Source | None = None
    since: dt.datetime | None = None  # occurred at or after
    before_id: int | None = None  # the next page: ids below the last one shown


def find_events(session: Session, org_id: int, chosen: EventFilter, limit: int = 20) -> list[Event]:
    """The organization's newest events (by id, highest first) that ``chosen`` matches."""
    query = select(Event).where(Event.org_id == org_id)
    if chosen.name is not None:
        query = query.where(Event.name == chosen.name)
    if chosen.user_id is not None:
        query = query.where(Event.user_id == chosen.user_id)
    if chosen.source is not None:
        query = query.where(Event.source == chosen.source)
    if chosen.since is not None:
        query = query.where(Event.occurred_at >= chosen.since)
    if chosen.before_id is not None:
        query = query.where(Event.id < chosen.before_id)
    return list(session.scalars(query.order_by(Event.id.desc()).limit(limit)))


class _CanonicalJsonb(Dumper):
    """An event's canonical JSON, encoded once when it was measured, as jsonb in COPY's binary
    format: a version byte, then the text (psycopg's own would wrap and encode it again)."""

    format = pq.Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: bytes) -> bytes:
        return b"\x01" + obj


def _sqlite_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its JSON columns read back from ``event_json``, as PostgreSQL reads them: the
    canonical text has kombu's datetimes and UUIDs as text already."""
    stored = orjson.loads(row["event_json"])
    return {name: value for name, value in row.items() if name != "event_json"} | {
        "properties": stored.get("properties", {}),
        "context": stored.get("context"),
    }
