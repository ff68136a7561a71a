"""The producer client against the real Redis (and once RabbitMQ) on 127.0.0.1.

Messages are read back with kombu, as the worker would receive them, and checked against the
wire contract (docs/contract.md): Celery protocol 2, JSON, the key only in the body.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.message import Message
from pydantic import ValidationError

from tests.common.brokers import CLIENT_REDIS_URL as REDIS_URL
from tests.common.brokers import RABBITMQ_URL, declare_ingestion_queues, read_messages
from userpath_client import ClientClosed, InvalidEvent, InvalidKey, NotSent, QueueFull, UserPath
from userpath_client.contract import (
    EVENTS_QUEUE,
    JOBS_QUEUE,
    MAX_ENVELOPE_BYTES,
    MAX_EVENT_BYTES,
    TRACK_TASK,
    WEBHOOK_TASK,
    WEBHOOKS_QUEUE,
    lane_list,
    lane_of,
)
from userpath_client.schemas import EnvelopeIn, EventIn, WebhookIn, canonical_json, has_nul
from userpath_worker.keys import tokens
from userpath_worker.keys.tokens import Environment

CLIENT_QUEUES = (EVENTS_QUEUE, JOBS_QUEUE, WEBHOOKS_QUEUE)
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@pytest.fixture
def api_key() -> str:
    return tokens.generate(Environment.LIVE)


@pytest.fixture
def client(api_key: str, redis_db: redis.Redis) -> Iterator[UserPath]:
    userpath = UserPath(api_key, REDIS_URL, flush_interval=60)  # no timed flush unless a test wants one
    yield userpath
    userpath.close()


def unreachable_broker() -> str:
    """A Redis URL on 127.0.0.1 where nothing listens: a port the kernel just handed out and freed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def envelope_of(message: Message) -> dict[str, Any]:
    args, kwargs, embed = message.decode()
    assert (kwargs, embed) == ({}, EMBED)
    (envelope,) = args
    return envelope


def batch_names(messages: list[Message]) -> list[str]:
    return [event["event"] for message in messages for event in envelope_of(message)["batch"]]


def purge(broker_url: str) -> None:
    declare_ingestion_queues(broker_url, purge=True)


# -- the message format ----------------------------------------------------------------------


def test_a_tracked_event_arrives_as_a_celery_protocol_2_message(client: UserPath, api_key: str) -> None:
    client.track("Signed Up", user_id="user_123", properties={"plan": "pro"})
    client.flush(timeout=10)

    (message,) = read_messages(REDIS_URL, EVENTS_QUEUE, 1)
    headers = message.headers
    assert headers["task"] == TRACK_TASK
    assert headers["lang"] == "py"
    assert headers["id"] == headers["root_id"] == message.properties["correlation_id"]
    assert uuid.UUID(headers["id"]).version == 4
    assert headers["argsrepr"].startswith(f"({{'api_key': '{tokens.display_form(api_key)}'")
    assert "<1 events>" in headers["argsrepr"]
    assert headers["kwargsrepr"] == "{}"
    # Every header Celery itself writes is there, so a Celery worker reads ours as its own.
    celery_headers = Celery(set_as_current=False).amqp.as_task_v2("id", "name").headers
    assert set(celery_headers) <= set(headers)
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.properties["delivery_mode"] == 2
    assert message.delivery_info["routing_key"] == EVENTS_QUEUE

    envelope = envelope_of(message)
    assert envelope["api_key"] == api_key
    parsed = EnvelopeIn.model_validate(envelope)
    assert parsed.sent_at is not None and parsed.sent_at.utcoffset() == timedelta(0)
    (event,) = envelope["batch"]
    stored = EventIn.model_validate(event)
    assert (stored.event, stored.user_id, stored.properties) == ("Signed Up", "user_123", {"plan": "pro"})
    assert uuid.UUID(stored.event_id).version == 4
    assert abs(stored.timestamp - datetime.now(UTC)) < timedelta(seconds=30)
    assert parsed.sent_at >= stored.timestamp
    # The body is the envelope in canonical JSON, exactly what the worker measures.
    assert message.body == b"[[" + canonical_json(envelope) + b"],{}," + canonical_json(EMBED) + b"]"


