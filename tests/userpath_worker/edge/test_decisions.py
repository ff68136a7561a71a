"""Which track requests the event loop decides at once (``Edge.judge_now``) and which go to the
thread pool: a decision that would ask the database or Redis is never made on the event loop."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from tests.common.factories import TEST_KEY_PEPPER, new_key
from userpath_worker.edge.http import Answer
from userpath_worker.edge.limits import LocalBuckets, OrganizationLimits, RateLimiter, RefusalCounts
from userpath_worker.edge.service import Accepted, Edge, Publishers
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.organizations.services import RateLimit

CALL = {"event": "Signed Up", "userId": "u1", "timestamp": "2026-12-05T07:00:00Z"}


def edge(engine: Engine, limit: RateLimit | None) -> Edge:
    sessions = sessionmaker(engine)
    limiter = RateLimiter(OrganizationLimits(sessions, limit, ttl=60), LocalBuckets(), RefusalCounts(sessions))
    # No publish happens here: the broker is never reached.
    return Edge(sessions, KeyAuthenticator(TEST_KEY_PEPPER, 60), Publishers("redis://127.0.0.1:1/0", 1), limiter)


@pytest.mark.parametrize("limit", [None, RateLimit(100, 1000)], ids=["no limit", "in-process buckets"])
def test_the_loop_decides_once_the_key_and_the_limit_are_known_here(migrated: Engine, limit: RateLimit | None) -> None:
    _, _, key = new_key(migrated)
    deciding = edge(migrated, limit)
    assert deciding.judge_now(key, CALL, "track") is None  # the key is not cached: the pool asks the database
    first = deciding.judge_track(key, CALL, "track")
    assert isinstance(first, Accepted) and first.answer.status == 200
    now = deciding.judge_now(key, CALL, "track")
    assert isinstance(now, Accepted) and now.answer.status == 200 and len(now.events) == 1


def test_refusals_that_need_no_lookup_are_answered_at_once(migrated: Engine) -> None:
    deciding = edge(migrated, None)
    mistyped = deciding.judge_now("up_live_" + "a" * 38, CALL, "track")  # the checksum is wrong: no query
    assert isinstance(mistyped, Answer) and mistyped.status == 401
    assert mistyped.document["code"] == "bad_checksum"
    missing = deciding.judge_now(None, CALL, "track")
    assert isinstance(missing, Answer) and missing.document["code"] == "missing_key"
