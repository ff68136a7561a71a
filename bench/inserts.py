"""``python -m bench.inserts``: the insert path alone, in-process, events a second into PostgreSQL.

The same rows (the verdicts' rows of envelopes of 100, one organization) are inserted in
transactions of ``--batch`` rows, one way after the other, each into a fresh database:

- ``plain, jsonb (before 0012)``: the statement of the release before partitioning, into its plain
  ``events`` with the unique ``(org_id, event_id)`` (the schema at revision 0008);
- ``partitioned, jsonb``: this release's ``events.storage.insert_events``, into the partitioned
  ``events`` with its ``event_ids`` claims;
- ``partitioned, unnest``: the same claims, the rows passed as one typed array per column;
- ``partitioned, COPY``: the same claims, the rows copied (binary) into a temporary table first;
- ``partitioned, jsonb, ON CONFLICT on events``: this release's statement as it runs while 0015
  moves the plain table (every row a speculative insertion);
- ``partitioned, jsonb, no (org_id, occurred_at)``: the index set question: this release's insert
  without the index that erasure, per-organization retention and analysts read;
- ``partitioned by day, 400 days of partitions`` against ``partitioned by month, 14 months``: what
  the partitions' size and number cost the insert (a 395-day retention keeps about 400 days).

Each way runs ``--rounds`` times, alternated, so that other work on the machine weighs on all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
from alembic import command
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from bench import harness
from userpath_client.schemas import canonical_json
from userpath_worker import schema
from userpath_worker.events import partitions, storage

# The release before 0012: one statement, the unique index deduplicates.
_PLAIN_INSERT = f"""
INSERT INTO events ({storage._COLUMNS})
{storage._INCOMING}
ON CONFLICT (org_id, event_id) DO NOTHING
RETURNING org_id, event_id
"""
_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS incoming_events (
    org_id integer, api_key_id integer, environment text, source text, event_id text, event jsonb,
    "timestamp" timestamptz, sent_at timestamptz, received_at timestamptz, occurred_at timestamptz, verified boolean
) ON COMMIT DELETE ROWS
"""
_FROM_STAGING = """
SELECT org_id, api_key_id, environment, source, event_id, event->>'event' AS name, event->>'user_id' AS user_id,
       event->>'anonymous_id' AS anonymous_id, coalesce(event->'properties', '{}') AS properties,
       nullif(event->'context', 'null') AS context, "timestamp", sent_at, received_at, occurred_at, verified
FROM incoming_events
"""
_FROM_ARRAYS = """
SELECT org_id, api_key_id, environment, source, event_id, event->>'event' AS name, event->>'user_id' AS user_id,
       event->>'anonymous_id' AS anonymous_id, coalesce(event->'properties', '{}') AS properties,
       nullif(event->'context', 'null') AS context, "timestamp", sent_at, received_at, occurred_at, verified
FROM unnest(%(org_id)s::integer[], %(api_key_id)s::integer[], %(environment)s::text[], %(source)s::text[],
            %(event_id)s::text[], %(event)s::jsonb[], %(timestamp)s::timestamptz[], %(sent_at)s::timestamptz[],
            %(received_at)s::timestamptz[], %(occurred_at)s::timestamptz[], %(verified)s::boolean[])
     AS incoming(org_id, api_key_id, environment, source, event_id, event, "timestamp", sent_at, received_at,
                 occurred_at, verified)
"""
_ARRAY_COLUMNS = (
    "org_id", "api_key_id", "environment", "source", "event_id", "timestamp", "sent_at", "received_at",
    "occurred_at", "verified",
)  # fmt: skip


def rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Rows as ``events.verdicts`` makes them for a server's events, in envelopes of 100."""
    now = dt.datetime.now(dt.UTC)
    made = []
    for number in range(start, start + count):
        event = {
            "event": "Page Viewed",
            "event_id": f"bench-{number}",
            "user_id": f"user-{number % 10_000}",
            "properties": {"plan": "pro", "seats": number % 50, "path": f"/pricing/{number % 7}"},
            "context": {"ip": "203.0.113.9", "library": {"name": "bench", "version": "1"}},
        }
        made.append(
            {
                "event_json": canonical_json(event),
                "org_id": 1,
                "api_key_id": 1,
                "environment": "live",
                "source": "server",
                "event_id": event["event_id"],
                "timestamp": now,
                "sent_at": now,
                "received_at": now,
                "occurred_at": now,
            }
            | {"verified": None, "name": "Page Viewed", "user_id": event["user_id"], "anonymous_id": None}
        )
    return made


def _claiming(source: str) -> str:
    this_release, _ = storage.claiming_insert([], _now())
    return this_release.replace(storage._INCOMING, source)


def insert_plain(session: Session, batch: list[dict[str, Any]]) -> int:
    document = storage._rows_document(batch)
    return len(session.connection().exec_driver_sql(_PLAIN_INSERT, {"rows": document}).all())


def insert_this_release(session: Session, batch: list[dict[str, Any]]) -> int:
    return len(storage.insert_events(session, batch))


def insert_during_the_move(session: Session, batch: list[dict[str, Any]]) -> int:
    statement, parameters = storage.claiming_insert(batch, _now(), moving=True)
    return len(session.connection().exec_driver_sql(statement, parameters).all())


