"""Bad input through a real worker: hypothesis-generated envelopes, events and raw bodies, a
10 MB message, and pickle and yaml bodies that would run code if anything deserialized them.

The worker must never stop and never loop on a poison message, and every message must end
either stored or dead-lettered: stored + dead-lettered = sent, exactly, and per reason.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import pickle
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer
from sqlalchemy import Engine, func, select

from tests.common.databases import TEST_DATABASE_PREFIX, truncate_all
from tests.common.factories import new_key
from tests.common.workers import (
    FAULTS_RABBITMQ_VHOST,
    FAULTS_REDIS_URL,
    empty_queues,
    migrated_database,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_client.contract import EVENTS_QUEUE, JOBS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event
from userpath_worker.keys import tokens
from userpath_worker.keys.tokens import Environment

pytestmark = pytest.mark.slow

GENERATED_MESSAGES = 150
NO_WORKFLOW = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# Text any database stores: no NUL, no lone surrogate.
STORABLE_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
EXAMPLE_TIME = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)


@dataclass
class Ledger:
    """What was sent and what it must become: events stored, and dead letters by reason."""

    stored: int = 0
    dead: Counter[str] = field(default_factory=Counter)

    def expect(self, stored: int = 0, **dead: int) -> None:
        self.stored += stored
        self.dead.update(dead)


@dataclass(frozen=True)
class Draft:
    """One generated message before it gets its unique number."""

    kind: str  # "track", "webhook", "raw"
    argument: Any = None
    events: tuple[tuple[Any, str | None], ...] = ()  # (event, dead-letter reason or None if valid)
    body: bytes = b""
    task: str = TRACK_TASK
    reason: str | None = None  # for a whole message that is refused


# Strategies. Each draws a message whose fate is known by construction.

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(STORABLE_TEXT, max_size=40)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(STORABLE_TEXT, max_size=12), children, max_size=4).filter(
            lambda value: set(value) != {"__type__", "__value__"}  # kombu's own object notation
        )
    ),
    max_leaves=20,
)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))
aware_times = st.datetimes(dt.datetime(1971, 1, 1), dt.datetime(2100, 1, 1), timezones=offsets)
names = st.text(STORABLE_TEXT, min_size=1, max_size=200)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {"event": draw(names), "timestamp": draw(aware_times).isoformat()}
    who = draw(st.sampled_from(["user_id", "anonymous_id", "both"]))
    for field_name in ("user_id", "anonymous_id"):
        if who in (field_name, "both"):
            event[field_name] = draw(names)
    if draw(st.booleans()):
        event["properties"] = draw(st.dictionaries(st.text(STORABLE_TEXT, max_size=12), json_values, max_size=5))
    if draw(st.booleans()):
        event["context"] = draw(st.none() | st.dictionaries(st.text(STORABLE_TEXT, max_size=12), json_values))
    return event


not_a_string = st.integers() | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.none())
# Each corruption turns a valid event into one that is refused, with the reason it gets.
CORRUPTIONS: dict[str, Any] = {
    "no name": lambda draw, event: event.pop("event"),
    "name not a string": lambda draw, event: event.update(event=draw(not_a_string | st.none() | st.booleans())),
    "name too long": lambda draw, event: event.update(event=draw(st.text(STORABLE_TEXT, min_size=201, max_size=300))),
    "no user": lambda draw, event: [event.pop(name, None) for name in ("user_id", "anonymous_id")],
    "user not a string": lambda draw, event: event.update(user_id=draw(not_a_string | st.booleans())),
    "naive timestamp": lambda draw, event: event.update(timestamp=draw(st.datetimes()).isoformat()),
    "not a timestamp": lambda draw, event: event.update(
        timestamp=draw(st.text(STORABLE_TEXT, max_size=30).map("not a time: {}".format) | st.none() | st.just([]))
    ),
    "unknown field": lambda draw, event: event.update(userId=draw(json_values)),
    "properties not an object": lambda draw, event: event.update(properties=draw(st.lists(json_leaves) | json_leaves)),
    "NUL character": lambda draw, event: event.update(event="a\x00b"),
    "lone surrogate": lambda draw, event: event.update(properties={"text": "broken \ud800 half"}),
    "NaN": lambda draw, event: event.update(properties={"ratio": draw(st.sampled_from([float("nan"), float("inf")]))}),
    "event_id too long": lambda draw, event: event.update(event_id="x" * 101),
}
OVERSIZED_EVENT_BYTES = 40_000  # over the 32 KiB limit of one event


@st.composite
def broken_events(draw: st.DrawFn) -> tuple[Any, str]:
    corruption = draw(st.sampled_from([*CORRUPTIONS, "too large", "not an object"]))
    if corruption == "not an object":
        return draw(json_leaves | st.lists(json_leaves, max_size=3)), "invalid_event"
    event = draw(valid_events())
    if corruption == "too large":
        event["properties"] = {"blob": "x" * OVERSIZED_EVENT_BYTES}
        return event, "too_large"
    CORRUPTIONS[corruption](draw, event)
    return event, "invalid_event"


@st.composite
def track_messages(draw: st.DrawFn) -> Draft:
    """An envelope with a good key whose events are each valid or refused on their own."""
    events = draw(st.lists(valid_events().map(lambda event: (event, None)) | broken_events(), min_size=1, max_size=6))
    sent_at = draw(st.none() | st.just(EXAMPLE_TIME.isoformat()))
    return Draft("track", argument={"sent_at": sent_at} if sent_at else {}, events=tuple(events))


@st.composite
def refused_envelopes(draw: st.DrawFn) -> Draft:
    """A message refused as a whole: one dead letter with the reason given."""
    good_event = {"event": "x", "user_id": "u", "timestamp": EXAMPLE_TIME.isoformat()}
    choice = draw(st.integers(0, 9))
    key_problems = [
        ({"batch": [good_event]}, "malformed_key"),  # no key at all
        ({"api_key": draw(not_a_string), "batch": [good_event]}, "malformed_key"),
        ({"api_key": "{bad checksum}", "batch": [good_event]}, "bad_checksum"),
        ({"api_key": "{unknown}", "batch": [good_event]}, "unknown_key"),
    ]
    envelope_problems = [
        {"api_key": "{key}", "batch": []},
        {"api_key": "{key}", "batch": draw(json_leaves | st.dictionaries(st.text(max_size=3), json_leaves))},
        {"api_key": "{key}", "batch": [good_event] * 1001},
        {"api_key": "{key}", "batch": [good_event], "sent_at": draw(st.datetimes()).isoformat()},
        {"api_key": "{key}", "batch": [good_event], draw(st.sampled_from(["Batch", "apiKey", "extra"])): 1},
    ]
    if choice < len(key_problems):
        argument, reason = key_problems[choice]
        return Draft("track", argument=argument, reason=reason)
    if choice < 9:
        return Draft("track", argument=envelope_problems[choice - len(key_problems)], reason="invalid_envelope")
    return Draft("track", argument=draw(json_leaves | st.lists(json_leaves, max_size=3)), reason="invalid_envelope")


@st.composite
def raw_messages(draw: st.DrawFn) -> Draft:
    """Bodies that are not JSON, not valid UTF-8, JSON of the wrong shape, or for a task we do not have."""
    choice = draw(st.integers(0, 4))
    if choice == 0:  # NUL is never valid JSON
        return Draft("raw", body=b"\x00" + draw(st.binary(max_size=200)), reason="undecodable")
    if choice == 1:  # 0xFF never occurs in UTF-8
        return Draft("raw", body=b'[[{"api_key": "\xff' + draw(st.binary(max_size=200)), reason="undecodable")
    if choice == 2:  # JSON, but not [args, kwargs, embed] with one positional argument
        shapes = json_leaves | st.dictionaries(st.text(max_size=5), json_values) | st.lists(json_values, max_size=5)
        # Left out: three items (Celery would unpack them as the triple) and an "args" field (its
        # hybrid protocol); both reach the task, and are covered by the other drafts.
        body = draw(
            shapes.filter(lambda value: not (isinstance(value, str | list | dict) and len(value) == 3)).filter(
                lambda value: not (isinstance(value, dict | str) and "args" in value)
            )
        )
        return Draft("raw", body=json.dumps(body).encode(), reason="invalid_envelope")
    if choice == 3:  # extra or missing task arguments
        arguments = draw(st.sampled_from([[], ["{envelope}", "{envelope}"]]))
        keywords = draw(st.sampled_from([{}, {"batch": []}])) if arguments else {}
        return Draft("raw", body=json.dumps([arguments, keywords, {}]).encode(), reason="invalid_envelope")
    task = draw(st.text(STORABLE_TEXT, min_size=1, max_size=40).map("unknown.{}".format))
    return Draft("raw", body=b'[["{envelope}"], {}, {}]', task=task, reason="unknown_task")


@st.composite
def webhook_messages(draw: st.DrawFn) -> Draft:
    webhook = {
        "api_key": "{key}",
        "provider": "stripe",
        "delivery_id": "{delivery}",
        "received_at": EXAMPLE_TIME.isoformat(),
        "headers": draw(st.dictionaries(st.text(STORABLE_TEXT, max_size=10), st.text(STORABLE_TEXT, max_size=10))),
        "body": draw(st.text(STORABLE_TEXT, max_size=100)),
    }
    broken = draw(st.sampled_from([None, "provider", "received_at", "body", "headers"]))
    if broken is None:
        return Draft("webhook", argument=webhook)
    webhook[broken] = {"provider": "Not A Provider!", "received_at": "2026-01-01T00:00:00"}.get(broken, 42)
    return Draft("webhook", argument=webhook, reason="invalid_envelope")


any_message = track_messages() | refused_envelopes() | raw_messages() | webhook_messages()


class Sender:
    """Publishes drafts as raw broker messages, each with its own number, and keeps the ledger."""

    def __init__(self, producer: Producer, key: str) -> None:
        self.producer = producer
        self.key = key
        self.ledger = Ledger()
        self.sent = 0

    def publish(self, draft: Draft) -> None:
        number = self.sent
        self.sent += 1
        if draft.kind == "raw":
            body = draft.body.replace(b'"{envelope}"', json.dumps(self._envelope(number)).encode())
            self._send(body, draft.task, EVENTS_QUEUE)
            self.ledger.expect(**{draft.reason: 1})
            return
        argument = self._filled(draft.argument, number)
        if draft.kind == "webhook":
            self._send(self._body(argument), WEBHOOK_TASK, WEBHOOKS_QUEUE)
            self.ledger.expect(**({draft.reason: 1} if draft.reason else {"stored": 1}))
            return
        if draft.reason is None:
            argument = {"api_key": self.key, **argument, "batch": []}
            for index, (event, reason) in enumerate(draft.events):
                if isinstance(event, dict):
                    event = {"event_id": f"{number}-{index}", **event}
                argument["batch"].append(event)
                self.ledger.expect(**({reason: 1} if reason else {"stored": 1}))
        else:
            self.ledger.expect(**{draft.reason: 1})
        self._send(self._body(argument), TRACK_TASK, EVENTS_QUEUE if number % 2 else JOBS_QUEUE)

    def _envelope(self, number: int) -> dict[str, Any]:
        return {"api_key": self.key, "batch": [{"event_id": f"{number}-0", "event": "x", "user_id": "u"}]}

    def _filled(self, value: Any, number: int) -> Any:
        """Placeholders replaced: the strategies cannot know the key or the message's number."""
        replacements = {
            "{key}": self.key,
            "{bad checksum}": self.key[:-1] + ("0" if self.key[-1] != "0" else "1"),
            "{unknown}": tokens.generate(Environment.LIVE),
            "{delivery}": f"delivery-{number}",
        }
        if isinstance(value, str):
            return replacements.get(value, value)
        if isinstance(value, dict):
            return {name: self._filled(item, number) for name, item in value.items()}
        if isinstance(value, list):
            return [self._filled(item, number) for item in value]
        return value

    @staticmethod
    def _body(argument: Any) -> bytes:
        # ensure_ascii keeps lone surrogates as \ud800 escapes, and NaN goes out as NaN: both
        # are JSON a producer can send.
        return json.dumps([[argument], {}, NO_WORKFLOW]).encode()

    def _send(self, body: bytes, task: str, queue: str, content_type: str = "application/json") -> None:
        task_id = str(uuid.uuid4())
        headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None}
        self.producer.publish(
            body, routing_key=queue, headers=headers, content_type=content_type, content_encoding="utf-8"
        )


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, Engine]]:
    url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_bad_input")
    yield url, engine
    engine.dispose()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, database: tuple[str, Engine]) -> str:
    truncate_all(database[1])
    if request.param == "redis":
        redis.Redis.from_url(FAULTS_REDIS_URL).flushdb()
        url = FAULTS_REDIS_URL
    else:
        url = rabbitmq_vhost(FAULTS_RABBITMQ_VHOST)
    empty_queues(url)
    return url