def test_given_fields_are_sent_as_given(client: UserPath) -> None:
    timestamp = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    client.track(
        "Order Completed",
        anonymous_id="anon-1",
        properties={"total": 12.5, "items": [{"sku": "a"}], "note": "ünïcödé"},
        timestamp=timestamp,
        context={"ip": "203.0.113.9"},
        event_id="order-1",
    )
    client.track("Page Viewed", user_id="u", timestamp="2026-05-01T12:00:00Z")
    client.flush(timeout=10)

    (message,) = read_messages(REDIS_URL, EVENTS_QUEUE, 1)
    first, second = envelope_of(message)["batch"]
    assert first == {
        "event_id": "order-1",
        "event": "Order Completed",
        "anonymous_id": "anon-1",
        "timestamp": "2026-05-01T12:00:00+02:00",
        "properties": {"total": 12.5, "items": [{"sku": "a"}], "note": "ünïcödé"},
        "context": {"ip": "203.0.113.9"},
    }
    assert second["timestamp"] == "2026-05-01T12:00:00+00:00"
    assert second["properties"] == {}


def test_an_event_is_sent_as_it_was_when_tracked(client: UserPath) -> None:
    properties = {"step": 1}
    client.track("Step", user_id="u", properties=properties)
    properties["step"] = 2
    client.flush(timeout=10)
    (message,) = read_messages(REDIS_URL, EVENTS_QUEUE, 1)
    assert envelope_of(message)["batch"][0]["properties"] == {"step": 1}


# -- batching and flushing -------------------------------------------------------------------


def test_events_go_out_in_batches_of_batch_size(client: UserPath) -> None:
    for number in range(250):
        client.track(f"Event {number}", user_id="u")
    client.flush(timeout=10)

    messages = read_messages(REDIS_URL, EVENTS_QUEUE, 3)
    assert [len(envelope_of(message)["batch"]) for message in messages] == [100, 100, 50]
    assert batch_names(messages) == [f"Event {number}" for number in range(250)]
    event_ids = {event["event_id"] for message in messages for event in envelope_of(message)["batch"]}
    assert len(event_ids) == 250


def test_envelopes_are_split_to_stay_under_the_size_limit(client: UserPath) -> None:
    padding = "x" * (MAX_EVENT_BYTES - 300)
    for number in range(100):
        client.track(f"Big {number}", user_id="u", properties={"padding": padding})
    client.flush(timeout=30)

    messages = read_messages(REDIS_URL, EVENTS_QUEUE, 4, timeout=30)
    assert all(len(message.body) <= MAX_ENVELOPE_BYTES for message in messages)
    assert all(len(canonical_json(envelope_of(message))) <= MAX_ENVELOPE_BYTES for message in messages)
    assert batch_names(messages) == [f"Big {number}" for number in range(100)]


def test_a_lone_event_is_sent_after_flush_interval(api_key: str, redis_db: redis.Redis) -> None:
    with UserPath(api_key, REDIS_URL, flush_interval=0.1) as userpath:
        userpath.track("Alone", user_id="u")
        (message,) = read_messages(REDIS_URL, EVENTS_QUEUE, 1, timeout=5)
        assert batch_names([message]) == ["Alone"]


def test_close_sends_what_is_queued_and_ends_the_client(client: UserPath) -> None:
    client.track("First", user_id="u")
    client.track("Second", user_id="u")
    client.close()

    assert batch_names(read_messages(REDIS_URL, EVENTS_QUEUE, 1)) == ["First", "Second"]
    with pytest.raises(ClientClosed):
        client.track("Late", user_id="u")
    client.close()  # a second close is harmless


