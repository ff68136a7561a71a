"""Event retention: how long each organization's events are kept, and the pass that applies it.

Retention counts from ``received_at`` (the partition key). On PostgreSQL a day's partition is
dropped whole once every organization's retention has passed its end; the events of an
organization whose retention is shorter than the longest are deleted in batches, for a bounded
time per pass (the next pass goes on). The expired weeks of ``event_ids`` are dropped by the same
pass. On SQLite every organization's expired events are deleted in batches.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, and_, delete, func, select, tuple_

from userpath_worker.events import partitions
from userpath_worker.events.models import Event
from userpath_worker.organizations.models import Organization

logger = logging.getLogger("userpath.retention")

DELETE_BATCH = 10_000
DELETE_SECONDS = 600  # at most this long deleting per pass; beat's next pass goes on


@dataclass(slots=True)
class RetentionRun:
    """What one pass dropped and deleted (or, dry, would have)."""

    dry_run: bool
    default_days: int
    partitions_dropped: list[str] = field(default_factory=list)
    event_ids_weeks_dropped: list[str] = field(default_factory=list)
    events_deleted: dict[int, int] = field(default_factory=dict)  # by organization
    complete: bool = True  # false when the time bound stopped the deletes: the next pass goes on
    seconds: float = 0.0
    dropped_until: dt.datetime | None = None  # the end of the newest partition dropped

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "default_days": self.default_days,
            "partitions_dropped": self.partitions_dropped,
            "event_ids_weeks_dropped": self.event_ids_weeks_dropped,
            "events_deleted": sum(self.events_deleted.values()),
            "events_deleted_by_org": {str(org): count for org, count in sorted(self.events_deleted.items())},
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
        }


def retention_days(connection: Connection, default_days: int) -> dict[int, int]:
    """Every organization's retention in days: its own, or ``default_days``."""
    rows = connection.execute(select(Organization.id, Organization.event_retention_days))
    return {org_id: days or default_days for org_id, days in rows}


def apply_retention(
    engine: Engine,
    default_days: int,
    now: dt.datetime,
    dry_run: bool = False,
    max_seconds: float = DELETE_SECONDS,
) -> RetentionRun:
    """One retention pass, each drop and each batch of deletes in a transaction of its own."""
    started = time.monotonic()
    run = RetentionRun(dry_run, default_days)
    with engine.connect() as connection:
        days = retention_days(connection, default_days)
        events = partitions.partitioned_events(connection)
    longest = max([default_days, *days.values()])
    if events == partitions.EVENTS:
        _drop_expired(engine, run, now - dt.timedelta(days=longest), now)
        shorter = {org_id: org_days for org_id, org_days in days.items() if org_days < longest}
    elif events is None:  # SQLite: no partitions
        shorter = days
    else:  # PostgreSQL while migration 0015 moves events: nothing is dropped or deleted meanwhile
        logger.warning("event retention skipped: events are being moved into partitions (migration 0015)")
        shorter = {}
    for org_id, org_days in sorted(shorter.items()):
        cutoff = now - dt.timedelta(days=org_days)
        if not _delete_expired(engine, run, org_id, cutoff, started + max_seconds):
            run.complete = False
            break
    run.seconds = time.monotonic() - started
    return run


def _drop_expired(engine: Engine, run: RetentionRun, horizon: dt.datetime, now: dt.datetime) -> None:
    """Drop the events partitions that end at or before ``horizon`` and the weeks of event_ids
    before the previous week (the dedupe window)."""
    previous_week = partitions.utc_midnight(partitions.week_of(now.date()) - partitions.WEEK)
    for table, before, dropped in (
        (partitions.EVENTS, horizon, run.partitions_dropped),
        (partitions.EVENT_IDS, previous_week, run.event_ids_weeks_dropped),
    ):
        with engine.begin() as connection:
            expired = [part for part in partitions.partitions(connection, table) if part.high <= before]
        for partition in expired:
            if table == partitions.EVENTS:
                run.dropped_until = max(run.dropped_until or partition.high, partition.high)
            if not run.dry_run:
                with engine.begin() as connection:
                    partitions.drop_partition(connection, table, partition)
            dropped.append(partition.name)


def _delete_expired(engine: Engine, run: RetentionRun, org_id: int, cutoff: dt.datetime, deadline: float) -> bool:
    """Delete one organization's events received before ``cutoff``, a batch a transaction, until
    none is left (True) or ``deadline`` (False)."""
    expired = and_(Event.org_id == org_id, Event.received_at < cutoff)
    if run.dry_run:  # what the partitions that would be dropped hold is not counted twice
        if run.dropped_until is not None:
            expired = and_(expired, Event.received_at >= run.dropped_until)
        with engine.connect() as connection:
            found = connection.scalar(select(func.count()).select_from(Event).where(expired)) or 0
        if found:
            run.events_deleted[org_id] = found
        return True
    while time.monotonic() < deadline:
        batch = select(Event.id, Event.received_at).where(expired).limit(DELETE_BATCH)
        with engine.begin() as connection:
            deleted = connection.execute(delete(Event).where(tuple_(Event.id, Event.received_at).in_(batch))).rowcount
        if deleted:
            run.events_deleted[org_id] = run.events_deleted.get(org_id, 0) + deleted
        if deleted < DELETE_BATCH:
            return True
    return False
