"""``python -m bench.inserts``: the insert path alone, in-process, events a second into PostgreSQL.

The same rows (the verdicts' rows of envelopes of 100, one organization) are inserted in
transactions of ``--batch`` rows, one way after the other, each into a fresh database:

- ``plain, jsonb (before 0012)``: the statement of the release before partitioning, into its plain
  ``events`` with the unique ``(org_id, event_id)`` (the schema at revision 0008): the batch as one
  JSON document, turned into rows by ``jsonb_array_elements``;
- ``partitioned, COPY``: this release's ``events.storage.insert_events``, into the partitioned
  ``events`` with its ``event_ids`` claims: the rows copied (binary) into a staging table, then
  claimed by a plain insert and stored where last week's index has no claim;
- ``partitioned, jsonb (release before)``: the same claims by the release before's one statement,
  its rows from the JSON document;
- ``claimed around``: the statement that claims with ``ON CONFLICT DO NOTHING`` and joins the
  claims it returns back (what a batch with a re-sent event, and the next ones, take);
- ``one event re-sent a batch``: this release's insert when every batch holds an event of the
  batch before (the cheaper claim fails, then the batch is claimed around);
- ``ON CONFLICT on events``: this release's statement as it runs while 0015 moves the plain table
  (every row a speculative insertion);
- ``no (org_id, occurred_at)``: the index set question: this release's insert without the index
  that erasure, per-organization retention and analysts read;
- ``partitioned by day, 400 days of partitions`` against ``partitioned by month, 14 months``: what
  the partitions' size and number cost the insert (a 395-day retention keeps about 400 days).

Ways tried before and not kept (an md5 uuid claim, both weeks probed, ``unnest`` of typed arrays):
their figures are in the README.

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
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from bench import harness
from userpath_client.schemas import canonical_json
from userpath_client.wire import new_event_id
from userpath_worker import schema
from userpath_worker.events import partitions, storage

# The release before's rows: the batch as one JSON document, turned into rows by one statement.
_DOCUMENT = """
SELECT (r->>0)::integer AS org_id, (r->>1)::integer AS api_key_id, r->>2 AS environment, r->>3 AS source,
       r->>4 AS event_id, r->5->>'event' AS name, r->5->>'user_id' AS user_id,
       r->5->>'anonymous_id' AS anonymous_id, coalesce(r->5->'properties', '{}') AS properties,
       nullif(r->5->'context', 'null') AS context, (r->>6)::timestamptz AS "timestamp",
       (r->>7)::timestamptz AS sent_at, (r->>8)::timestamptz AS received_at,
       (r->>9)::timestamptz AS occurred_at, (r->>10)::boolean AS verified
FROM jsonb_array_elements(%(rows)s::jsonb) AS document(r)
"""
# The release before 0012: one statement, the unique index deduplicates.
_PLAIN_INSERT = f"""
INSERT INTO events ({storage._COLUMNS})
{_DOCUMENT}
ON CONFLICT (org_id, event_id) DO NOTHING
RETURNING org_id, event_id
"""
# The release before this one: the claims and the events in one statement, from the document.
_JSONB_UNCLAIMED_INSERT = f"""
WITH incoming AS MATERIALIZED (
    SELECT document.*, last_week.hit IS NOT NULL AS seen
    FROM ({_DOCUMENT}) AS document
    LEFT JOIN LATERAL (
        SELECT true AS hit FROM event_ids claim
        WHERE claim.period = %(previous)s AND claim.org_id = document.org_id AND claim.event_id = document.event_id
        LIMIT 1
    ) AS last_week ON true
),
claims AS (
    INSERT INTO event_ids (org_id, event_id, period) SELECT org_id, event_id, %(this_week)s FROM incoming RETURNING 1
),
stored AS (INSERT INTO events ({storage._COLUMNS}) SELECT {storage._COLUMNS} FROM incoming WHERE NOT seen)
SELECT org_id, event_id FROM incoming WHERE NOT seen AND (SELECT count(*) FROM claims) > 0
"""


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


def insert_plain(session: Session, batch: list[dict[str, Any]]) -> int:
    document = _rows_document(batch)
    return len(session.connection().exec_driver_sql(_PLAIN_INSERT, {"rows": document}).all())


def insert_this_release(session: Session, batch: list[dict[str, Any]]) -> int:
    return len(storage.insert_events(session, batch))


def insert_jsonb_unclaimed(session: Session, batch: list[dict[str, Any]]) -> int:
    this_week, previous = storage._weeks(_now())
    parameters = {"rows": _rows_document(batch), "this_week": this_week, "previous": previous}
    with session.begin_nested():
        return len(session.connection().exec_driver_sql(_JSONB_UNCLAIMED_INSERT, parameters).all())


def insert_during_the_move(session: Session, batch: list[dict[str, Any]]) -> int:
    storage.stage(session, batch)
    return len(session.connection().exec_driver_sql(*storage.claiming_insert(_now(), moving=True)).all())


def insert_claiming_around(session: Session, batch: list[dict[str, Any]]) -> int:
    storage.stage(session, batch)
    return len(session.connection().exec_driver_sql(*storage.claiming_insert(_now())).all())


_resent_after: dict[str, Any] = {}  # the last row of the batch before, and the engine it went to


def _one_resent(insert: Insert) -> Insert:
    """``insert`` of each batch with one event of the batch before it, re-sent."""

    def insert_with_one_resent(session: Session, batch: list[dict[str, Any]]) -> int:
        before = _resent_after.get("row") if _resent_after.get("engine") is session.get_bind() else None
        _resent_after.update(engine=session.get_bind(), row=batch[-1])
        return insert(session, batch + ([before] if before else []))

    return insert_with_one_resent


def _now() -> dt.datetime:
    """Now, or an hour later in a week's first hour: these ways use the statement of the rest of the week."""
    now = dt.datetime.now(dt.UTC)
    return now + storage.WEEK_START_OVERLAP if now.weekday() == 0 and now.hour == 0 else now


def _rows_document(rows: list[dict[str, Any]]) -> str:
    """The batch as the release before sent it: one JSON document, each event's JSON spliced in."""
    return orjson.dumps(
        [
            [row["org_id"], row["api_key_id"], row["environment"], row["source"], row["event_id"],
             orjson.Fragment(row["event_json"]), row["timestamp"], row["sent_at"], row["received_at"],
             row["occurred_at"], row["verified"]]
            for row in rows
        ]
    ).decode()  # fmt: skip


WAYS: dict[str, tuple[str, Insert]] = {
    "plain, jsonb (before 0012)": ("0008", insert_plain),
    "partitioned, COPY (this release)": ("head", insert_this_release),
    "partitioned, jsonb (release before)": ("head", insert_jsonb_unclaimed),
    "partitioned, claimed around": ("head", insert_claiming_around),
    "partitioned, one event re-sent a batch": ("head", _one_resent(insert_this_release)),
    "partitioned, ON CONFLICT on events": ("head", insert_during_the_move),
    "partitioned, no (org_id, occurred_at)": ("head-no-occurred", insert_this_release),
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
