"""Per key, per hour: how many events were stored, how many were duplicates and how many were
refused for each reason. The pages read these counters, never ``events`` or ``dead_letters``, to
say what a key sends.

The worker adds to them in the transaction that stores the batch: one multi-row upsert for the
batch, one row per (key, hour, outcome). A refusal without a key (malformed, mistyped, unknown)
belongs to no organization and is not counted here: it stays in the operator's dead-letter list.
The edge adds the events it refused with 429 (``RATE_LIMITED``), batched (``edge.limits``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import Index, Integer, String, case, func, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from userpath_worker.db import Base

STORED = "stored"
DUPLICATE = "duplicate"
# Events the edge answered 429, counted each time they were sent. Every other outcome is a dead
# letter's reason. Both are refusals.
RATE_LIMITED = "rate_limited"
TABLE = "ingestion_counts"
DAY = dt.timedelta(days=1)
MONTH_DAYS = 30
_TABLE_CHECK_SECONDS = 60.0
_table_present: dict[str, tuple[bool, float]] = {}  # by database URL: present, checked at


class IngestionCount(Base):
    __tablename__ = TABLE
    # Covering the keys list's query (day_counts): read from the index alone, a busy organization's
    # 24 hours (1,000 keys, two outcomes an hour: 48,000 rows) sum in 16 ms on SQLite, not 47.
    __table_args__ = (Index("ix_ingestion_counts_org_hour", "org_id", "hour", "api_key_id", "outcome", "count"),)

    api_key_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hour: Mapped[dt.datetime] = mapped_column(primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[int]
    count: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[dt.datetime]  # the latest in the hour: the key's last event, or last refusal


@dataclass(frozen=True, slots=True)
class Tally:
    """One batch's counts, by (org_id, api_key_id, outcome)."""

    counts: Counter[tuple[int, int, str]] = field(default_factory=Counter)

    def add(self, org_id: int | None, api_key_id: int | None, outcome: str, count: int = 1) -> None:
        if org_id is not None and api_key_id is not None and count:
            self.counts[org_id, api_key_id, outcome] += count


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def add_counts(session: Session, tally: Tally, now: dt.datetime) -> None:
    """Add ``tally`` to the hour of ``now``: one statement, in the caller's transaction."""
    if not tally.counts or not _counting(session):
        return
    postgres = session.get_bind().dialect.name == "postgresql"
    insert = (postgresql if postgres else sqlite).insert(IngestionCount)
    latest = func.greatest if postgres else func.max  # SQLite's max() of two values is the greater
    hour = hour_of(now)
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["api_key_id", "hour", "outcome"],
            set_={
                "count": IngestionCount.count + insert.excluded.count,
                "last_at": latest(IngestionCount.last_at, insert.excluded.last_at),
            },
        ),
        [
            {"org_id": org, "api_key_id": key, "outcome": outcome, "hour": hour, "count": count, "last_at": now}
            for (org, key, outcome), count in tally.counts.items()
        ],
    )


def _counting(session: Session) -> bool:
    """Whether the table is there, asked again each minute until it is (then for good): migration
    0019 runs online, while this release's workers already ingest (schema.ONLINE_REVISIONS)."""
    url = str(session.get_bind().engine.url)
    known, checked = _table_present.get(url, (False, -_TABLE_CHECK_SECONDS))
    if known or time.monotonic() - checked < _TABLE_CHECK_SECONDS:
        return known
    answer = inspect(session.connection()).has_table(TABLE)
    _table_present[url] = (answer, time.monotonic())
    return answer


@dataclass(slots=True)
class KeyActivity:
    """What one key sent: counts in the last 24 hours and 30 days, refusals by reason, a bar per day."""

    day: Counter[str] = field(default_factory=Counter)  # by outcome
    month: Counter[str] = field(default_factory=Counter)
    daily: dict[dt.date, Counter[str]] = field(default_factory=dict)
    last_event: dt.datetime | None = None
    last_refusal: dt.datetime | None = None
    last_refusal_reason: str | None = None

    @staticmethod
    def summed(counts: Mapping[str, int]) -> dict[str, int]:
        """stored, duplicates, refused."""
        refused = sum(count for outcome, count in counts.items() if outcome not in (STORED, DUPLICATE))
        return {"stored": counts.get(STORED, 0), "duplicates": counts.get(DUPLICATE, 0), "refused": refused}

    def refusals(self) -> list[tuple[str, int]]:
        """The last 30 days' refusals by reason, the most frequent first."""
        return [(o, c) for o, c in self.month.most_common() if o not in (STORED, DUPLICATE)]


