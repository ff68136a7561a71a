"""The HTTP edge (issue 21, items 1-4) as a real ``userpath edge`` process in front of a real worker,
on Redis and RabbitMQ: a Segment library nobody here wrote stores every call type, a wrong key is
told 401, a broker that cannot take the events gives 503, a provider's signed webhook reaches the
worker through its source URL, and no body or header makes the edge answer 5xx."""

from __future__ import annotations

import datetime as dt
import gzip
import http.client
import json
import os
import signal
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection
from segment.analytics import Client
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.cli import ok
from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.edge import call, running_edge
from tests.common.factories import OWNER
from tests.common.factories import new_key as another_organizations_key
from tests.common.proxy import FaultyProxy
from tests.common.secret_scanning import GithubKeys, report
from tests.common.signing import STRIPE_SECRET, TEST_KEY_PEPPER, stripe_headers
from tests.common.workers import (
    FAULTS_REDIS_URL,
    counts,
    database_fixtures,
    empty_queues,
    queue_depth,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    wait_for,
    worker_environment,
)
from userpath_client.contract import (
    EVENTS_QUEUE,
    MAX_LANE_MESSAGES,
    exchange_of,
    key_display_form,
    lane_list,
    lane_of,
    ready_lanes,
    shard_queue,
)
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.edge.segment import CALL_TYPES
from userpath_worker.events.models import Event
from userpath_worker.keys.exposure import GITHUB_REPORTS_PATH
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations import services as organizations

pytestmark = pytest.mark.slow

EDGE_RABBITMQ_VHOST = f"{TEST_DATABASE_PREFIX}_edge"

database, clean_database = database_fixtures(f"{TEST_DATABASE_PREFIX}_edge")


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    url = FAULTS_REDIS_URL if request.param == "redis" else rabbitmq_vhost(EDGE_RABBITMQ_VHOST)
    empty_queues(url)  # on RabbitMQ: declares the queues as the worker does, so the edge finds them
    return url


def new_key(engine: Engine, scopes: frozenset[str] | None = None) -> tuple[int, str]:
    with Session(engine) as session, session.begin():
        organization = organizations.create_organization(session, "Edge Inc", OWNER)
        _, plaintext = KeyService(session, TEST_KEY_PEPPER).create(organization, "Backend", OWNER, scopes=scopes)
        return organization.id, plaintext


