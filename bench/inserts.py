"""``python -m bench.inserts``: the insert path alone, in-process, events a second into PostgreSQL.

The same rows (the verdicts' rows of envelopes of 100, one organization) are inserted in
transactions of ``--batch`` rows, one way after the other, each into a fresh database:

- ``plain, jsonb (before 0012)``: the statement of the release before partitioning, into its plain
  ``events`` with the unique ``(org_id, event_id)`` (the schema at revision 0008);
- ``partitioned, jsonb``: this release's ``events.storage.insert_events``, into the partitioned
  ``events`` with its ``event_ids`` claims (a plain insert, last week's index probed);
- ``claimed around (before)``: the statement that claims with ``ON CONFLICT DO NOTHING`` and joins
  the claims it returns back (the release before; still what a batch with a re-sent event takes);
- ``one event re-sent a batch``: this release's insert when every batch holds an event of the
  batch before (the cheaper statement fails on its claim, then the batch is claimed around);
- ``claim of an md5 uuid``: the release before's statement with a narrower claim, a uuid of
  md5(org_id, event_id) instead of the two columns;
- ``both weeks probed, no ON CONFLICT``: this week's claims probed too, so that a claim fails only
  for a copy in flight in another transaction;
- ``partitioned, unnest``: this release's claims, the rows passed as one typed array per column;
- ``partitioned, COPY``: the same, the rows copied (binary) into a temporary table first;
- ``partitioned, jsonb, ON CONFLICT on events``: this release's statement as it runs while 0015
  moves the plain table (every row a speculative insertion);
- ``partitioned, jsonb, no (org_id, occurred_at)``: the index set question: this release's insert
  without the index that erasure, per-organization retention and analysts read;
- ``partitioned by day, 400 days of partitions`` against ``partitioned by month, 14 months``: what
  the partitions' size and number cost the insert (a 395-day retention keeps about 400 days).

Each way runs ``--rounds`` times, alternated, so that other work on the machine weighs on all.
``--random-ids``: event ids are random UUIDs, as the client libraries send them (wider keys, in
random places of the indexes), instead of ``bench-N``.
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
from userpath_client.wire import new_event_id
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
# Cheaper claims tried (issue 24, item 5), beside this release's (events.storage).
# A claim of a 128-bit hash of (org_id, event_id) as one uuid, by the statement of the release before.
_HASHED_KEY = "md5(org_id::text || ':' || event_id)::uuid"
_HASHED_EVENT_IDS = [
    "DROP TABLE event_ids",
    "CREATE TABLE event_ids (key uuid NOT NULL, period date NOT NULL, "
    "CONSTRAINT pk_event_ids PRIMARY KEY (key, period)) PARTITION BY RANGE (period)",
    "CREATE TABLE event_ids_default PARTITION OF event_ids DEFAULT",
]
_HASHED_CLAIMED_INSERT = f"""
WITH incoming AS (SELECT *, {_HASHED_KEY} AS key FROM ({storage._INCOMING}) AS document),
claimed AS (
    INSERT INTO event_ids (key, period)
    SELECT key, period FROM incoming CROSS JOIN unnest(%(periods)s::date[]) AS claims(period)
    ON CONFLICT DO NOTHING
    RETURNING key
)
INSERT INTO events ({storage._COLUMNS})
SELECT {storage._COLUMNS} FROM incoming
WHERE key IN (
    SELECT key FROM claimed
    WHERE NOT EXISTS (SELECT FROM event_ids seen WHERE seen.period = %(previous)s AND seen.key = claimed.key)
)
RETURNING org_id, event_id
"""
# This release's statement with the same narrower claim.
_HASHED_UNCLAIMED_INSERT = storage._UNCLAIMED_INSERT
for unhashed, hashed in (
    (
        f"FROM ({storage._INCOMING}) AS document",
        f"FROM (SELECT *, {_HASHED_KEY} AS key FROM ({storage._INCOMING}) AS parsed) AS document",
    ),
    ("claim.org_id = document.org_id AND claim.event_id = document.event_id", "claim.key = document.key"),
    (
        "INSERT INTO event_ids (org_id, event_id, period) SELECT org_id, event_id,",
        "INSERT INTO event_ids (key, period) SELECT key,",
    ),
):
    assert unhashed in _HASHED_UNCLAIMED_INSERT, unhashed
    _HASHED_UNCLAIMED_INSERT = _HASHED_UNCLAIMED_INSERT.replace(unhashed, hashed)
# Without ON CONFLICT, both weeks probed first (so that a claim fails only for a copy in flight in
# another transaction) rather than this release's probe of last week alone.
_PROBED_INSERT = f"""
WITH probed AS MATERIALIZED (
    SELECT document.*, this_week.hit IS NOT NULL AS claimed, last_week.hit IS NOT NULL AS seen
    FROM ({storage._INCOMING}) AS document
    LEFT JOIN LATERAL (
        SELECT true AS hit FROM event_ids claim
        WHERE claim.period = %(this_week)s AND claim.org_id = document.org_id AND claim.event_id = document.event_id
        LIMIT 1
    ) AS this_week ON true
    LEFT JOIN LATERAL (
        SELECT true AS hit FROM event_ids claim
        WHERE claim.period = %(previous)s AND claim.org_id = document.org_id AND claim.event_id = document.event_id
        LIMIT 1
    ) AS last_week ON true
),
claims AS (
    INSERT INTO event_ids (org_id, event_id, period)
    SELECT org_id, event_id, %(this_week)s FROM probed WHERE NOT claimed
)
INSERT INTO events ({storage._COLUMNS})
SELECT {storage._COLUMNS} FROM probed WHERE NOT claimed AND NOT seen
RETURNING org_id, event_id
"""
_ARRAY_COLUMNS = (
    "org_id", "api_key_id", "environment", "source", "event_id", "timestamp", "sent_at", "received_at",
    "occurred_at", "verified",
)  # fmt: skip


Insert = Callable[[Session, list[dict[str, Any]]], int]  # a way: stores a batch, returns how many were new


def rows(count: int, start: int = 0, random_ids: bool = False) -> list[dict[str, Any]]:
    """Rows as ``events.verdicts`` makes them for a server's events, in envelopes of 100; with
    ``random_ids``, each event_id a random UUID as the client libraries make them."""
    now = dt.datetime.now(dt.UTC)
    made = []
    for number in range(start, start + count):
        event = {
            "event": "Page Viewed",
            "event_id": new_event_id() if random_ids else f"bench-{number}",
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


def _unclaimed(batch: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """This release's cheaper statement and its parameters (``_now`` is never in a week's first hour)."""
    made = storage.unclaimed_insert(batch, _now())
    assert made is not None
    return made


def _this_release(source: str) -> str:
    """This release's statement with its rows from ``source`` instead of the JSON document."""
    return _unclaimed([])[0].replace(storage._INCOMING, source)