def insert_unnest(session: Session, batch: list[dict[str, Any]]) -> int:
    _, parameters = storage.claiming_insert(batch, _now())
    arrays = {column: [row[column] for row in batch] for column in _ARRAY_COLUMNS}
    arrays["event"] = [row["event_json"].decode() for row in batch]
    statement = _claiming(_FROM_ARRAYS)
    return len(session.connection().exec_driver_sql(statement, parameters | arrays).all())


def insert_copy(session: Session, batch: list[dict[str, Any]]) -> int:
    _, parameters = storage.claiming_insert(batch, _now())
    del parameters["rows"]
    cursor = session.connection().connection.driver_connection.cursor()
    cursor.execute(_STAGING)
    columns = (
        "org_id, api_key_id, environment, source, event_id, event, timestamp, sent_at, received_at, occurred_at, "
        "verified"
    )
    with cursor.copy(f"COPY incoming_events ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(
            ["int4", "int4", "text", "text", "text", "jsonb", "timestamptz", "timestamptz", "timestamptz",
             "timestamptz", "bool"]
        )  # fmt: skip
        for row in batch:
            copy.write_row(
                (row["org_id"], row["api_key_id"], row["environment"], row["source"], row["event_id"],
                 Jsonb(row["event_json"], dumps=_as_is), row["timestamp"], row["sent_at"], row["received_at"],
                 row["occurred_at"], row["verified"])
            )  # fmt: skip
    return len(session.connection().exec_driver_sql(_claiming(_FROM_STAGING), parameters).all())


def _now() -> dt.datetime:
    """Now, or an hour later in a week's first hour: these ways use the statement of the rest of the week."""
    now = dt.datetime.now(dt.UTC)
    return now + storage.WEEK_START_OVERLAP if now.weekday() == 0 and now.hour == 0 else now


def _as_is(encoded: bytes) -> bytes:
    return encoded


WAYS: dict[str, tuple[str, Callable[[Session, list[dict[str, Any]]], int]]] = {
    "plain, jsonb (before 0012)": ("0008", insert_plain),
    "partitioned, jsonb (this release)": ("head", insert_this_release),
    "partitioned, jsonb, ON CONFLICT on events": ("head", insert_during_the_move),
    "partitioned, unnest": ("head", insert_unnest),
    "partitioned, COPY + INSERT ... SELECT": ("head", insert_copy),
    "partitioned, jsonb, no (org_id, occurred_at)": ("head-no-occurred", insert_this_release),
    "partitioned by day, 400 days of partitions": ("head-400-days", insert_this_release),
    "partitioned by month, 14 months of partitions": ("head-14-months", insert_this_release),
}
# The index sets tried (DDL after the migrations).
_INDEX_SETS = {"head-no-occurred": ["DROP INDEX ix_events_org_occurred"]}


def database(revision: str) -> Engine:
    engine = harness.fresh_database("userpath_bench_inserts", migrate=revision != "0008")
    if revision == "0008":
        with engine.connect() as connection:
            config = schema.alembic_config(engine)
            config.attributes["connection"] = connection
            command.upgrade(config, "0008")
            connection.commit()
    with engine.begin() as connection:
        for statement in _INDEX_SETS.get(revision, []):
            connection.execute(text(statement))
        today = dt.datetime.now(dt.UTC).date()
        if revision == "head-400-days":
            partitions.ensure_days(connection, {today - dt.timedelta(days=back) for back in range(400)})
        if revision == "head-14-months":
            for partition in partitions.partitions(connection, "events"):
                partitions.drop_partition(connection, "events", partition)
            month = (today.replace(day=1) - dt.timedelta(days=365)).replace(day=1)
            for _ in range(14):
                following = (month + dt.timedelta(days=32)).replace(day=1)
                partitions.create_partition(connection, "events", "received_at", month, following)
                month = following
    return engine


def measure(way: str, events: int, batch: int) -> float:
    """Events a second of one way, into a fresh database, ``batch`` rows a transaction."""
    revision, insert = WAYS[way]
    engine = database(revision)
    made = rows(events)
    started = time.perf_counter()
    stored = 0
    with Session(engine) as session:
        for first in range(0, events, batch):
            with session.begin():
                stored += insert(session, made[first : first + batch])
    seconds = time.perf_counter() - started
    engine.dispose()
    if stored != events:
        raise harness.BenchError(f"{way}: {stored} of {events} events stored")
    return events / seconds


def compare(events: int, batch: int, rounds: int, ways: list[str]) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {way: [] for way in ways}
    for round_number in range(rounds):
        order = ways if round_number % 2 == 0 else list(reversed(ways))
        for way in order:
            rates[way].append(measure(way, events, batch))
    return rates


def report(rates: dict[str, list[float]]) -> str:
    baseline = statistics.median(next(iter(rates.values())))
    lines = [f"{'insert path':48}  {'median events/s':>15}  {'of the first':>12}  rounds"]
    for way, figures in rates.items():
        median = statistics.median(figures)
        rounds = ", ".join(f"{figure:,.0f}" for figure in figures)
        lines.append(f"{way:48}  {median:>15,.0f}  {median / baseline:>12.0%}  {rounds}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inserts", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1_000, help="rows a transaction (default 1,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ways", nargs="*", default=list(WAYS), choices=list(WAYS))
    options = parser.parse_args()
    print(report(compare(options.events, options.batch, options.rounds, options.ways)))
    print(orjson.dumps({"events": options.events, "batch": options.batch}).decode())


if __name__ == "__main__":
    main()