def key_activity(session: Session, org_id: int, api_key_id: int, now: dt.datetime) -> KeyActivity:
    """One key's last 30 days (by the hour, so 24 hours are the last 24 whole and current hours)."""
    activity = KeyActivity()
    if not _counting(session):
        return activity
    since_month, since_day = hour_of(now) - MONTH_DAYS * DAY + dt.timedelta(hours=1), hour_of(now) - DAY
    rows = session.execute(
        select(IngestionCount.hour, IngestionCount.outcome, IngestionCount.count, IngestionCount.last_at).where(
            IngestionCount.org_id == org_id, IngestionCount.api_key_id == api_key_id, IngestionCount.hour >= since_month
        )
    )
    for hour, outcome, count, last_at in rows:
        activity.month[outcome] += count
        if hour > since_day:
            activity.day[outcome] += count
        activity.daily.setdefault(hour.date(), Counter())[outcome] += count
        if outcome == STORED:
            activity.last_event = max(activity.last_event or last_at, last_at)
        elif outcome != DUPLICATE and (activity.last_refusal is None or last_at > activity.last_refusal):
            activity.last_refusal, activity.last_refusal_reason = last_at, outcome
    return activity


def day_counts(session: Session, org_id: int, now: dt.datetime) -> dict[int, dict[str, int]]:
    """Each key's last 24 hours (stored, duplicates, refused), for the keys list: one query by the
    (org_id, hour) index, over at most 25 rows per key and outcome."""
    if not _counting(session):
        return {}
    found: dict[int, Counter[str]] = {}
    rows = session.execute(
        select(IngestionCount.api_key_id, IngestionCount.outcome, func.sum(IngestionCount.count))
        .where(IngestionCount.org_id == org_id, IngestionCount.hour > hour_of(now) - DAY)
        .group_by(IngestionCount.api_key_id, IngestionCount.outcome)
    )
    for key, outcome, count in rows:
        found.setdefault(key, Counter())[outcome] += int(count)
    return {key: KeyActivity.summed(counts) for key, counts in found.items()}


def refusals_by_key(
    session: Session, org_id: int, now: dt.datetime, days: int = MONTH_DAYS
) -> list[tuple[str, int, int, dt.datetime]]:
    """The organization's dead letters of the last ``days`` days: (reason, api_key_id, count, last),
    the most frequent first (the edge's 429s are ``rate_limited_by_key``'s)."""
    if not _counting(session):
        return []
    total = func.sum(IngestionCount.count)
    rows = session.execute(
        select(IngestionCount.outcome, IngestionCount.api_key_id, total, func.max(IngestionCount.last_at))
        .where(
            IngestionCount.org_id == org_id,
            IngestionCount.hour > hour_of(now) - days * DAY,
            IngestionCount.outcome.not_in([STORED, DUPLICATE, RATE_LIMITED]),
        )
        .group_by(IngestionCount.outcome, IngestionCount.api_key_id)
        .order_by(total.desc())
    )
    return [(reason, key, int(count), last) for reason, key, count, last in rows]


class RateLimited(NamedTuple):
    api_key_id: int
    day: int
    month: int
    last: dt.datetime


def rate_limited_by_key(session: Session, org_id: int, now: dt.datetime) -> list[RateLimited]:
    """The organization's events refused with 429 at the edge, by key, in the last 24 hours and 30
    days (by the hour, as ``key_activity``), the most first."""
    if not _counting(session):
        return []
    since_month, since_day = hour_of(now) - MONTH_DAYS * DAY + dt.timedelta(hours=1), hour_of(now) - DAY
    month = func.sum(IngestionCount.count)
    rows = session.execute(
        select(
            IngestionCount.api_key_id,
            func.sum(case((IngestionCount.hour > since_day, IngestionCount.count), else_=0)),
            month,
            func.max(IngestionCount.last_at),
        )
        .where(
            IngestionCount.org_id == org_id,
            IngestionCount.hour >= since_month,
            IngestionCount.outcome == RATE_LIMITED,
        )
        .group_by(IngestionCount.api_key_id)
        .order_by(month.desc())
    )
    return [RateLimited(key, int(day), int(total), last) for key, day, total, last in rows]


def tally_of(outcomes: Iterable[tuple[int | None, int | None, int, int]]) -> Tally:
    """A tally of (org_id, api_key_id, stored, duplicates) per message."""
    tally = Tally()
    for org_id, key_id, stored, duplicates in outcomes:
        tally.add(org_id, key_id, STORED, stored)
        tally.add(org_id, key_id, DUPLICATE, duplicates)
    return tally
