"""Storing and reading events: the rows ``events.verdicts`` makes, written exactly once.

Inside the caller's transaction; nothing here commits.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from userpath_worker.db import utcnow
from userpath_worker.events import partitions
from userpath_worker.events.models import Event, Source

# PostgreSQL: the whole batch as one JSON document, turned into rows by one statement. A row at
# a time (executemany) costs a round of parsing and planning per event; and each event's JSON,
# already encoded to be measured, is spliced in as it is (an orjson Fragment) instead of being
# encoded again.
_INCOMING = """
SELECT (r->>0)::integer AS org_id, (r->>1)::integer AS api_key_id, r->>2 AS environment, r->>3 AS source,
       r->>4 AS event_id, r->5->>'event' AS name, r->5->>'user_id' AS user_id,
       r->5->>'anonymous_id' AS anonymous_id, coalesce(r->5->'properties', '{}') AS properties,
       nullif(r->5->'context', 'null') AS context, (r->>6)::timestamptz AS "timestamp",
       (r->>7)::timestamptz AS sent_at, (r->>8)::timestamptz AS received_at,
       (r->>9)::timestamptz AS occurred_at, (r->>10)::boolean AS verified
FROM jsonb_array_elements(%(rows)s::jsonb) AS document(r)
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
        moving = not _events_partitioned(session)
        statement, parameters = claiming_insert(_first_of_each(rows), utcnow(), moving)
        inserted = session.connection().exec_driver_sql(statement, parameters)
    else:
        insert = (
            sqlite.insert(Event.__table__)
            .on_conflict_do_nothing(index_elements=["org_id", "event_id"])
            .returning(Event.org_id, Event.event_id)
        )
        inserted = session.execute(insert, [_sqlite_row(row) for row in rows])
    return {(org_id, event_id) for org_id, event_id in inserted}


def claiming_insert(rows: list[dict[str, Any]], now: dt.datetime, moving: bool = False) -> tuple[str, dict[str, Any]]:
    """The PostgreSQL statement that stores ``rows`` (each (org_id, event_id) once) at ``now``;
    ``moving``: into the plain table that migration 0015 is moving."""
    this_week = partitions.week_of(now.date())
    previous = this_week - partitions.WEEK
    parameters = {"rows": _rows_document(rows), "previous": previous}
    if now < partitions.utc_midnight(this_week) + WEEK_START_OVERLAP:
        return _INSERTS[True, moving], parameters | {"periods": [this_week, previous]}
    return _INSERTS[False, moving], parameters | {"periods": [this_week]}


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


def _rows_document(rows: list[dict[str, Any]]) -> str:
    return orjson.dumps(
        [
            [
                row["org_id"],
                row["api_key_id"],
                row["environment"],
                row["source"],
                row["event_id"],
                orjson.Fragment(row["event_json"]),
                row["timestamp"],
                row["sent_at"],
                row["received_at"],
                row["occurred_at"],
                row["verified"],
            ]
            for row in rows
        ]
    ).decode()


def _sqlite_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its JSON columns read back from ``event_json``, as PostgreSQL reads them: the
    canonical text has kombu's datetimes and UUIDs as text already."""
    stored = orjson.loads(row["event_json"])
    return {name: value for name, value in row.items() if name != "event_json"} | {
        "properties": stored.get("properties", {}),
        "context": stored.get("context"),
    }
