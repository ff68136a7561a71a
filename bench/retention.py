"""``python -m bench.retention [--rows N]``: drop a day of events against deleting it.

A fresh database at the current schema; one day's partition is filled with ``--rows`` events
(10 million by default) of one organization, twice: the first time the retention pass drops it
(``events.retention.apply_retention``, whole partitions), the second time the same rows are
deleted as the pass deletes an organization's events when its retention is shorter than the
others' (batches of 10,000, each a transaction). Prints both times and the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from sqlalchemy import Engine, text

from bench import harness
from userpath_worker.events import partitions, retention

_DATABASE = "userpath_bench_retention"
# A day long past, so that every other partition is newer.
_DAY = dt.date(2001, 2, 3)


def fill_day(engine: Engine, rows: int) -> float:
    """Make the day's partition and put ``rows`` events in it; returns the seconds it took."""
    started = time.perf_counter()
    with engine.begin() as connection:
        partitions.ensure_days(connection, {_DAY})
        connection.execute(
            text(
                "INSERT INTO events (org_id, api_key_id, environment, source, event_id, name, user_id, properties, "
                'context, "timestamp", received_at, occurred_at) '
                "SELECT 1, 1, 'live', 'server', 'e-' || n, 'Page Viewed', 'user-' || (n % 10000), "
                "jsonb_build_object('plan', 'pro', 'seats', n % 50, 'path', '/pricing/' || (n % 7)), "
                '\'{"ip": "203.0.113.9", "library": {"name": "bench", "version": "1"}}\', at, at, at '
                "FROM generate_series(1, :rows) AS n, "
                "LATERAL (SELECT CAST(:day AS timestamptz) + (n - 1) * (interval '86399 seconds' / :rows)) "
                "AS received(at)"
            ),
            {"rows": rows, "day": partitions.utc_midnight(_DAY)},
        )
        connection.execute(text("ANALYZE events"))
    return time.perf_counter() - started


def time_drop(engine: Engine) -> tuple[float, list[str]]:
    now = partitions.utc_midnight(_DAY) + dt.timedelta(days=31)  # 30 days' retention has passed the day
    started = time.perf_counter()
    run = retention.apply_retention(engine, 30, now)
    return time.perf_counter() - started, run.partitions_dropped


def time_delete(engine: Engine) -> tuple[float, int]:
    """The shorter-retention path, for the organization of every row: batched deletes."""
    run = retention.RetentionRun(dry_run=False, default_days=30)
    cutoff = partitions.utc_midnight(_DAY) + dt.timedelta(days=1)
    started = time.perf_counter()
    retention._delete_expired(engine, run, 1, cutoff, time.monotonic() + 24 * 3600)
    return time.perf_counter() - started, sum(run.events_deleted.values())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    options = parser.parse_args()
    print(f"load average before: {harness.load_average()}")
    engine = harness.fresh_database(_DATABASE)
    filled = fill_day(engine, options.rows)
    dropped_in, dropped = time_drop(engine)
    print(f"filled a day of {options.rows:,} events in {filled:.1f} s")
    print(f"retention pass dropping it ({', '.join(dropped)}): {dropped_in:.3f} s")
    filled = fill_day(engine, options.rows)
    deleted_in, deleted = time_delete(engine)
    print(f"filled it again in {filled:.1f} s")
    print(f"batched deletes of the same day ({deleted:,} rows, 10,000 a transaction): {deleted_in:.1f} s")
    print(f"dropping is {deleted_in / max(dropped_in, 1e-6):,.0f} times faster")
    print(f"load average after: {harness.load_average()}")
    engine.dispose()


if __name__ == "__main__":
    main()
