"""Segment's official Node library, ``@segment/analytics-node`` (3.1.0, installed by npm at test
time), pointed at a real ``userpath edge`` with its ``host`` and ``path`` options, in front of a
real worker, on Redis and RabbitMQ (issue 21): its track, identify, page and batched calls are
stored with their fields, a key the edge does not know reaches its error path as a 401, and the
429s of a low per-organization limit are waited out, nothing lost or stored twice.

What 3.1.0 does with a 429, read in its ``dist/esm/plugins/segmentio/publisher.js``: with a
``Retry-After`` (whole seconds) it holds every batch of the instance until that many seconds
(at least 1, at most 300) have passed, then sends the same batch again with ``X-Retry-Count``;
an answer 200 to any batch of the instance ends that pause for all of them at once (so a batch
refused just before is sent again without waiting, and refused again: seen below). These
retries do not count against ``maxRetries`` (10), but a batch is given up after ``maxRetries``
+ 20 attempts in all or after ``maxRateLimitDuration`` (12 hours). A 429 without
``Retry-After`` is retried with counted exponential backoff (from 500 ms). 2.3.0, the last 2.x,
ignores ``Retry-After`` (it backs off 25 ms to 1 s and gives a batch up after 4 attempts, which
the 429s here would outlast): hence the pin in tests/common/node.py.
The library hands its callbacks and its ``'error'`` emitter ``Error("[STATUS] reason")``, not the
edge's JSON, so a refusal's ``code`` is not visible to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.edge import running_edge
from tests.common.factories import OWNER, new_key, new_limited_key
from tests.common.node import segment_node_sender, send_with_segment_node
from tests.common.signing import TEST_KEY_PEPPER
from tests.common.workers import (
    FAULTS_REDIS_URL,
    database_fixtures,
    empty_queues,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_worker.events.models import Event
from userpath_worker.keys import tokens
from userpath_worker.keys.services import KeyService
from userpath_worker.keys.tokens import Environment

pytestmark = pytest.mark.slow

database, clean_database = database_fixtures(f"{TEST_DATABASE_PREFIX}_edge_node")
EDGE_NODE_RABBITMQ_VHOST = f"{TEST_DATABASE_PREFIX}_edge_node"
FLUSH_TIMEOUT_MS = 60_000  # each flush of the library; the node process as a whole gets 120 s


@pytest.fixture(scope="module")
def sender(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return segment_node_sender(tmp_path_factory.mktemp("segment-node"))


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    url = FAULTS_REDIS_URL if request.param == "redis" else rabbitmq_vhost(EDGE_NODE_RABBITMQ_VHOST)
    empty_queues(url)  # on RabbitMQ: declares the queues as the worker does, so the edge finds them
    return url


def deleted_key(engine: Engine) -> str:
    _, key_id, key = new_key(engine)
    with Session(engine) as session, session.begin():
        KeyService(session, TEST_KEY_PEPPER).delete(key_id, OWNER)
    return key


def test_segments_node_library_stores_every_call_type_and_a_wrong_key_is_told_401(
    clean_database: tuple[str, Engine], broker: str, sender: Path, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    org_id, _, key = new_key(engine)
    never_created = tokens.generate(Environment.LIVE)  # well-formed, checksum right, unknown
    deleted = deleted_key(engine)
    environment = worker_environment(database_url, broker)
    single_calls = [
        {
            "method": "track",
            "userId": "u1",
            "event": "Signed Up",
            "properties": {"plan": "pro"},
            "context": {"ip": "203.0.113.7"},
            "messageId": "track-1",
        },
        {"method": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}, "messageId": "identify-1"},
        {
            "method": "page",
            "userId": "u1",
            "category": "Docs",
            "name": "Quick start",
            "properties": {"path": "/docs"},
            "messageId": "page-1",
        },
    ]
    batched = [
        {"method": "track", "anonymousId": f"anon-{n}", "event": "Viewed", "messageId": f"batch-{n}"} for n in range(30)
    ]
    wrong = [{"method": "track", "userId": "u1", "event": "Never Stored", "messageId": "wrong-1"}]
    with running_edge(environment, tmp_path / "edge.log") as edge:
        report = send_with_segment_node(
            sender,
            {
                "host": edge.url,
                "path": "/v1/batch",
                "flushTimeoutMs": FLUSH_TIMEOUT_MS,
                "senders": [
                    {"writeKey": key, "flushAt": 100, "rounds": [single_calls, batched]},
                    {"writeKey": never_created, "flushAt": 100, "rounds": [wrong]},
                    {"writeKey": deleted, "flushAt": 100, "rounds": [wrong]},
                ],
            },
        )
    good, unknown, gone = report["senders"]
    assert good["version"] == "3.1.0"
    assert good["callbackErrors"] == good["emittedErrors"] == []
    assert sorted(good["delivered"]) == sorted(call["messageId"] for call in single_calls + batched)
    # Each round went as one request: the three calls, then the thirty flushed together.
    assert [(response["status"], len(response["messageIds"])) for response in good["responses"]] == [
        (200, 3),
        (200, 30),
    ]
    for refused in (unknown, gone):
        assert [response["status"] for response in refused["responses"]] == [401]  # not retried
        assert [(error["messageId"], error["status"]) for error in refused["callbackErrors"]] == [("wrong-1", 401)]
        assert [(error["code"], error["status"], error["messageId"]) for error in refused["emittedErrors"]] == [
            ("delivery_failure", 401, "wrong-1")
        ]

    with running_worker(environment, tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (33, 0), timeout=60)  # nothing of the wrong keys

    with Session(engine) as session:
        stored = {event.event_id: event for event in session.scalars(select(Event))}
    assert {event.org_id for event in stored.values()} == {org_id}
    track, identify, page = stored["track-1"], stored["identify-1"], stored["page-1"]
    assert (track.name, track.user_id, track.properties) == ("Signed Up", "u1", {"plan": "pro"})
    assert (identify.name, identify.user_id, identify.properties) == ("$identify", "u1", {"email": "u1@example.com"})
    assert (page.name, page.user_id, page.properties) == (
        "$page",
        "u1",
        {"path": "/docs", "name": "Quick start", "category": "Docs"},
    )
    assert track.context is not None and track.context["ip"] == "203.0.113.7"  # the caller's context is kept
    assert track.context["library"] == {"name": "@segment/analytics-node", "version": "3.1.0"}  # and the library's
    assert track.sent_at is not None  # the library's sentAt: the skew correction applies
    assert sorted(stored[f"batch-{n}"].anonymous_id or "" for n in range(30)) == sorted(f"anon-{n}" for n in range(30))
    assert {stored[f"batch-{n}"].name for n in range(30)} == {"Viewed"}
    log = (tmp_path / "edge.log").read_text()
    assert key not in log and never_created not in log and deleted not in log


def retries_after_429s(seen: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any], bool]]:
    """(the 429, the library's next request with the same batch, whether an answer 200 to another
    batch came between them) for every 429 the library was given."""
    found = []
    for refused in (response for response in seen["responses"] if response["status"] == 429):
        again = next(
            request
            for request in seen["requests"]
            if request["messageIds"] == refused["messageIds"] and request["order"] > refused["order"]
        )
        cleared = any(
            response["status"] == 200 and refused["order"] < response["order"] < again["order"]
            for response in seen["responses"]
        )
        found.append((refused, again, cleared))
    return found


def test_segments_node_library_waits_out_the_edges_429s_and_every_event_is_stored_once(
    clean_database: tuple[str, Engine], broker: str, sender: Path, tmp_path: Path
) -> None:
    """An organization limited to 10 events a second (bursts of 10). One instance queues 60
    events in 6 batches of 10, sent at once; then another sends 3 batches one after the other
    (each flushed before the next call). The edge takes about a batch a second and answers the
    rest 429 with ``Retry-After: 1``. Seen in 3.1.0: a refused batch is sent again no sooner than
    Retry-After, unless an answer 200 to another batch of the instance came in meanwhile, which
    ends the pause for all of them at once (so a few are sent again at once and refused again)."""
    database_url, engine = clean_database
    _, key = new_limited_key(engine, events_per_second=10, burst=10)
    environment = worker_environment(database_url, broker)
    at_once = [{"method": "track", "userId": "u1", "event": "Limited", "messageId": f"at-once-{n}"} for n in range(60)]
    rounds = [
        [{"method": "track", "userId": "u2", "event": "Limited", "messageId": f"in-turn-{r}-{n}"} for n in range(10)]
        for r in range(3)
    ]
    with running_edge(environment, tmp_path / "edge.log") as edge:
        report = send_with_segment_node(
            sender,
            {
                "host": edge.url,
                "path": "/v1/batch",
                "flushTimeoutMs": FLUSH_TIMEOUT_MS,
                "senders": [
                    {"writeKey": key, "flushAt": 10, "rounds": [at_once]},
                    {"writeKey": key, "flushAt": 10, "rounds": rounds},
                ],
            },
        )
    concurrent, sequential = report["senders"]
    for seen, calls in ((concurrent, at_once), (sequential, [call for batch in rounds for call in batch])):
        assert seen["callbackErrors"] == seen["emittedErrors"] == []
        assert sorted(seen["delivered"]) == sorted(call["messageId"] for call in calls)
        statuses = [response["status"] for response in seen["responses"]]
        assert set(statuses) == {200, 429} and statuses.count(200) == len(calls) // 10
        assert {response["retryAfter"] for response in seen["responses"] if response["status"] == 429} == {"1"}
        # Every event was taken by exactly one answer 200: nothing lost, nothing sent twice.
        taken = [
            event_id
            for response in seen["responses"]
            if response["status"] == 200
            for event_id in response["messageIds"]
        ]
        assert sorted(taken) == sorted(call["messageId"] for call in calls)
    for seen in (concurrent, sequential):
        for refused, again, cleared in retries_after_429s(seen):
            waited = again["at"] - refused["at"]  # in ms; Node's timers may fire a millisecond early
            assert cleared or waited >= int(refused["retryAfter"]) * 1000 - 5, (refused, again)
            assert again["retryCount"] is not None
    # One batch at a time, nothing clears the pause: every refused batch waited out Retry-After.
    assert not any(cleared for _, _, cleared in retries_after_429s(sequential))

    with running_worker(environment, tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (90, 0), timeout=60)
    with Session(engine) as session:
        distinct = session.scalar(select(func.count(func.distinct(Event.event_id))))
    assert distinct == 90
    assert key not in (tmp_path / "edge.log").read_text()