def insert_plain(session: Session, batch: list[dict[str, Any]]) -> int:
    document = storage._rows_document(batch)
    return len(session.connection().exec_driver_sql(_PLAIN_INSERT, {"rows": document}).all())


def insert_this_release(session: Session, batch: list[dict[str, Any]]) -> int:
    return len(storage.insert_events(session, batch))


def insert_during_the_move(session: Session, batch: list[dict[str, Any]]) -> int:
    statement, parameters = storage.claiming_insert(batch, _now(), moving=True)
    return len(session.connection().exec_driver_sql(statement, parameters).all())


def insert_claiming_around(session: Session, batch: list[dict[str, Any]]) -> int:
    statement, parameters = storage.claiming_insert(batch, _now())
    return len(session.connection().exec_driver_sql(statement, parameters).all())


_resent_after: dict[str, Any] = {}  # the last row of the batch before, and the engine it went to


def _one_resent(insert: Insert) -> Insert:
    """``insert`` of each batch with one event of the batch before it, re-sent."""

    def insert_with_one_resent(session: Session, batch: list[dict[str, Any]]) -> int:
        before = _resent_after.get("row") if _resent_after.get("engine") is session.get_bind() else None
        _resent_after.update(engine=session.get_bind(), row=batch[-1])
        return insert(session, batch + ([before] if before else []))

    return insert_with_one_resent


def insert_hashed_claims(session: Session, batch: list[dict[str, Any]]) -> int:
    _, parameters = storage.claiming_insert(batch, _now())
    return len(session.connection().exec_driver_sql(_HASHED_CLAIMED_INSERT, parameters).all())