def test_events_are_sent_at_interpreter_exit_without_close(api_key: str, redis_db: redis.Redis) -> None:
    script = textwrap.dedent(
        f"""
        from userpath_client import UserPath
        userpath = UserPath({api_key!r}, {REDIS_URL!r}, flush_interval=60)
        for number in range(3):
            userpath.track(f"Exit {{number}}", user_id="u")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert batch_names(read_messages(REDIS_URL, EVENTS_QUEUE, 1)) == ["Exit 0", "Exit 1", "Exit 2"]


def test_a_forked_child_sends_only_its_own_events(client: UserPath) -> None:
    client.track("Before fork, sent", user_id="u")
    client.flush(timeout=10)  # the parent now has a connection and a running sender thread
    client.track("Before fork, pending", user_id="u")

    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which must never return into pytest
        status = 1
        try:
            client.track("From the child", user_id="u")
            client.flush(timeout=10)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    client.track("After fork", user_id="u")
    client.flush(timeout=10)
    names = batch_names(read_messages(REDIS_URL, EVENTS_QUEUE, 3))
    assert sorted(names) == ["After fork", "Before fork, pending", "Before fork, sent", "From the child"]


# -- jobs and webhooks -----------------------------------------------------------------------


def test_job_events_go_to_the_jobs_queue_with_the_job_in_context(client: UserPath) -> None:
    client.job_event("Export Finished", user_id="u", context={"rows": 10}, job_name="exports", run_id="r-42")
    client.job_event("Cleanup", anonymous_id="system", context={"job": {"name": "cleanup"}})
    client.flush(timeout=10)

    (message,) = read_messages(REDIS_URL, JOBS_QUEUE, 1)
    assert message.headers["task"] == TRACK_TASK
    export, cleanup = envelope_of(message)["batch"]
    assert export["context"] == {"rows": 10, "job": {"name": "exports", "run_id": "r-42"}}
    assert cleanup["context"] == {"job": {"name": "cleanup"}}
    read_messages(REDIS_URL, EVENTS_QUEUE, 0)
    with pytest.raises(InvalidEvent, match="not both"):
        client.job_event("Twice", user_id="u", context={"job": {}}, job_name="x")


def test_a_webhook_is_forwarded_as_one_message(client: UserPath, api_key: str) -> None:
    body = json.dumps({"type": "invoice.paid", "data": {"object": {"customer": "cus_1"}}}).encode()
    client.webhook("stripe", "evt_1", {"Stripe-Signature": "t=1,v1=abc"}, body)
    client.webhook("github", "delivery-2", {"X-GitHub-Event": "push"}, "{}")
    client.flush(timeout=10)

    first, second = read_messages(REDIS_URL, WEBHOOKS_QUEUE, 2)
    assert first.headers["task"] == second.headers["task"] == WEBHOOK_TASK
    assert api_key not in first.headers["argsrepr"]
    payload = envelope_of(first)
    webhook = WebhookIn.model_validate(payload)
    assert payload == {
        "api_key": api_key,
        "provider": "stripe",
        "delivery_id": "evt_1",
        "received_at": payload["received_at"],
        "headers": {"Stripe-Signature": "t=1,v1=abc"},
        "body": body.decode(),
    }
    assert abs(webhook.received_at - datetime.now(UTC)) < timedelta(seconds=30)
    assert envelope_of(second)["provider"] == "github"


def test_a_webhook_body_must_be_utf8_text(client: UserPath) -> None:
    with pytest.raises(InvalidEvent, match="not UTF-8"):
        client.webhook("stripe", "evt_1", {}, b"\xff\xfe")
    with pytest.raises(InvalidEvent, match="provider"):
        client.webhook("Not A Provider!", "evt_1", {}, "{}")


# -- refusals at the call site ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"event": "No One"}, "needs a user_id or an anonymous_id"),
        ({"event": "Naive", "user_id": "u", "timestamp": datetime(2026, 1, 1)}, "timestamp"),
        ({"event": "Naive text", "user_id": "u", "timestamp": "2026-01-01T00:00:00"}, "timestamp"),
        ({"event": "", "user_id": "u"}, "event"),
        ({"event": "x" * 201, "user_id": "u"}, "event"),
        ({"event": "Long id", "user_id": "u" * 201}, "user_id"),
        ({"event": "Long event id", "user_id": "u", "event_id": "e" * 101}, "event_id"),
        ({"event": "Number user", "user_id": 42}, "user_id"),
        ({"event": "List", "user_id": "u", "properties": ["a"]}, "properties"),
        ({"event": "Int keys", "user_id": "u", "properties": {1: "a"}}, "properties"),
        ({"event": "Too large", "user_id": "u", "properties": {"x": "y" * MAX_EVENT_BYTES}}, "limit is 32768"),
        ({"event": "Not JSON", "user_id": "u", "properties": {"price": Decimal("1.5")}}, "not storable JSON"),
        ({"event": "NaN", "user_id": "u", "properties": {"ratio": float("nan")}}, "not storable JSON"),
        ({"event": "Surrogate", "user_id": "u", "properties": {"text": "\ud800"}}, "not storable JSON"),
        ({"event": "NUL", "user_id": "u", "properties": {"text": "a\x00b"}}, "NUL"),
        ({"event": "Marker", "user_id": "u", "context": {"x": [{"__type__": "uuid", "__value__": "1"}]}}, "__type__"),
    ],
)
def test_an_invalid_event_raises_at_the_call(client: UserPath, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message) as raised:
        client.track(**arguments)
    assert "\n" not in str(raised.value)
    client.flush(timeout=5)
    read_messages(REDIS_URL, EVENTS_QUEUE, 0)


def test_an_unknown_field_raises_at_the_call(client: UserPath) -> None:
    with pytest.raises(TypeError, match="colour"):
        client.track("Typo", user_id="u", colour="red")  # type: ignore[call-arg]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    event=st.one_of(st.text(max_size=3), st.just("x" * 201), st.integers(), st.binary(max_size=3)),
    user_id=st.one_of(st.none(), st.text(max_size=3), st.integers()),
    anonymous_id=st.one_of(st.none(), st.just("a" * 201), st.text(max_size=3)),
    properties=st.one_of(
        st.none(), st.dictionaries(st.text(max_size=3), json_values, max_size=3), st.lists(st.integers())
    ),
    timestamp=st.one_of(
        st.none(),
        st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))])),
        st.datetimes(),
        st.sampled_from(["2026-01-01T00:00:00+01:00", "2026-01-01T00:00:00", "yesterday"]),
    ),
    event_id=st.one_of(st.none(), st.text(max_size=3), st.just("e" * 101)),
)
def test_the_client_accepts_exactly_what_eventin_accepts(
    client: UserPath, event: Any, user_id: Any, anonymous_id: Any, properties: Any, timestamp: Any, event_id: Any
) -> None:
    raw = {
        "event": event,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "timestamp": timestamp or datetime.now(UTC),
    }
    raw |= {name: value for name, value in (("properties", properties), ("event_id", event_id)) if value is not None}
    try:  # what the worker stores: valid, then no NUL (a transport marker cannot be generated here)
        schema_accepts = not has_nul(canonical_json(EventIn.model_validate(raw).model_dump(mode="json")))
    except ValidationError:
        schema_accepts = False
    try:
        client.track(event, user_id, anonymous_id, properties, timestamp, None, event_id)
        client_accepts = True
    except InvalidEvent:
        client_accepts = False
    assert client_accepts == schema_accepts


def test_a_malformed_key_is_refused_at_construction_without_showing_it(redis_db: redis.Redis) -> None:
    with pytest.raises(InvalidKey, match="malformed"):
        UserPath("sk_live_not_ours", REDIS_URL)
    key = tokens.generate(Environment.TEST)
    mistyped = key[:-1] + ("0" if key[-1] != "0" else "1")
    with pytest.raises(InvalidKey, match="bad checksum") as raised:
        UserPath(mistyped, REDIS_URL)
    assert mistyped not in str(raised.value)
    assert tokens.display_form(mistyped) in str(raised.value)


def test_the_key_is_never_in_headers_or_logs(
    api_key: str, redis_db: redis.Redis, all_logs: pytest.LogCaptureFixture
) -> None:
    with UserPath(api_key, REDIS_URL, flush_interval=60) as userpath:
        userpath.track("Signed Up", user_id="u")
        userpath.job_event("Job", user_id="u", job_name="j")
        userpath.webhook("stripe", "evt_1", {}, "{}")
        userpath.flush(timeout=10)
        assert api_key not in repr(userpath)
        for queue in CLIENT_QUEUES:
            (raw,) = redis_db.lrange(lane_list(queue, lane_of(api_key)), 0, -1)
            wrapper = json.loads(raw)
            assert api_key not in json.dumps(wrapper["headers"]) + json.dumps(wrapper["properties"])
            assert api_key in base64.b64decode(wrapper["body"]).decode()  # the body, and only it
    failing = UserPath(api_key, unreachable_broker(), flush_interval=0.05)
    failing.track("Lost", user_id="u")
    with pytest.raises(NotSent):
        failing.flush(timeout=0.3)
    with pytest.raises(NotSent):
        failing.close(timeout=0)
    assert "could not send to the broker" in all_logs.text
    assert api_key not in all_logs.text
    assert not tokens.KEY_PATTERN.search(all_logs.text)


# -- a broker that is down -------------------------------------------------------------------


def test_events_are_kept_and_counted_when_the_broker_is_down(api_key: str) -> None:
    userpath = UserPath(api_key, unreachable_broker(), flush_interval=0.05, max_queue_size=5, broker_timeout=1)
    for number in range(5):
        userpath.track(f"Kept {number}", user_id="u")
    with pytest.raises(QueueFull, match="5 events are waiting"):
        userpath.track("One too many", user_id="u")
    with pytest.raises(NotSent) as not_flushed:
        userpath.flush(timeout=0.3)
    assert not_flushed.value.count == 5
    with pytest.raises(NotSent) as not_closed:
        userpath.close(timeout=0.3)
    assert not_closed.value.count == 5


def test_events_queued_while_the_broker_is_down_are_sent_once_it_is_back(api_key: str, redis_db: redis.Redis) -> None:
    userpath = UserPath(api_key, unreachable_broker(), flush_interval=0.05, broker_timeout=1)
    userpath.track("Waited", user_id="u")
    with pytest.raises(NotSent):
        userpath.flush(timeout=0.3)
    # The broker "comes back": the next connection the sender makes goes to the real Redis.
    userpath._sender._publisher._broker_url = REDIS_URL
    userpath.flush(timeout=15)
    userpath.close()
    assert batch_names(read_messages(REDIS_URL, EVENTS_QUEUE, 1)) == ["Waited"]


# -- RabbitMQ --------------------------------------------------------------------------------


def test_rabbitmq_receives_the_same_messages(api_key: str) -> None:
    purge(RABBITMQ_URL)
    try:
        with UserPath(api_key, RABBITMQ_URL, flush_interval=60) as userpath:
            for number in range(150):
                userpath.track(f"Rabbit {number}", user_id="u")
            userpath.job_event("Rabbit job", user_id="u", job_name="nightly", run_id="r1")
            userpath.webhook("github", "d-1", {"X-GitHub-Event": "push"}, "{}")
            userpath.flush(timeout=15)

        events = read_messages(RABBITMQ_URL, EVENTS_QUEUE, 2)
        assert [len(envelope_of(message)["batch"]) for message in events] == [100, 50]
        assert events[0].headers["task"] == TRACK_TASK
        assert api_key not in json.dumps(events[0].headers)
        assert events[0].content_type == "application/json"
        (job,) = read_messages(RABBITMQ_URL, JOBS_QUEUE, 1)
        assert envelope_of(job)["batch"][0]["context"] == {"job": {"name": "nightly", "run_id": "r1"}}
        (webhook,) = read_messages(RABBITMQ_URL, WEBHOOKS_QUEUE, 1)
        assert webhook.headers["task"] == WEBHOOK_TASK
    finally:
        purge(RABBITMQ_URL)


# -- how cheap track() is --------------------------------------------------------------------


def test_track_throughput_is_measured(api_key: str, redis_db: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints track() calls per second; no assertion on timing. With the broker down, the figure
    is the call alone; with Redis up, the sender thread competes for the GIL at the same time."""
    count = 100_000
    figures = {}
    for label, url in (("buffer only (broker down)", unreachable_broker()), ("while sending to Redis", REDIS_URL)):
        userpath = UserPath(api_key, url, max_queue_size=count, broker_timeout=1)
        started = time.perf_counter()
        for number in range(count):
            userpath.track("Page Viewed", user_id="user_123", properties={"path": "/pricing", "n": number})
        figures[label] = count / (time.perf_counter() - started)
        try:
            userpath.close(timeout=30 if url == REDIS_URL else 0)
        except NotSent as error:
            assert url != REDIS_URL, error
    with capsys.disabled():
        print("\ntrack() calls/s: " + ", ".join(f"{label}: {rate:,.0f}" for label, rate in figures.items()))