def mistyped(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def test_segments_python_library_stores_every_call_type_and_a_wrong_key_is_told_401(
    clean_database: tuple[str, Engine], broker: str, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    org_id, key = new_key(engine)
    environment = worker_environment(database_url, broker)
    errors: list[Exception] = []
    with running_edge(environment, tmp_path / "edge.log") as edge:
        analytics = Client(key, host=edge.url, on_error=lambda error, _batch: errors.append(error), gzip=True)
        analytics.track("u1", "Signed Up", {"plan": "pro"}, message_id="track-1")
        analytics.identify("u1", {"email": "u1@example.com"}, message_id="identify-1")
        analytics.page("u1", "Docs", "Quick start", {"path": "/docs"}, message_id="page-1")
        analytics.flush()
        for number in range(30):  # queued together: the library sends them as one /v1/batch
            analytics.track(anonymous_id=f"anon-{number}", event="Viewed", message_id=f"batch-{number}")
        analytics.flush()
        analytics.shutdown()
        assert errors == []

        wrong_errors: list[Any] = []
        wrong = Client(mistyped(key), host=edge.url, on_error=lambda error, _batch: wrong_errors.append(error))
        wrong.track("u1", "Never Stored")
        wrong.flush()
        wrong.shutdown()
        assert [(error.status, error.code) for error in wrong_errors] == [(401, "bad_checksum")]

    with running_worker(environment, tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (33, 0), timeout=60)

    with Session(engine) as session:
        stored = {event.event_id: event for event in session.scalars(select(Event))}
    assert {event.org_id for event in stored.values()} == {org_id}
    track, identify, page = stored["track-1"], stored["identify-1"], stored["page-1"]
    assert (track.name, track.user_id, track.properties) == ("Signed Up", "u1", {"plan": "pro"})
    assert (identify.name, identify.properties) == ("$identify", {"email": "u1@example.com"})
    assert (page.name, page.properties) == ("$page", {"path": "/docs", "name": "Quick start", "category": "Docs"})
    assert track.context["library"]["name"] == "analytics-python"  # context is kept
    assert track.sent_at is not None  # the library's sentAt: the skew correction applies
    assert sorted(stored[f"batch-{n}"].anonymous_id for n in range(30)) == sorted(f"anon-{n}" for n in range(30))
    log = (tmp_path / "edge.log").read_text()
    assert key not in log and mistyped(key) not in log


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_broker_that_cannot_take_the_events_gives_503_and_nothing_is_queued(
    clean_database: tuple[str, Engine], kind: str, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    _, key = new_key(engine)
    direct = FAULTS_REDIS_URL if kind == "redis" else rabbitmq_vhost(EDGE_RABBITMQ_VHOST)
    empty_queues(direct)
    parts = urllib.parse.urlsplit(direct)
    proxy = FaultyProxy(parts.port or (6379 if kind == "redis" else 5672))
    through_proxy = urllib.parse.urlunsplit(
        parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}"))
    )
    event = {"event": "Signed Up", "userId": "u1", "messageId": "m-1"}
    try:
        environment = worker_environment(database_url, through_proxy, USERPATH_EDGE_BROKER_TIMEOUT_SECONDS="2")
        with running_edge(environment, tmp_path / "edge.log") as edge:
            assert call(f"{edge.url}/v1/track", event, key).status == 200
            proxy.cut()
            refused = call(f"{edge.url}/v1/track", event, key)
            assert (refused.status, refused.document["code"]) == (503, "broker_unavailable")
            assert refused.headers["retry-after"] == "5"
            assert queue_depth(direct, EVENTS_QUEUE) == 1
            proxy.restore()
            assert call(f"{edge.url}/v1/track", event, key).status == 200  # a new connection, at once
            assert queue_depth(direct, EVENTS_QUEUE) == 2
    finally:
        proxy.close()


def fill_lane(broker_url: str, key: str) -> None:
    """Put MAX_LANE_MESSAGES messages where the edge would publish ``key``'s next event: its lane
    (Redis) or its lane's shard queue (RabbitMQ), as a worker that fell far behind leaves them."""
    lane = lane_of(key)
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        client.lpush(lane_list(EVENTS_QUEUE, lane), *[b"waiting"] * MAX_LANE_MESSAGES)
        client.zadd(ready_lanes(EVENTS_QUEUE), {lane: 0}, nx=True)
        client.close()
        return
    with Connection(broker_url) as connection:
        producer = connection.Producer()
        for _ in range(MAX_LANE_MESSAGES):
            producer.publish(
                b"waiting", exchange=exchange_of(EVENTS_QUEUE), routing_key=shard_queue(EVENTS_QUEUE, lane)
            )
    wait_for(lambda: queue_depth(broker_url, EVENTS_QUEUE) == MAX_LANE_MESSAGES, 30, "the shard to fill")


def test_a_key_whose_lane_is_full_is_told_503_backlog_full_and_other_keys_are_still_taken(
    clean_database: tuple[str, Engine], broker: str, tmp_path: Path
) -> None:
    database_url, engine = clean_database
    _, flooder = new_key(engine)
    other = next(  # on RabbitMQ a key outside the flooder's shard (keys share 8 shards)
        key
        for _, _, key in (another_organizations_key(engine) for _ in range(30))
        if shard_queue(EVENTS_QUEUE, lane_of(key)) != shard_queue(EVENTS_QUEUE, lane_of(flooder))
    )
    fill_lane(broker, flooder)
    event = {"event": "Signed Up", "userId": "u1"}
    with running_edge(worker_environment(database_url, broker), tmp_path / "edge.log") as edge:
        refused = call(f"{edge.url}/v1/track", event, flooder)
        assert (refused.status, refused.document["code"]) == (503, "backlog_full")
        assert refused.headers["retry-after"] == "5"
        assert call(f"{edge.url}/v1/track", event, other).status == 200
    assert queue_depth(broker, EVENTS_QUEUE) == MAX_LANE_MESSAGES + 1  # nothing of the refused call was kept
    assert flooder not in (tmp_path / "edge.log").read_text()


def test_calls_sent_together_each_keep_their_sent_at_and_a_full_lane_refuses_only_its_own(
    clean_database: tuple[str, Engine], broker: str, tmp_path: Path
) -> None:
    """Calls that reach the edge together leave in one publish (one Redis pipeline): each call's
    answer is its own envelope's, and each is stored with its own sentAt, timestamp and skew."""
    database_url, engine = clean_database
    _, flooder = new_key(engine)
    org_id, _, key = next(  # on RabbitMQ a key outside the flooder's shard (keys share 8 shards)
        made
        for made in (another_organizations_key(engine) for _ in range(30))
        if shard_queue(EVENTS_QUEUE, lane_of(made[2])) != shard_queue(EVENTS_QUEUE, lane_of(flooder))
    )
    fill_lane(broker, flooder)
    calls = [
        (flooder, {"event": "Lost", "userId": "u0", "messageId": "flood", "sentAt": "2026-12-05T07:00:00Z"}),
        *(
            (
                key,
                {
                    "event": "Signed Up",
                    "userId": f"u{number}",
                    "messageId": f"skew-{number}",
                    "timestamp": f"2026-12-05T07:00:0{number}.250Z",
                    "sentAt": f"2026-12-05T07:00:0{number}.750+00:00",  # a clock of its own each
                },
            )
            for number in range(1, 6)
        ),
    ]
    environment = worker_environment(database_url, broker)
    with running_edge(environment, tmp_path / "edge.log") as edge:
        answers: dict[str, int] = {}

        def send(sender: str, body: dict[str, Any]) -> None:
            answers[body["messageId"]] = call(f"{edge.url}/v1/track", body, sender).status

        threads = [threading.Thread(target=send, args=arguments) for arguments in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert answers == {"flood": 503, **{f"skew-{number}": 200 for number in range(1, 6)}}
    if broker.startswith("redis"):
        redis.Redis.from_url(broker).delete(lane_list(EVENTS_QUEUE, lane_of(flooder)))
    else:
        with Connection(broker) as connection:
            connection.default_channel.queue_purge(shard_queue(EVENTS_QUEUE, lane_of(flooder)))

    with running_worker(environment, tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (5, 0), timeout=60)
    with Session(engine) as session:
        stored = {event.event_id: event for event in session.scalars(select(Event))}
    assert sorted(stored) == [f"skew-{number}" for number in range(1, 6)]
    for number in range(1, 6):
        event = stored[f"skew-{number}"]
        assert event.org_id == org_id
        assert event.timestamp == dt.datetime(2026, 12, 5, 7, 0, number, 250_000, tzinfo=dt.UTC)
        assert event.sent_at == dt.datetime(2026, 12, 5, 7, 0, number, 750_000, tzinfo=dt.UTC)
        assert event.occurred_at == event.received_at - dt.timedelta(milliseconds=500)


def test_a_providers_signed_webhook_reaches_the_worker_through_its_source_url(
    clean_database: tuple[str, Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url, engine = clean_database
    org_id, _ = new_key(engine)
    empty_queues(FAULTS_REDIS_URL)
    environment = worker_environment(database_url, FAULTS_REDIS_URL)
    with running_edge(environment, tmp_path / "edge.log") as edge:
        for name, value in environment.items():
            if name.startswith("USERPATH_"):
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("USERPATH_EDGE_BASE_URL", edge.url)
        ok(
            "webhooks",
            "secrets",
            "add",
            "--org",
            "Edge Inc",
            "--provider",
            "stripe",
            "--as",
            OWNER,
            input=STRIPE_SECRET,
        )
        created = json.loads(
            ok(
                "webhooks", "sources", "create", "--org", "Edge Inc", "--provider", "stripe", "--as", OWNER, "--json"
            ).stdout
        )
        url = created["url"]
        assert url.startswith(f"{edge.url}/v1/webhooks/stripe/up_live_")
        source_key = url.rsplit("/", 1)[1]

        body = '{"id":"evt_1","type":"invoice.paid","data":{"object":{"customer":"cus_1"}}}'
        signed = stripe_headers([STRIPE_SECRET], body, dt.datetime.now(dt.UTC))
        assert call(url, body.encode(), headers=signed).status == 200
        forged_body = body.replace("evt_1", "evt_2")
        forged = stripe_headers(["whsec_not_the_secret"], forged_body, dt.datetime.now(dt.UTC))
        assert call(url, forged_body.encode(), headers=forged).status == 200  # the worker judges signatures

        track = call(f"{edge.url}/v1/track", {"event": "Refund Issued", "userId": "victim"}, source_key)
        assert (track.status, track.document["code"]) == (403, "scope_denied")
        github = call(f"{edge.url}/v1/webhooks/github/{source_key}", b"{}", headers={"X-GitHub-Event": "push"})
        assert github.status == 403
        unknown = call(f"{edge.url}/v1/webhooks/stripe/{mistyped(source_key)}", body.encode(), headers=signed)
        assert unknown.status == 401

    with running_worker(environment, tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (1, 1), timeout=60)
    with Session(engine) as session:
        (event,) = session.scalars(select(Event))
        (letter,) = session.scalars(select(DeadLetter))
    assert (event.org_id, event.name, event.user_id, event.verified) == (org_id, "stripe.invoice.paid", "cus_1", True)
    assert (letter.org_id, letter.reason) == (org_id, "bad_signature")
    log = (tmp_path / "edge.log").read_text()
    assert source_key not in log and mistyped(source_key) not in log
    assert f"/v1/webhooks/stripe/{key_display_form(source_key)}" in log  # the access log's form of the URL


def test_a_key_github_reports_through_the_edge_is_refused_by_the_edge_and_the_worker(
    clean_database: tuple[str, Engine], tmp_path: Path
) -> None:
    """GitHub's secret scanning posts to the edge (the address providers can reach); within a
    second the key is refused at the door, and a message already queued with it is dead-lettered."""
    database_url, engine = clean_database
    _, key = new_key(engine)
    empty_queues(FAULTS_REDIS_URL)
    github = GithubKeys()
    environment = worker_environment(database_url, FAULTS_REDIS_URL, USERPATH_SECRET_SCANNING_KEYS_URL=github.url)
    try:
        with running_edge(environment, tmp_path / "edge.log") as edge:
            assert call(f"{edge.url}/v1/track", {"event": "Before", "userId": "u1"}, key).status == 200
            unsigned = call(f"{edge.url}{GITHUB_REPORTS_PATH}", report(key))
            assert unsigned.status == 404
            body = report(key)
            reported = call(f"{edge.url}{GITHUB_REPORTS_PATH}", body, headers=github.signed(body))
            assert reported.status == 200 and [answer["label"] for answer in reported.document] == ["true_positive"]
            answers = []  # within the edge's key cache (2 s) a call may still be taken

            def refused() -> bool:
                answers.append(call(f"{edge.url}/v1/track", {"event": "After", "userId": "u1"}, key).status)
                return answers[-1] == 401

            wait_for(refused, 5, "the edge to refuse the reported key")
            assert set(answers) <= {200, 401}
        with running_worker(environment, tmp_path / "worker.log", "--concurrency=1"):
            # Everything queued with it, "Before" included, is refused now: revoked is expired.
            settle_at(engine, (0, 1 + answers.count(200)), timeout=60)
        with Session(engine) as session:
            assert set(session.scalars(select(DeadLetter.reason))) == {"expired_key"}
    finally:
        github.close()
    assert key not in (tmp_path / "edge.log").read_text()


def test_every_event_answered_200_is_stored_when_the_edge_is_killed_under_load(
    clean_database: tuple[str, Engine], tmp_path: Path
) -> None:
    database_url, engine = clean_database
    _, key = new_key(engine)
    empty_queues(FAULTS_REDIS_URL)
    environment = worker_environment(database_url, FAULTS_REDIS_URL)
    answered: list[str] = []
    with running_edge(environment, tmp_path / "edge.log", "--workers", "2") as edge:

        def send(sender: int) -> None:
            for number in range(100_000):
                event_id = f"{sender}-{number}"
                try:
                    reply = call(f"{edge.url}/v1/track", {"event": "Load", "userId": "u", "messageId": event_id}, key)
                except OSError:
                    return  # the edge is gone
                if reply.status == 200:
                    answered.append(event_id)

        senders = [threading.Thread(target=send, args=(sender,)) for sender in range(4)]
        for sender in senders:
            sender.start()
        wait_for(lambda: len(answered) >= 300, 60, "300 events answered 200")
        os.killpg(edge.process.pid, signal.SIGKILL)  # the edge and its server processes, mid-request
        for sender in senders:
            sender.join(60)
    with running_worker(environment, tmp_path / "worker.log", "--concurrency=1"):
        wait_for(lambda: counts(engine)[0] >= len(answered), 60, "every answered event to be stored")
    with Session(engine) as session:
        stored = set(session.scalars(select(Event.event_id)))
    assert set(answered) <= stored  # 200 meant the broker had it; what was never answered may be there too


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_SEGMENT_VALUE = st.one_of(_JSON, st.sampled_from(["2026-12-05T07:00:00Z", "2026-12-05 07:00", "", "u1", 10**30]))
_CALL = st.fixed_dictionaries(
    {},
    optional={
        name: _SEGMENT_VALUE
        for name in (
            "type",
            "event",
            "userId",
            "anonymousId",
            "messageId",
            "timestamp",
            "originalTimestamp",
            "properties",
            "traits",
            "context",
            "previousId",
            "groupId",
            "name",
        )
    },
).map(lambda call: {**call, "type": call.get("type", "track")})
_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


def test_no_body_header_or_encoding_makes_the_edge_answer_5xx(
    clean_database: tuple[str, Engine], tmp_path: Path
) -> None:
    database_url, engine = clean_database
    _, key = new_key(engine)
    empty_queues(FAULTS_REDIS_URL)
    with running_edge(worker_environment(database_url, FAULTS_REDIS_URL), tmp_path / "edge.log") as edge:
        port = int(edge.url.rsplit(":", 1)[1])

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            path=st.sampled_from(
                ["/v1/batch", "/v1/import", *(f"/v1/{kind}" for kind in CALL_TYPES), "/v1/webhooks/stripe", "/v1/x"]
            ),
            body=st.one_of(
                st.binary(max_size=300),
                _JSON.map(lambda value: json.dumps(value).encode()),
                _CALL.map(lambda value: json.dumps(value).encode()),
                st.lists(_CALL, max_size=5).map(lambda calls: json.dumps({"batch": calls, "sentAt": "x"}).encode()),
                st.lists(_CALL, max_size=5).map(lambda calls: json.dumps({"batch": calls, "writeKey": key}).encode()),
            ),
            encoding=st.sampled_from([None, "gzip", "gzip-garbage", "deflate", "br", "identity"]),
            authorization=st.one_of(
                st.none(),
                st.just(f"Bearer {key}"),
                st.just(f"Basic {key}"),
                _HEADER_TEXT,
                _HEADER_TEXT.map(lambda text: f"Basic {text}"),
            ),
        )
        def answers_4xx_or_200(path: str, body: bytes, encoding: str | None, authorization: str | None) -> None:
            headers = {"Content-Type": "application/json"}
            if encoding == "gzip":
                body = gzip.compress(body)
            if encoding is not None:
                headers["Content-Encoding"] = encoding.removesuffix("-garbage")
            if authorization is not None:
                headers["Authorization"] = authorization
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
            finally:
                connection.close()
            assert response.status < 500, (response.status, answer)
            assert isinstance(json.loads(answer), dict)

        answers_4xx_or_200()
        assert edge.process.poll() is None
    assert "Traceback" not in (tmp_path / "edge.log").read_text()