class RunsCode:
    """Unpickling this creates a file: proof that a body was deserialized."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_bad_input_is_stored_or_dead_lettered_exactly_and_never_stops_the_worker(
    database: tuple[str, Engine], broker_url: str, tmp_path: Path
) -> None:
    database_url, engine = database
    _, _, key = new_key(engine)
    marker = tmp_path / "deserialized"

    with Connection(broker_url) as connection:
        sender = Sender(Producer(connection), key)

        @settings(
            max_examples=GENERATED_MESSAGES,
            deadline=None,
            database=None,
            phases=[Phase.generate],  # every example is published: no shrinking against a queue
            suppress_health_check=list(HealthCheck),
        )
        @given(draft=any_message)
        def publish(draft: Draft) -> None:
            sender.publish(draft)

        publish()
        # A 10 MB message, and bodies that would run code if anything deserialized them.
        huge = {"api_key": key, "batch": [{"event": "x", "user_id": "u", "properties": {"blob": "x" * 10_000_000}}]}
        sender._send(sender._body(huge), TRACK_TASK, EVENTS_QUEUE)
        sender.ledger.expect(too_large=1)
        pickled = pickle.dumps([[RunsCode(marker)], {}, {}])
        sender._send(pickled, TRACK_TASK, EVENTS_QUEUE, content_type="application/x-python-serialize")
        yaml_body = f'!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ["{marker}"]]'
        sender._send(yaml_body.encode(), TRACK_TASK, EVENTS_QUEUE, content_type="application/x-yaml")
        sender.ledger.expect(undecodable=2)

    expected = sender.ledger
    log = tmp_path / "worker.log"
    with running_worker(worker_environment(database_url, broker_url), log, "--concurrency=2") as worker:
        settle_at(engine, (expected.stored, expected.dead.total()), timeout=180, quiet_seconds=3)
        assert worker.poll() is None, "the worker is still running"
    with engine.connect() as connection:
        by_reason = connection.execute(select(DeadLetter.reason, func.count()).group_by(DeadLetter.reason))
        reasons = Counter({reason: count for reason, count in by_reason})
        stored_ids = set(connection.scalars(select(Event.event_id)))
    assert reasons == expected.dead
    assert len(stored_ids) == expected.stored
    assert not marker.exists(), "a pickle or yaml body was deserialized"
    text = log.read_text(errors="replace")
    assert "Unrecoverable error" not in text and "Restarting" not in text
    assert not tokens.KEY_PATTERN.search(text)