def insert_hashed_unclaimed(session: Session, batch: list[dict[str, Any]]) -> int:
    _, parameters = _unclaimed(batch)
    with session.begin_nested():
        return len(session.connection().exec_driver_sql(_HASHED_UNCLAIMED_INSERT, parameters).all())


def insert_probed(session: Session, batch: list[dict[str, Any]]) -> int:
    _, parameters = _unclaimed(batch)
    with session.begin_nested():
        return len(session.connection().exec_driver_sql(_PROBED_INSERT, parameters).all())


def insert_unnest(session: Session, batch: list[dict[str, Any]]) -> int:
    _, parameters = _unclaimed(batch)
    arrays = {column: [row[column] for row in batch] for column in _ARRAY_COLUMNS}
    arrays["event"] = [row["event_json"].decode() for row in batch]
    with session.begin_nested():
        return len(session.connection().exec_driver_sql(_this_release(_FROM_ARRAYS), parameters | arrays).all())


def insert_copy(session: Session, batch: list[dict[str, Any]]) -> int:
    _, parameters = _unclaimed(batch)
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
    with session.begin_nested():
        return len(session.connection().exec_driver_sql(_this_release(_FROM_STAGING), parameters).all())


def _now() -> dt.datetime:
    """Now, or an hour later in a week's first hour: these ways use the statement of the rest of the week."""
    now = dt.datetime.now(dt.UTC)
    return now + storage.WEEK_START_OVERLAP if now.weekday() == 0 and now.hour == 0 else now


def _as_is(encoded: bytes) -> bytes:
    return encoded


WAYS: dict[str, tuple[str, Insert]] = {
    "plain, jsonb (before 0012)": ("0008", insert_plain),
    "partitioned, jsonb (this release)": ("head", insert_this_release),
    "partitioned, jsonb, claimed around (before)": ("head", insert_claiming_around),
    "partitioned, jsonb, one event re-sent a batch": ("head", _one_resent(insert_this_release)),
    "partitioned, jsonb, ON CONFLICT on events": ("head", insert_during_the_move),
    "partitioned, claim of an md5 uuid (before)": ("head-hashed-claims", insert_hashed_claims),
    "partitioned, jsonb, claim of an md5 uuid": ("head-hashed-claims", insert_hashed_unclaimed),
    "partitioned, both weeks probed, no ON CONFLICT": ("head", insert_probed),
    "partitioned, both weeks probed, one re-sent a batch": ("head", _one_resent(insert_probed)),
    "partitioned, unnest": ("head", insert_unnest),
    "partitioned, COPY + INSERT ... SELECT": ("head", insert_copy),
    "partitioned, jsonb, no (org_id, occurred_at)": ("head-no-occurred", insert_this_release),
    "partitioned by day, 400 days of partitions": ("head-400-days", insert_this_release),
    "partitioned by month, 14 months of partitions": ("head-14-months", insert_this_release),
}
# The index sets tried (DDL after the migrations).
_INDEX_SETS = {"head-no-occurred": ["DROP INDEX ix_events_org_occurred"], "head-hashed-claims": _HASHED_EVENT_IDS}


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
        partitions.ensure_partitions(connection, today)  # event_ids' weeks, if remade above
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


def measure(way: str, events: int, batch: int, random_ids: bool = False) -> float:
    """Events a second of one way, into a fresh database, ``batch`` rows a transaction."""
    revision, insert = WAYS[way]
    engine = database(revision)
    storage._claim_around = 0  # as a process that saw no re-sent event yet, whatever way ran before
    made = rows(events, random_ids=random_ids)
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


def compare(events: int, batch: int, rounds: int, ways: list[str], random_ids: bool = False) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {way: [] for way in ways}
    for round_number in range(rounds):
        order = ways if round_number % 2 == 0 else list(reversed(ways))
        for way in order:
            rates[way].append(measure(way, events, batch, random_ids))
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
    parser.add_argument(
        "--random-ids", action="store_true", help="event ids random UUIDs, as the clients send (default bench-N)"
    )
    options = parser.parse_args()
    print(report(compare(options.events, options.batch, options.rounds, options.ways, options.random_ids)))
    print(orjson.dumps({"events": options.events, "batch": options.batch, "random_ids": options.random_ids}).decode())


if __name__ == "__main__":
    main()
