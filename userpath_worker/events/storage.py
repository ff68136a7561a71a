"""Storing and reading events: the rows ``events.verdicts`` makes, written exactly once.

Inside the caller's transaction; nothing here commits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from userpath_worker.events.models import Event, Source

# PostgreSQL: the whole batch as one JSON document, turned into rows by one statement. A row at
# a time (executemany) costs a round of parsing and planning per event; and each event's JSON,
# already encoded to be measured, is spliced in as it is (an orjson Fragment) instead of being
# encoded again.
_JSON_ROWS_INSERT = """
INSERT INTO events (org_id, api_key_id, environment, source, event_id, name, user_id, anonymous_id,
                    properties, context, "timestamp", sent_at, received_at, occurred_at, verified)
SELECT (r->>0)::integer, (r->>1)::integer, r->>2, r->>3, r->>4,
       r->5->>'event', r->5->>'user_id', r->5->>'anonymous_id',
       coalesce(r->5->'properties', '{}'), nullif(r->5->'context', 'null'),
       (r->>6)::timestamptz, (r->>7)::timestamptz, (r->>8)::timestamptz, (r->>9)::timestamptz,
       (r->>10)::boolean
FROM jsonb_array_elements(%s::jsonb) AS incoming(r)
ON CONFLICT (org_id, event_id) DO NOTHING
RETURNING org_id, event_id
"""


def insert_events(session: Session, rows: list[dict[str, Any]]) -> set[tuple[int, str]]:
    """Insert events rows, each with its ``event_json``; one already stored (the same org_id
    and event_id) is skipped. Returns the (org_id, event_id) of the rows inserted, so that a
    re-sent event is counted as a duplicate, not as stored (RETURNING: SQLite 3.35 or later)."""
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        inserted = session.connection().exec_driver_sql(_JSON_ROWS_INSERT, (_rows_document(rows),))
    else:
        insert = (
            sqlite.insert(Event.__table__)
            .on_conflict_do_nothing(index_elements=["org_id", "event_id"])
            .returning(Event.org_id, Event.event_id)
        )
        inserted = session.execute(insert, [_sqlite_row(row) for row in rows])
    return {(org_id, event_id) for org_id, event_id in inserted}


def newest_events(session: Session, org_id: int, limit: int = 20) -> list[Event]:
    return find_events(session, org_id, EventFilter(), limit)


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
