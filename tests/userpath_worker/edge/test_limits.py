"""The edge's token buckets: the same arithmetic in Redis' Lua script (shared by every edge process,
on Redis' clock) and in the process; what a request is told; an organization's limits, cached; the
events refused, counted for the owners' pages in batches.

The Redis cases need the machine lock (tests/common/workers.FAULTS_REDIS_URL's database)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from alembic import command
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.common.factories import OWNER
from tests.common.workers import FAULTS_REDIS_URL
from userpath_worker import schema
from userpath_worker.db import make_engine, utcnow
from userpath_worker.edge.http import Refused
from userpath_worker.edge.limits import (
    BUCKET_KEY,
    Buckets,
    LocalBuckets,
    NeedsIO,
    OrganizationLimits,
    RateLimiter,
    RedisBuckets,
    RefusalCounts,
    Verdict,
)
from userpath_worker.errors import UserError
from userpath_worker.events import rollups
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization
from userpath_worker.organizations.services import RateLimit

ORG = 4242
OTHER_ORG = 4243


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["redis", "in-process"])
def buckets(request: pytest.FixtureRequest) -> Iterator[Buckets]:
    if request.param == "in-process":
        yield LocalBuckets()
        return
    client = redis.Redis.from_url(FAULTS_REDIS_URL)
    client.delete(*(BUCKET_KEY.format(org_id=org) for org in (ORG, OTHER_ORG)))
    yield RedisBuckets(FAULTS_REDIS_URL, timeout=5)
    client.close()


def test_a_full_bucket_gives_its_burst_then_the_wait_its_rate_says(buckets: Buckets) -> None:
    limit = RateLimit(events_per_second=10, burst=20)
    assert buckets.take(ORG, limit, 20) == (0.0, pytest.approx(0, abs=0.1))
    wait, tokens = buckets.take(ORG, limit, 5)  # 5 more at 10 a second: about half a second
    assert 0.4 < wait <= 0.5 and tokens < 1
    assert buckets.take(OTHER_ORG, limit, 20)[0] == 0  # each organization its own bucket


def test_the_bucket_refills_at_its_rate_and_a_refusal_takes_nothing(buckets: Buckets) -> None:
    limit = RateLimit(events_per_second=100, burst=10)
    assert buckets.take(ORG, limit, 10)[0] == 0
    assert buckets.take(ORG, limit, 8)[0] > 0  # refused: the 8 are not taken
    time.sleep(0.1)  # 10 tokens back
    wait, tokens = buckets.take(ORG, limit, 8)
    assert wait == 0 and 2 <= tokens < 3


def test_a_request_over_the_burst_waits_for_a_full_bucket_and_leaves_a_debt(buckets: Buckets) -> None:
    limit = RateLimit(events_per_second=100, burst=10)
    assert buckets.take(ORG, limit, 3)[0] == 0
    wait, _ = buckets.take(ORG, limit, 25)  # never fits: waits for the bucket to be full (3 more)
    assert 0 < wait <= 0.03
    time.sleep(0.05)
    wait, tokens = buckets.take(ORG, limit, 25)
    assert wait == 0 and tokens == pytest.approx(-15, abs=1)
    wait, _ = buckets.take(ORG, limit, 1)  # the debt is repaid first: 16 tokens at 100 a second
    assert 0.14 < wait <= 0.16


def test_the_redis_bucket_expires_once_it_would_be_full_again() -> None:
    client = redis.Redis.from_url(FAULTS_REDIS_URL)
    key = BUCKET_KEY.format(org_id=ORG)
    client.delete(key)
    RedisBuckets(FAULTS_REDIS_URL, timeout=5).take(ORG, RateLimit(events_per_second=10, burst=100), 50)
    assert 5_000 < client.pttl(key) <= 6_000  # 5 s to refill 50, and a second's margin
    client.close()


def test_redis_away_is_a_503_with_retry_after() -> None:
    away = RedisBuckets("redis://127.0.0.1:1/0", timeout=1)
    with pytest.raises(Refused) as refused:
        away.take(ORG, RateLimit(10, 10), 1)
    assert refused.value.answer.status == 503
    assert dict(refused.value.answer.headers)["retry-after"] == "5"


def test_the_in_process_arithmetic_exactly() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock)
    limit = RateLimit(events_per_second=4, burst=8)
    assert buckets.take(ORG, limit, 6) == (0.0, 2.0)
    assert buckets.take(ORG, limit, 4) == (0.5, 2.0)
    clock.now += 0.5
    assert buckets.take(ORG, limit, 4) == (0.0, 0.0)
    clock.now += 100  # never more than the burst
    assert buckets.take(ORG, limit, 20) == (0.0, -12.0)
    assert buckets.take(ORG, limit, 20) == (5.0, -12.0)


def test_a_verdict_says_whole_seconds_and_what_is_left() -> None:
    refused = Verdict(RateLimit(events_per_second=10, burst=20), wait=0.01, tokens=-1.5)
    assert refused.retry_after == 1  # at least a second: Retry-After is whole seconds
    assert refused.headers == (
        ("x-ratelimit-limit", "20"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "3"),  # 21.5 events at 10 a second
    )
    taken = Verdict(RateLimit(events_per_second=1000, burst=5000), wait=0, tokens=4899.5)
    assert [value for _, value in taken.headers] == ["5000", "4899", "1"]
    assert Verdict(RateLimit(1, 1), wait=2.2, tokens=0).retry_after == 3


def test_an_organizations_limit_is_its_own_else_the_default_and_kept_a_while(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'limits.db'}")
    schema.upgrade(engine)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        acme = organizations.create_organization(session, "Acme", OWNER)
        organizations.set_rate_limit(session, acme, RateLimit(5, 50))
        beta_id = organizations.create_organization(session, "Beta", OWNER).id
        acme_id = acme.id
    clock = Clock()
    limits = OrganizationLimits(sessions, RateLimit(100, 1000), ttl=2, clock=clock)
    assert (limits.of(acme_id), limits.of(beta_id)) == (RateLimit(5, 50), RateLimit(100, 1000))
    with sessions.begin() as session:
        organizations.set_rate_limit(session, session.get_one(Organization, acme_id), None)
    assert limits.of(acme_id) == RateLimit(5, 50)  # cached
    clock.now += 2
    assert limits.of(acme_id) == RateLimit(100, 1000)
    assert OrganizationLimits(sessions, None, ttl=2).of(acme_id) is None  # no default: no limit
    engine.dispose()


def test_a_database_still_waiting_for_0018_gives_the_default(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'before.db'}")
    config = schema.alembic_config(engine)
    command.upgrade(config, "0017")
    limits = OrganizationLimits(sessionmaker(engine), RateLimit(100, 1000), ttl=2)
    assert limits.of(1) == RateLimit(100, 1000)
    engine.dispose()


def test_set_rate_limit_refuses_numbers_out_of_range(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'limits.db'}")
    schema.upgrade(engine)
    with Session(engine) as session:
        acme = organizations.create_organization(session, "Acme", OWNER)
        with pytest.raises(UserError, match="--burst must be from 1 to 100000000"):
            organizations.set_rate_limit(session, acme, RateLimit(5, 0))
    engine.dispose()


def rate_limited(engine: Engine, org_id: int = ORG) -> list[tuple[int, int, int]]:
    with Session(engine) as session:
        return [(row.api_key_id, row.day, row.month) for row in rollups.rate_limited_by_key(session, org_id, utcnow())]


def eventually(engine: Engine, expected: list[tuple[int, int, int]]) -> None:
    deadline = time.monotonic() + 10
    while rate_limited(engine) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rate_limited(engine) == expected


def test_refused_events_are_counted_by_key_at_once_then_at_most_every_interval(migrated: Engine) -> None:
    counts = RefusalCounts(sessionmaker(migrated), every=3600)
    limiter = RateLimiter(OrganizationLimits(sessionmaker(migrated), RateLimit(1, 10), ttl=60), LocalBuckets(), counts)
    assert limiter.take(ORG, 7, 10).wait == 0  # taken: not counted
    assert limiter.take(ORG, 7, 4).wait > 0
    eventually(migrated, [(7, 4, 4)])  # the first refusal after a quiet while: written at once
    assert limiter.take(ORG, 7, 4).wait > 0
    assert limiter.take(ORG, 7, 4).wait > 0
    assert limiter.take(ORG, 8, 1).wait > 0
    assert limiter.take(OTHER_ORG, 9, 10).wait == 0
    time.sleep(0.3)
    assert rate_limited(migrated) == [(7, 4, 4)]  # the flood waits for the next flush: no write per request
    counts.flush()
    assert rate_limited(migrated) == [(7, 12, 12), (8, 1, 1)]
    assert rate_limited(migrated, OTHER_ORG) == []
    counts.flush()  # nothing new: nothing added
    assert rate_limited(migrated) == [(7, 12, 12), (8, 1, 1)]


def test_the_counts_are_kept_while_the_database_is_away(migrated: Engine) -> None:
    away = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    engines = [away]
    counts = RefusalCounts(lambda: Session(engines[0]), every=0.05)
    counts.add(ORG, 7, 3)
    time.sleep(0.3)  # several flushes failed: the 3 are kept
    counts.add(ORG, 7, 2)
    engines[0] = migrated
    eventually(migrated, [(7, 5, 5)])
    away.dispose()


def test_counts_land_in_the_hour_they_happened(migrated: Engine) -> None:
    now = [utcnow() - dt.timedelta(days=2)]
    counts = RefusalCounts(sessionmaker(migrated), every=3600, clock=lambda: now[0])
    counts.add(ORG, 7, 4)
    now[0] = utcnow()
    counts.add(ORG, 7, 1)
    counts.flush()
    assert rate_limited(migrated) == [(7, 1, 5)]  # 2 days ago: in 30 days, not in the last 24 hours


def test_a_decision_that_may_not_wait_gives_up_before_it_takes_anything(migrated: Engine) -> None:
    """The event loop decides a request itself only when nothing must be asked of the database or
    Redis (``wait=False``); otherwise it gives up, untouched, and the thread pool decides."""
    sessions = sessionmaker(migrated)
    limits = OrganizationLimits(sessions, RateLimit(1, 10), ttl=60)
    local = RateLimiter(limits, LocalBuckets(), RefusalCounts(sessions))
    with pytest.raises(NeedsIO):
        local.take(ORG, 7, 4, wait=False)  # the organization's limit is not known here yet
    assert local.take(ORG, 7, 4).tokens == pytest.approx(6, abs=0.5)  # read from the database, then kept
    assert local.take(ORG, 7, 4, wait=False).tokens == pytest.approx(2, abs=0.5)  # in this process: at once

    client = redis.Redis.from_url(FAULTS_REDIS_URL)
    client.delete(BUCKET_KEY.format(org_id=ORG))
    shared = RateLimiter(limits, RedisBuckets(FAULTS_REDIS_URL, timeout=5), RefusalCounts(sessions))
    with pytest.raises(NeedsIO):
        shared.take(ORG, 7, 4, wait=False)  # the bucket is in Redis
    assert not client.exists(BUCKET_KEY.format(org_id=ORG))  # nothing taken
    assert shared.take(ORG, 7, 4).tokens == pytest.approx(6, abs=0.5)
    client.close()
    unlimited = RateLimiter(
        OrganizationLimits(sessions, None, ttl=60), RedisBuckets(FAULTS_REDIS_URL, 5), RefusalCounts(sessions)
    )
    unlimited.take(ORG, 7, 1)
    assert unlimited.take(ORG, 7, 1, wait=False) is None  # no limit: nothing to ask Redis
