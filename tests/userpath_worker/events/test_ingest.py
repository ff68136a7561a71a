"""Ingestion in the domain core: authenticate, validate, store once, dead-letter the rest.

Each case runs on SQLite and on real PostgreSQL, inside a transaction rolled back afterwards.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.common.clock import FakeClock
from tests.common.databases import table_dump
from tests.common.factories import OWNER, make_organization
from tests.common.signing import TEST_SECRET_KEY
from userpath_client.contract import EVENTS_QUEUE, MAX_EVENT_BYTES, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.db import utcnow
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.deadletter.services import Delivery
from userpath_worker.events import normalizers, rollups
from userpath_worker.events.models import Event, Source
from userpath_worker.events.rollups import IngestionCount, KeyActivity
from userpath_worker.events.services import Incoming, Ingestor, IngestOutcome
from userpath_worker.events.verdicts import derived_event_id, occurred_at
from userpath_worker.keys import tokens
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.keys.tokens import AuthFailure, Environment
from userpath_worker.webhooks.services import SigningKeys

RECEIVED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ingestor(session: Session, clock: FakeClock) -> Ingestor:
    # Each message's "transaction" is a savepoint inside the test's rolled-back transaction.
    factory = sessionmaker(bind=session.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False)
    return Ingestor(
        factory, KeyAuthenticator(pepper=None, ttl=2.0, clock=clock), SigningKeys(lambda: TEST_SECRET_KEY, ttl=2.0)
    )


@pytest.fixture
def org_and_key(session: Session, keys: KeyService) -> tuple[int, ApiKey, str]:
    organization = make_organization(session)
    key, plaintext = keys.create(organization, "App X Production Server", OWNER)
    return organization.id, key, plaintext


def delivery(queue: str = EVENTS_QUEUE, task: str = TRACK_TASK) -> Delivery:
    return Delivery(task=task, queue=queue, received_at=RECEIVED)


def an_event(**overrides: Any) -> dict[str, Any]:
    return {"event": "Signed Up", "user_id": "user-1", "timestamp": "2026-03-01T11:59:00+00:00", **overrides}


def track(ingestor: Ingestor, envelope: Any, source: Source = Source.SERVER) -> IngestOutcome:
    return ingestor.track([envelope], {}, source, delivery())


def events(session: Session) -> list[Event]:
    return list(session.scalars(select(Event).order_by(Event.id)))


def dead(session: Session) -> list[DeadLetter]:
    return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def test_a_valid_envelope_is_stored_with_every_column(session: Session, ingestor: Ingestor, org_and_key) -> None:
    org_id, key, plaintext = org_and_key
    envelope = {
        "api_key": plaintext,
        "sent_at": "2026-03-01T12:00:05+00:00",
        "batch": [
            an_event(event_id="e-1", properties={"plan": "pro"}, context={"job": {"name": "nightly", "run_id": "r9"}})
        ],
    }
    assert track(ingestor, envelope, Source.JOB) == IngestOutcome(stored=1, dead_lettered=0)

    [stored] = events(session)
    assert (stored.org_id, stored.api_key_id, stored.environment, stored.source) == (
        org_id,
        key.id,
        Environment.LIVE,
        Source.JOB,
    )
    assert (stored.event_id, stored.name, stored.user_id, stored.anonymous_id) == ("e-1", "Signed Up", "user-1", None)
    assert stored.properties == {"plan": "pro"}
    assert stored.context == {"job": {"name": "nightly", "run_id": "r9"}}
    assert stored.timestamp == dt.datetime(2026, 3, 1, 11, 59, tzinfo=dt.UTC)
    assert stored.sent_at == dt.datetime(2026, 3, 1, 12, 0, 5, tzinfo=dt.UTC)
    assert stored.received_at == RECEIVED
    # The client's clock ran 5 s fast: the event happened 65 s before the worker received it.
    assert stored.occurred_at == RECEIVED - dt.timedelta(seconds=65)
    assert dead(session) == []


def test_the_organization_comes_from_the_key_never_from_the_payload(
    session: Session, ingestor: Ingestor, org_and_key
) -> None:
    org_id, _, plaintext = org_and_key
    other = make_organization(session)
    track(ingestor, {"api_key": plaintext, "batch": [an_event(properties={"org_id": other.id})]})
    assert [e.org_id for e in events(session)] == [org_id]
    assert track(ingestor, {"api_key": plaintext, "org_id": other.id, "batch": [an_event()]}).dead_lettered == 1
    assert [e.org_id for e in events(session)] == [org_id]


def test_a_test_key_stores_test_events(session: Session, ingestor: Ingestor, keys: KeyService) -> None:
    _, plaintext = keys.create(make_organization(session), "Staging", OWNER, environment=Environment.TEST)
    track(ingestor, {"api_key": plaintext, "batch": [an_event()]})
    assert [e.environment for e in events(session)] == [Environment.TEST]


@pytest.mark.parametrize(
    ("sent_at", "timestamp", "expected"),
    [
        (None, "2026-03-01T11:00:00+00:00", dt.datetime(2026, 3, 1, 11, 0, tzinfo=dt.UTC)),
        ("2026-03-01T12:00:00+00:00", "2026-03-01T11:00:00+00:00", dt.datetime(2026, 3, 1, 11, 0, tzinfo=dt.UTC)),
        ("2026-03-01T10:00:00+00:00", "2026-03-01T09:59:30+00:00", dt.datetime(2026, 3, 1, 11, 59, 30, tzinfo=dt.UTC)),
        ("2026-03-01T14:00:00+02:00", "2026-03-01T13:00:00+02:00", dt.datetime(2026, 3, 1, 11, 0, tzinfo=dt.UTC)),
    ],
)
def test_clock_skew_correction(sent_at: str | None, timestamp: str, expected: dt.datetime) -> None:
    parse = dt.datetime.fromisoformat
    assert occurred_at(parse(timestamp), parse(sent_at) if sent_at else None, RECEIVED) == expected


def test_verdicts_are_per_event(session: Session, ingestor: Ingestor, org_and_key) -> None:
    org_id, key, plaintext = org_and_key
    batch = [
        an_event(event_id="ok-1"),
        an_event(user_id=None),  # nobody
        an_event(timestamp="2026-03-01T11:59:00"),  # naive
        an_event(event_id="ok-2", anonymous_id="anon-7", user_id=None),
        an_event(userId="typo"),
        an_event(properties={"blob": "x" * MAX_EVENT_BYTES}),
        an_event(properties={"nul": "a\x00b"}),
        "not an object",
    ]
    outcome = track(ingestor, {"api_key": plaintext, "batch": batch})
    assert outcome == IngestOutcome(stored=2, dead_lettered=6)
    assert [e.event_id for e in events(session)] == ["ok-1", "ok-2"]
    letters = dead(session)
    assert [(d.reason, d.detail.split(":")[0]) for d in letters] == [
        ("invalid_event", "batch.1"),
        ("invalid_event", "batch.2"),
        ("invalid_event", "batch.4"),
        ("too_large", "batch.5"),
        ("invalid_event", "batch.6"),
        ("invalid_event", "batch.7"),
    ]
    assert {(d.org_id, d.api_key_id, d.queue) for d in letters} == {(org_id, key.id, EVENTS_QUEUE)}
    assert "needs a user_id or an anonymous_id" in letters[0].detail
    assert "timezone" in letters[1].detail
    assert letters[2].payload["userId"] == "typo"


def test_the_same_envelope_twice_stores_each_event_once(session: Session, ingestor: Ingestor, org_and_key) -> None:
    _, _, plaintext = org_and_key
    envelope = {
        "api_key": plaintext,
        "batch": [an_event(event_id="a"), an_event(event="No Id"), an_event(event="No Id")],
    }
    # The two "No Id" events are one event (same key and content): stored once, then a duplicate.
    assert track(ingestor, envelope) == IngestOutcome(stored=2, dead_lettered=0, duplicates=1)
    assert track(ingestor, envelope) == IngestOutcome(stored=0, dead_lettered=0, duplicates=3)
    assert sorted(e.name for e in events(session)) == ["No Id", "Signed Up"]


def test_duplicates_are_counted_per_message_of_one_batch(session: Session, ingestor: Ingestor, org_and_key) -> None:
    _, _, plaintext = org_and_key
    first = Incoming(
        TRACK_TASK, [{"api_key": plaintext, "batch": [an_event(event_id="a")]}], {}, Source.SERVER, delivery()
    )
    again = Incoming(
        TRACK_TASK,
        [{"api_key": plaintext, "batch": [an_event(event_id="a"), an_event(event_id="b")]}],
        {},
        Source.SERVER,
        delivery(),
    )
    assert ingestor.ingest([first, again]) == [IngestOutcome(1, 0, 0), IngestOutcome(1, 0, 1)]
    assert sorted(e.event_id for e in events(session)) == ["a", "b"]


def test_an_event_without_id_gets_one_from_its_key_and_content(
    session: Session, ingestor: Ingestor, org_and_key
) -> None:
    _, key, plaintext = org_and_key
    raw = an_event()
    track(ingestor, {"api_key": plaintext, "batch": [raw]})
    [stored] = events(session)
    from userpath_client.schemas import canonical_json

    assert stored.event_id == derived_event_id(str(key.id), canonical_json(raw))


@pytest.mark.parametrize(
    ("api_key", "reason"),
    [
        (None, Reason.MALFORMED_KEY),
        ("sk_live_123", Reason.MALFORMED_KEY),
        ("bad-checksum", Reason.BAD_CHECKSUM),
        ("unknown", Reason.UNKNOWN_KEY),
    ],
)
def test_refused_keys_dead_letter_the_whole_envelope(
    session: Session, ingestor: Ingestor, api_key: str | None, reason: Reason
) -> None:
    good = tokens.generate(Environment.LIVE)
    candidate = {"bad-checksum": good[:-1] + ("0" if good[-1] != "0" else "1"), "unknown": good}.get(api_key, api_key)
    envelope = {"batch": [an_event(), an_event(event="Second")]} | ({"api_key": candidate} if candidate else {})
    outcome = track(ingestor, envelope)
    assert outcome == IngestOutcome(stored=0, dead_lettered=1)
    shaped = bool(candidate and tokens.KEY_PATTERN.fullmatch(candidate))
    assert outcome.key == (tokens.display_form(candidate) if shaped else None)  # for the log's line
    [letter] = dead(session)
    assert letter.reason == reason and letter.org_id is None
    assert len(letter.payload["batch"]) == 2
    if candidate and tokens.KEY_PATTERN.fullmatch(candidate):
        assert letter.payload["api_key"] == tokens.display_form(candidate)


def test_deleted_and_expired_keys_are_refused_with_their_org(
    session: Session, ingestor: Ingestor, keys: KeyService, clock: FakeClock
) -> None:
    organization = make_organization(session)
    deleted, deleted_plaintext = keys.create(organization, "Deleted", OWNER)
    rolled, rolled_plaintext = keys.create(organization, "Rolled", OWNER)
    track(ingestor, {"api_key": deleted_plaintext, "batch": [an_event()]})  # now cached as valid
    keys.delete(deleted.id, OWNER)
    keys.roll(rolled.id, OWNER, grace=dt.timedelta(0))

    clock.now += 2.0  # the cache's time to live: a change is seen within it
    track(ingestor, {"api_key": deleted_plaintext, "batch": [an_event(event="after delete")]})
    track(ingestor, {"api_key": rolled_plaintext, "batch": [an_event()]})
    assert [(d.reason, d.org_id, d.api_key_id) for d in dead(session)] == [
        ("deleted_key", organization.id, deleted.id),
        ("expired_key", organization.id, rolled.id),
    ]


def test_valid_keys_are_served_from_the_cache(
    session: Session, ingestor: Ingestor, org_and_key, engine: Engine, clock: FakeClock
) -> None:
    _, _, plaintext = org_and_key
    lookups: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        if "FROM api_keys" in statement:
            lookups.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for n in range(5):
            track(ingestor, {"api_key": plaintext, "batch": [an_event(event_id=str(n))]})
        assert len(lookups) == 1
        clock.now += 2.0
        track(ingestor, {"api_key": plaintext, "batch": [an_event(event_id="later")]})
        assert len(lookups) == 2
        assert ingestor.authenticator.hits == 4 and ingestor.authenticator.misses == 2
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_the_authenticator_answers_at_once_what_needs_no_query(
    session: Session, ingestor: Ingestor, org_and_key, clock: FakeClock
) -> None:
    """The edge asks ``answer_at_once`` first and opens a session only when it says None."""
    _, key, plaintext = org_and_key
    authenticator = ingestor.authenticator
    assert authenticator.answer_at_once(plaintext) is None  # never looked up
    track(ingestor, {"api_key": plaintext, "batch": [an_event()]})
    cached = authenticator.answer_at_once(plaintext)
    assert isinstance(cached, KeyIdentity) and cached.key_id == key.id
    assert authenticator.answer_at_once(plaintext[:-1] + ("a" if plaintext[-1] != "a" else "b")) == (
        AuthFailure.BAD_CHECKSUM
    )
    assert authenticator.answer_at_once(b"not text") == AuthFailure.MALFORMED
    clock.now += 2.0  # past the time to live
    assert authenticator.answer_at_once(plaintext) is None


def test_last_used_is_written_at_most_once_a_minute(
    session: Session, ingestor: Ingestor, org_and_key, engine: Engine, clock: FakeClock
) -> None:
    _, key, plaintext = org_and_key
    updates: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        if statement.startswith("UPDATE api_keys"):
            updates.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for n in range(3):
            track(ingestor, {"api_key": plaintext, "batch": [an_event(event_id=f"a{n}")]})
        clock.now += 59
        track(ingestor, {"api_key": plaintext, "batch": [an_event(event_id="b")]})
        assert len(updates) == 1
        clock.now += 1
        track(ingestor, {"api_key": plaintext, "batch": [an_event(event_id="c")]})
        assert len(updates) == 2
    finally:
        event.remove(engine, "before_cursor_execute", count)
    session.refresh(key)
    assert key.last_used_at is not None


@pytest.mark.parametrize(
    ("args", "kwargs", "detail"),
    [
        ([], {}, "exactly one positional argument"),
        ([{}, {}], {}, "exactly one positional argument"),
        ([{}], {"extra": 1}, "exactly one positional argument"),
        (["a string"], {}, "must be a JSON object"),
    ],
)
def test_wrong_task_arguments_are_dead_lettered(
    session: Session, ingestor: Ingestor, args, kwargs, detail: str
) -> None:
    assert ingestor.track(args, kwargs, Source.SERVER, delivery()) == IngestOutcome(stored=0, dead_lettered=1)
    [letter] = dead(session)
    assert letter.reason == "invalid_envelope" and detail in letter.detail


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"batch": []}, "batch"),
        ({"batch": [an_event()] * 1001}, "batch"),
        ({"batch": "events"}, "batch"),
        ({"sent_at": "yesterday"}, "sent_at"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_an_invalid_envelope_is_one_dead_letter(
    session: Session, ingestor: Ingestor, org_and_key, change, detail: str
) -> None:
    org_id, _, plaintext = org_and_key
    assert track(ingestor, {"api_key": plaintext, "batch": [an_event()], **change}).dead_lettered == 1
    [letter] = dead(session)
    assert (letter.reason, letter.org_id) == ("invalid_envelope", org_id)
    assert detail in letter.detail
    assert letter.payload["api_key"] == tokens.display_form(plaintext)


def test_an_envelope_over_one_mebibyte_is_too_large(session: Session, ingestor: Ingestor, org_and_key) -> None:
    _, _, plaintext = org_and_key
    batch = [an_event(properties={"blob": "x" * 30_000}) for _ in range(40)]
    assert track(ingestor, {"api_key": plaintext, "batch": batch}) == IngestOutcome(stored=0, dead_lettered=1)
    [letter] = dead(session)
    assert letter.reason == "too_large"
    assert letter.payload["bytes"] > 1024 * 1024 and len(letter.payload["preview"]) <= 64 * 1024
    assert plaintext not in json.dumps(letter.payload)


def test_a_key_pasted_into_an_event_is_stored_in_its_display_form(
    session: Session, ingestor: Ingestor, org_and_key, engine: Engine
) -> None:
    _, _, plaintext = org_and_key
    other = tokens.generate(Environment.TEST)
    track(
        ingestor,
        {
            "api_key": plaintext,
            "batch": [
                an_event(properties={"note": f"my key is {plaintext}", other: 1}),
                an_event(user_id=None, note=plaintext),
            ],
        },
    )
    dump = table_dump(session, engine)
    assert "my key is " + tokens.display_form(plaintext) in dump
    assert not tokens.KEY_PATTERN.search(dump)


class TestWebhooks:
    def webhook(
        self,
        ingestor: Ingestor,
        plaintext: str,
        provider: str,
        body: str,
        headers: dict[str, str] | None = None,
        delivery_id: str = "d-1",
    ) -> IngestOutcome:
        payload = {
            "api_key": plaintext,
            "provider": provider,
            "delivery_id": delivery_id,
            "received_at": "2026-03-01T11:59:59+00:00",
            "headers": headers or {},
            "body": body,
        }
        return ingestor.webhook([payload], {}, delivery(WEBHOOKS_QUEUE, WEBHOOK_TASK))

    @pytest.mark.parametrize(
        ("provider", "headers", "body", "name", "user_id"),
        [
            (
                "stripe",
                {},
                {"type": "invoice.paid", "data": {"object": {"object": "invoice", "customer": "cus_1"}}},
                "stripe.invoice.paid",
                "cus_1",
            ),
            (
                "stripe",
                {},
                {"type": "customer.created", "data": {"object": {"object": "customer", "id": "cus_2"}}},
                "stripe.customer.created",
                "cus_2",
            ),
            (
                "github",
                {"X-GitHub-Event": "issues"},
                {"action": "opened", "sender": {"login": "octo"}},
                "github.issues.opened",
                "github:octo",
            ),
            ("github", {"x-github-event": "push"}, {"ref": "main"}, "github.push", "webhook:github"),
            ("shopify", {}, {"type": "order.created"}, "shopify.order.created", "webhook:shopify"),
            ("segment", {}, {"event": "Identify"}, "segment.Identify", "webhook:segment"),
            ("acme", {}, {"hello": "world"}, "acme.received", "webhook:acme"),
        ],
    )
    def test_each_normalizer(
        self, session: Session, ingestor: Ingestor, org_and_key, provider, headers, body, name, user_id
    ) -> None:
        _, _, plaintext = org_and_key
        assert self.webhook(ingestor, plaintext, provider, json.dumps(body), headers) == IngestOutcome(1, 0)
        [stored] = events(session)
        assert (stored.name, stored.user_id, stored.source) == (name, user_id, Source.WEBHOOK)
        assert stored.properties == body
        assert stored.context["webhook"]["delivery_id"] == "d-1"
        assert stored.timestamp == stored.occurred_at == dt.datetime(2026, 3, 1, 11, 59, 59, tzinfo=dt.UTC)

    def test_a_redelivered_webhook_is_stored_once(self, session: Session, ingestor: Ingestor, org_and_key) -> None:
        _, _, plaintext = org_and_key
        outcomes = [
            self.webhook(ingestor, plaintext, "stripe", '{"type": "charge.succeeded"}', delivery_id="evt_1")
            for _ in range(3)
        ]
        assert [(o.stored, o.duplicates) for o in outcomes] == [(1, 0), (0, 1), (0, 1)]
        self.webhook(ingestor, plaintext, "stripe", '{"type": "charge.succeeded"}', delivery_id="evt_2")
        [first, second] = events(session)
        assert first.event_id == derived_event_id("webhook", "stripe", "evt_1") != second.event_id

    def test_a_body_that_is_not_json_is_kept_as_text(self, session: Session, ingestor: Ingestor, org_and_key) -> None:
        _, _, plaintext = org_and_key
        self.webhook(ingestor, plaintext, "legacy", "a=1&b=2")
        [stored] = events(session)
        assert (stored.name, stored.properties) == ("legacy.received", {"body": "a=1&b=2"})

    def test_credentials_in_headers_are_not_kept(self, session: Session, ingestor: Ingestor, org_and_key) -> None:
        _, _, plaintext = org_and_key
        self.webhook(ingestor, plaintext, "acme", "{}", {"Authorization": "Bearer secret", "X-Request-Id": "r1"})
        [stored] = events(session)
        assert stored.context["webhook"]["headers"] == {"X-Request-Id": "r1"}

    def test_users_can_register_a_normalizer(
        self, session: Session, ingestor: Ingestor, org_and_key, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, _, plaintext = org_and_key
        monkeypatch.setattr(normalizers, "_registry", dict(normalizers._registry))

        @normalizers.register("shopify")
        def shopify(headers, body) -> normalizers.Normalized:
            return normalizers.Normalized(type=headers["x-shopify-topic"], user_id=str(body["customer_id"]))

        self.webhook(ingestor, plaintext, "shopify", '{"customer_id": 42}', {"X-Shopify-Topic": "orders/create"})
        [stored] = events(session)
        assert (stored.name, stored.user_id) == ("shopify.orders/create", "42")

    @pytest.mark.parametrize(
        "change",
        [
            {"provider": "Bad Provider!"},
            {"received_at": "2026-03-01"},
            {"body": {"not": "a string"}},
            {"headers": {"a": 1}},
        ],
    )
    def test_an_invalid_webhook_is_dead_lettered(
        self, session: Session, ingestor: Ingestor, org_and_key, change
    ) -> None:
        _, _, plaintext = org_and_key
        payload = {
            "api_key": plaintext,
            "provider": "stripe",
            "delivery_id": "d",
            "received_at": "2026-03-01T11:59:59+00:00",
            "headers": {},
            "body": "{}",
            **change,
        }
        assert ingestor.webhook([payload], {}, delivery(WEBHOOKS_QUEUE, WEBHOOK_TASK)) == IngestOutcome(0, 1)
        [letter] = dead(session)
        assert letter.reason == "invalid_envelope"
        assert letter.payload["api_key"] == tokens.display_form(plaintext)


def test_stored_plus_dead_lettered_equals_received(session: Session, ingestor: Ingestor, org_and_key) -> None:
    _, _, plaintext = org_and_key
    batches = [
        [an_event(event_id=f"{b}-{i}", user_id=None if i % 3 == 0 else "u") for i in range(10)] for b in range(5)
    ]
    totals = [track(ingestor, {"api_key": plaintext, "batch": batch}) for batch in batches]
    assert sum(o.stored for o in totals) + sum(o.dead_lettered for o in totals) == 50
    assert session.scalar(select(func.count()).select_from(Event)) == sum(o.stored for o in totals)
    assert session.scalar(select(func.count()).select_from(DeadLetter)) == sum(o.dead_lettered for o in totals)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"timestamp": "0001-01-01T00:00:00+01:00"}, "out of range"),
        ({"properties": {"price": decimal.Decimal("1.5")}}, "not storable JSON"),  # kombu's "decimal" objects
        ({"properties": {"ratio": float("nan")}}, "not storable JSON"),
        ({"properties": {"text": "\ud800"}}, "not storable JSON"),
    ],
)
def test_values_no_database_can_store_are_invalid_events(
    session: Session, ingestor: Ingestor, org_and_key, change, detail: str
) -> None:
    _, _, plaintext = org_and_key
    assert track(
        ingestor, {"api_key": plaintext, "batch": [an_event(**change), an_event(event_id="fine")]}
    ) == IngestOutcome(1, 1)
    [letter] = dead(session)
    assert letter.reason == "invalid_event" and detail in letter.detail


def test_the_datetimes_and_uuids_kombu_decodes_are_stored_as_their_text(
    session: Session, ingestor: Ingestor, org_and_key
) -> None:
    _, _, plaintext = org_and_key
    when = dt.datetime(2026, 1, 1, 12, 30, tzinfo=dt.UTC)
    properties = {"when": when, "day": when.date(), "id": uuid.UUID(int=7)}
    assert track(ingestor, {"api_key": plaintext, "batch": [an_event(properties=properties)]}) == IngestOutcome(1, 0)
    stored = session.scalars(select(Event)).one()
    assert stored.properties == {
        "when": "2026-01-01T12:30:00+00:00",
        "day": "2026-01-01",
        "id": "00000000-0000-0000-0000-000000000007",
    }


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"body": '{"type": "a\\u0000b"}'}, "NUL"),
        ({"headers": {"x-thing": "a\x00b"}}, "NUL"),
        ({"received_at": "0001-01-01T00:00:00+01:00"}, "out of range"),
    ],
)
def test_webhooks_no_database_can_store_are_invalid_events(
    session: Session, ingestor: Ingestor, org_and_key, change, detail: str
) -> None:
    _, _, plaintext = org_and_key
    payload = {
        "api_key": plaintext,
        "provider": "stripe",
        "delivery_id": "d",
        "received_at": "2026-03-01T11:59:59+00:00",
        "headers": {},
        "body": "{}",
        **change,
    }
    assert ingestor.webhook([payload], {}, delivery(WEBHOOKS_QUEUE, WEBHOOK_TASK)) == IngestOutcome(0, 1)
    [letter] = dead(session)
    assert letter.reason == "invalid_event" and detail in letter.detail


def test_malformed_and_mistyped_keys_cost_the_worker_no_key_lookup(session: Session, engine: Engine) -> None:
    """Through the worker's own path (Ingestor + KeyAuthenticator), not only KeyService: the dead
    letter is written, but no statement reads api_keys."""
    factory = sessionmaker(bind=session.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False)
    ingestor = Ingestor(factory, KeyAuthenticator(pepper=None, ttl=2.0), SigningKeys(lambda: TEST_SECRET_KEY, ttl=2.0))
    good = tokens.generate(Environment.LIVE)
    mistyped = good[:-1] + ("0" if good[-1] != "0" else "1")
    statements: list[str] = []

    def record(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    def send(key: object) -> None:
        batch = [{"event": "x", "user_id": "u", "timestamp": "2026-05-01T12:00:00+00:00"}]
        delivery = Delivery(task=TRACK_TASK, queue=EVENTS_QUEUE, received_at=dt.datetime.now(dt.UTC))
        ingestor.track([{"api_key": key, "batch": batch}], {}, Source.SERVER, delivery)

    event.listen(engine, "before_cursor_execute", record)
    try:
        for key in ("not a key", 12345, None, "up_live_short", mistyped):
            send(key)
        assert statements, "the dead letters were written"
        assert not [statement for statement in statements if "api_keys" in statement]
        send(good)  # well-formed and unknown: this one is looked up
        assert [statement for statement in statements if "api_keys" in statement]
    finally:
        event.remove(engine, "before_cursor_execute", record)
    reasons = sorted(session.scalars(select(DeadLetter.reason)))
    assert reasons == sorted(["malformed_key"] * 4 + ["bad_checksum", "unknown_key"])


# The keys' counters (events.rollups): written with the batch, read by the pages.


def test_each_keys_counters_are_written_with_its_batch_and_a_redelivery_counts_no_refusal_twice(
    session: Session, ingestor: Ingestor, keys: KeyService, clock: FakeClock, org_and_key
) -> None:
    org_id, key, plaintext = org_and_key
    batch = [an_event(event_id="a"), an_event(event_id="b"), {"event": ""}]  # the last is refused
    message = Incoming(TRACK_TASK, [{"api_key": plaintext, "batch": batch}], {}, Source.SERVER, delivery())
    redelivered = dataclasses.replace(message, delivery=dataclasses.replace(message.delivery, message_id="m-1"))
    ingestor.ingest([redelivered])
    ingestor.ingest([redelivered])  # the same message again: two duplicates, its dead letter already there
    track(ingestor, {"api_key": "up_live_" + "x" * 40, "batch": [an_event()]})  # no key: no organization's
    now = utcnow()

    activity = rollups.key_activity(session, org_id, key.id, now)
    assert KeyActivity.summed(activity.day) == {"stored": 2, "duplicates": 2, "refused": 1}
    assert KeyActivity.summed(activity.month) == {"stored": 2, "duplicates": 2, "refused": 1}
    assert activity.refusals() == [(Reason.INVALID_EVENT.value, 1)]
    assert activity.last_event is not None and activity.last_refusal_reason == Reason.INVALID_EVENT.value
    assert rollups.day_counts(session, org_id, now) == {key.id: {"stored": 2, "duplicates": 2, "refused": 1}}
    assert session.scalar(select(func.count()).select_from(IngestionCount).where(IngestionCount.org_id.is_(None))) == 0

    # A deleted key's refusals are still its organization's, counted against that key.
    keys.delete(key.id, OWNER)
    clock.now += 3  # past the authenticator's cache
    assert track(ingestor, {"api_key": plaintext, "batch": [an_event(event_id="c")]}).dead_lettered == 1
    [(reason, key_id, count, _last)] = [
        found for found in rollups.refusals_by_key(session, org_id, utcnow()) if found[0] == Reason.DELETED_KEY
    ]
    assert (key_id, count) == (key.id, 1)


def test_counters_sum_by_hour_and_the_last_24_hours_leave_older_hours_out(session: Session, org_and_key) -> None:
    org_id, key, _plaintext = org_and_key
    now = dt.datetime(2026, 3, 10, 12, 30, tzinfo=dt.UTC)
    for moment, count in ((now, 3), (now, 2), (now - dt.timedelta(days=2), 7), (now - dt.timedelta(days=40), 100)):
        tally = rollups.Tally()
        tally.add(org_id, key.id, rollups.STORED, count)
        rollups.add_counts(session, tally, moment)
    [hour] = session.scalars(select(IngestionCount).where(IngestionCount.hour == rollups.hour_of(now)))
    assert (hour.count, hour.last_at) == (5, now)  # one row per key, hour and outcome
    activity = rollups.key_activity(session, org_id, key.id, now)
    assert (activity.day[rollups.STORED], activity.month[rollups.STORED]) == (5, 12)
    assert sorted(activity.daily) == [(now - dt.timedelta(days=2)).date(), now.date()]
