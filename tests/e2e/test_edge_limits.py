"""Per-organization rate limits at a real ``userpath edge`` (issue 21, item 5): over its rate an
organization is answered 429 with Retry-After and X-RateLimit-*, counted in the edge's metrics and
in its keys' counters (the owners' Ingestion tab);
edge processes share one bucket through Redis; and Segment's own library, pointed at the edge with
a low limit, waits out its 429s and every event is stored once by a real worker."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from segment.analytics import Client
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.common.browser import free_port
from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.edge import Reply, call, running_edge
from tests.common.factories import new_key, new_limited_key
from tests.common.workers import (
    FAULTS_REDIS_URL,
    database_fixtures,
    empty_queues,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_worker.db import utcnow
from userpath_worker.events import rollups
from userpath_worker.events.models import Event

pytestmark = pytest.mark.slow

database, clean_database = database_fixtures(f"{TEST_DATABASE_PREFIX}_edge_limits")
LIMITS_RABBITMQ_VHOST = f"{TEST_DATABASE_PREFIX}_edge_limits"


def batch(count: int, prefix: str) -> dict[str, object]:
    return {
        "batch": [
            {"type": "track", "event": "Limited", "userId": "u", "messageId": f"{prefix}-{n}"} for n in range(count)
        ]
    }


def limit_headers(reply: Reply) -> tuple[str, str, str]:
    return tuple(reply.headers[f"x-ratelimit-{name}"] for name in ("limit", "remaining", "reset"))  # type: ignore[return-value]


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_over_its_rate_an_organization_is_told_429_with_retry_after_and_counted(
    clean_database: tuple[str, Engine], broker: str, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    broker_url = FAULTS_REDIS_URL if broker == "redis" else rabbitmq_vhost(LIMITS_RABBITMQ_VHOST)
    empty_queues(broker_url)  # on Redis: no bucket of an earlier test either
    org_id, key = new_limited_key(engine, events_per_second=2, burst=10)
    _, _, unlimited_key = new_key(engine)  # another organization, at the default
    metrics_port = free_port()
    environment = worker_environment(database_url, broker_url, USERPATH_EDGE_METRICS_PORT=str(metrics_port))
    with running_edge(environment, tmp_path / "edge.log") as edge:
        taken = call(f"{edge.url}/v1/batch", batch(10, "a"), key)
        assert taken.status == 200 and taken.document == {"success": True}
        assert limit_headers(taken) == ("10", "0", "5")  # 10 events at 2 a second to be full again

        refused = call(f"{edge.url}/v1/track", {"event": "Over", "userId": "u", "messageId": "over"}, key)
        assert refused.status == 429
        assert refused.document["code"] == "rate_limited"
        assert "2 events a second (bursts of 10)" in refused.document["message"]
        assert refused.headers["retry-after"] == "1"  # half a second, in whole seconds
        assert limit_headers(refused)[:2] == ("10", "0")
        other = call(f"{edge.url}/v1/track", {"event": "Other", "userId": "u"}, unlimited_key)
        assert other.status == 200 and limit_headers(other)[:2] == ("20000", "19999")

        time.sleep(int(refused.headers["retry-after"]))
        again = call(f"{edge.url}/v1/track", {"event": "Over", "userId": "u", "messageId": "over"}, key)
        assert again.status == 200, again.document
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            exposed = response.read().decode()
        assert f'userpath_edge_rate_limited_total{{org_id="{org_id}"}} 1.0' in exposed
        assert f'userpath_edge_rate_limited_events_total{{org_id="{org_id}"}} 1.0' in exposed
    with Session(engine) as session:  # written by the edge by its exit at the latest
        assert [(row.day, row.month) for row in rollups.rate_limited_by_key(session, org_id, utcnow())] == [(1, 1)]
    with running_worker(environment, tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (12, 0), timeout=60)  # the refused call is not stored; its retry is


@pytest.mark.parametrize("shared_through", ["the broker's Redis", "USERPATH_EDGE_REDIS_URL"])
def test_edge_processes_share_one_bucket_through_redis(
    clean_database: tuple[str, Engine], shared_through: str, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    empty_queues(FAULTS_REDIS_URL)
    if shared_through == "the broker's Redis":
        environment = worker_environment(database_url, FAULTS_REDIS_URL)
    else:  # RabbitMQ carries the events, a Redis of its own the buckets
        broker_url = rabbitmq_vhost(LIMITS_RABBITMQ_VHOST)
        empty_queues(broker_url)
        environment = worker_environment(database_url, broker_url, USERPATH_EDGE_REDIS_URL=FAULTS_REDIS_URL)
    _, key = new_limited_key(engine, events_per_second=1, burst=10)
    with (
        running_edge(environment, tmp_path / "edge-a.log") as edge_a,
        running_edge(environment, tmp_path / "edge-b.log") as edge_b,
    ):
        assert call(f"{edge_a.url}/v1/batch", batch(6, "a"), key).status == 200
        second = call(f"{edge_b.url}/v1/batch", batch(4, "b"), key)
        assert second.status == 200 and limit_headers(second)[1] == "0"  # B saw what A took
        assert call(f"{edge_a.url}/v1/batch", batch(2, "c"), key).status == 429
        assert call(f"{edge_b.url}/v1/batch", batch(2, "c"), key).status == 429


def test_without_redis_each_edge_process_limits_on_its_own(clean_database: tuple[str, Engine], tmp_path: Path) -> None:
    database_url, engine = clean_database
    broker_url = rabbitmq_vhost(LIMITS_RABBITMQ_VHOST)
    empty_queues(broker_url)
    environment = worker_environment(database_url, broker_url)
    _, key = new_limited_key(engine, events_per_second=1, burst=10)
    with (
        running_edge(environment, tmp_path / "edge-a.log") as edge_a,
        running_edge(environment, tmp_path / "edge-b.log") as edge_b,
    ):
        assert call(f"{edge_a.url}/v1/batch", batch(10, "a"), key).status == 200
        assert call(f"{edge_b.url}/v1/batch", batch(10, "b"), key).status == 200  # a bucket of its own
        assert call(f"{edge_a.url}/v1/batch", batch(1, "c"), key).status == 429


def test_segments_library_waits_out_its_429s_and_every_event_is_stored_once(
    clean_database: tuple[str, Engine], tmp_path: Path
) -> None:
    database_url, engine = clean_database
    empty_queues(FAULTS_REDIS_URL)
    environment = worker_environment(database_url, FAULTS_REDIS_URL)
    _, key = new_limited_key(engine, events_per_second=20, burst=20)
    errors: list[Exception] = []
    with (
        running_worker(environment, tmp_path / "worker.log", "--concurrency=1"),
        running_edge(environment, tmp_path / "edge.log") as edge,
    ):
        analytics = Client(
            key, host=edge.url, upload_size=10, on_error=lambda error, _batch: errors.append(error), gzip=True
        )
        for number in range(100):  # 5 seconds' worth at 20 a second
            analytics.track("u1", "Limited", {"n": number}, message_id=f"limited-{number}")
        flushing = threading.Thread(target=analytics.flush, daemon=True)
        flushing.start()
        flushing.join(timeout=60)
        assert not flushing.is_alive(), "the library did not send everything within 60 s"
        analytics.shutdown()
        settle_at(engine, (100, 0), timeout=60)
    assert errors == []
    answers = [
        json.loads(line)["message"] for line in (tmp_path / "edge.log").read_text().splitlines() if "POST" in line
    ]
    statuses = [int(answer.split('" ')[1].split()[0]) for answer in answers]
    assert statuses.count(429) >= 2 and statuses.count(200) == 10  # refused, then sent again after Retry-After
    with Session(engine) as session:
        distinct = session.scalar(select(func.count(func.distinct(Event.event_id))))
    assert distinct == 100
