"""The worker's policy: an organization's webhooks from a provider it has a secret for must verify;
forgeries are dead-lettered with their reason, genuine ones stored as verified; replay verifies
again. On SQLite and PostgreSQL, through the Ingestor the worker uses."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from tests.common.clock import FakeClock
from tests.common.databases import savepoints, table_dump
from tests.common.factories import OWNER, make_organization
from tests.common.signing import (
    GITHUB_SECRET,
    STRIPE_SECRET,
    TEST_SECRET_KEY,
    github_headers,
    standard_webhooks_headers,
    stripe_headers,
    webhook_message,
)
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.deadletter.services import Delivery
from userpath_worker.events.models import Event, Source
from userpath_worker.events.replay import replay_dead_letters
from userpath_worker.events.services import Ingestor, IngestOutcome
from userpath_worker.events.verdicts import derived_event_id
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations.models import Organization
from userpath_worker.webhooks import services as webhook_secrets
from userpath_worker.webhooks.crypto import SecretBox
from userpath_worker.webhooks.services import SigningKeys

RECEIVED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
INVOICE = '{"id":"evt_1","type":"invoice.paid","data":{"object":{"customer":"cus_1"}}}'
PUSH = '{"ref":"refs/heads/main","sender":{"login":"octocat"}}'
FORGER_SECRET = "whsec_forged_0000000000000000000000000000"
SVIX_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ingestor(session: Session, clock: FakeClock) -> Ingestor:
    savepoints = sessionmaker(bind=session.connection(), join_transaction_mode="create_savepoint")
    signing = SigningKeys(lambda: TEST_SECRET_KEY, ttl=2.0, clock=clock)
    return Ingestor(savepoints, KeyAuthenticator(pepper=None, ttl=2.0), signing)


@pytest.fixture
def acme(session: Session) -> Organization:
    return make_organization(session)


@pytest.fixture
def api_key(session: Session, keys: KeyService, acme: Organization) -> str:
    return keys.create(acme, "Webhook receiver", OWNER)[1]


def add_secret(session: Session, organization: Organization, provider: str, secret: str) -> None:
    webhook_secrets.add_secret(session, SecretBox(TEST_SECRET_KEY), organization, provider, secret, OWNER)


def send(ingestor: Ingestor, message: dict[str, object], worker_clock: dt.datetime = RECEIVED) -> IngestOutcome:
    """``worker_clock``: when the worker takes the message (late, behind a backlog)."""
    return ingestor.webhook([message], {}, Delivery(WEBHOOK_TASK, WEBHOOKS_QUEUE, worker_clock))


def stored(session: Session) -> list[Event]:
    return list(session.scalars(select(Event).order_by(Event.id)))


def dead(session: Session) -> list[tuple[str, str]]:
    return [(d.reason, d.detail) for d in session.scalars(select(DeadLetter).order_by(DeadLetter.id))]


def stripe(api_key: str, secrets: list[str], delivery_id: str = "evt_1", **changes: object) -> dict[str, object]:
    """A Stripe delivery of event ``delivery_id``: Stripe puts its event id in the body it signs."""
    body = INVOICE.replace('"evt_1"', f'"{delivery_id}"')
    message = webhook_message(api_key, "stripe", body, stripe_headers(secrets, body, RECEIVED), RECEIVED, delivery_id)
    return message | changes


def github(api_key: str, secret: str, delivery_id: str = "gh-1", **changes: object) -> dict[str, object]:
    message = webhook_message(api_key, "github", PUSH, github_headers(secret, PUSH), RECEIVED, delivery_id)
    return message | changes


def test_genuine_webhooks_are_stored_as_verified_without_their_signature_headers(
    session: Session, ingestor: Ingestor, acme: Organization, api_key: str
) -> None:
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    add_secret(session, acme, "github", GITHUB_SECRET)
    assert send(ingestor, stripe(api_key, [STRIPE_SECRET])) == IngestOutcome(1, 0)
    assert send(ingestor, github(api_key, GITHUB_SECRET)) == IngestOutcome(1, 0)
    invoice, push = stored(session)
    assert (invoice.name, invoice.user_id, invoice.verified) == ("stripe.invoice.paid", "cus_1", True)
    assert (push.name, push.user_id, push.verified) == ("github.push", "github:octocat", True)
    assert invoice.context["webhook"]["headers"] == {}
    assert push.context["webhook"]["headers"] == {"X-GitHub-Event": "push"}


def test_forged_and_unsigned_webhooks_are_dead_lettered_with_the_check_that_failed(
    session: Session, engine: Engine, ingestor: Ingestor, acme: Organization, api_key: str
) -> None:
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    add_secret(session, acme, "github", GITHUB_SECRET)
    unsigned = webhook_message(api_key, "stripe", INVOICE, {}, RECEIVED, "evt_2")
    tampered = stripe(api_key, [STRIPE_SECRET], "evt_3", body=INVOICE.replace("cus_1", "cus_2"))
    for message in (
        stripe(api_key, [FORGER_SECRET]),
        unsigned,
        tampered,
        github(api_key, "guessed"),
        webhook_message(api_key, "github", PUSH, {"X-GitHub-Event": "push"}, RECEIVED, "gh-2"),
    ):
        assert send(ingestor, message) == IngestOutcome(0, 1)
    assert stored(session) == []
    assert dead(session) == [
        ("bad_signature", "no v1 signature of Stripe-Signature matches a signing secret"),
        ("unsigned_webhook", "no Stripe-Signature header"),
        ("bad_signature", "no v1 signature of Stripe-Signature matches a signing secret"),
        ("bad_signature", "X-Hub-Signature-256 matches no signing secret"),
        ("unsigned_webhook", "no X-Hub-Signature-256 header"),
    ]
    dump = table_dump(session, engine)
    for secret in (STRIPE_SECRET, GITHUB_SECRET, STRIPE_SECRET.removeprefix("whsec_")):
        assert secret not in dump


def test_without_a_secret_webhooks_are_stored_unverified_and_track_events_are_neither(
    session: Session, ingestor: Ingestor, api_key: str
) -> None:
    assert send(ingestor, stripe(api_key, [FORGER_SECRET])) == IngestOutcome(1, 0)
    event = {"event": "Signed Up", "user_id": "u1", "timestamp": RECEIVED.isoformat()}
    ingestor.track(
        [{"api_key": api_key, "batch": [event]}], {}, Source.SERVER, Delivery(TRACK_TASK, EVENTS_QUEUE, RECEIVED)
    )
    assert [(e.source.value, e.verified) for e in stored(session)] == [("webhook", False), ("server", None)]


def test_the_tolerance_is_measured_against_received_at_not_the_worker_clock(
    session: Session, ingestor: Ingestor, acme: Organization, api_key: str
) -> None:
    """A backlog of a day: the delivery was signed and received at 12:00, the worker reaches it the
    next day, and it still verifies. A delivery signed a day before it was received does not."""
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    assert send(ingestor, stripe(api_key, [STRIPE_SECRET]), worker_clock=RECEIVED + dt.timedelta(days=1)) == (
        IngestOutcome(1, 0)
    )
    replayed_later = stripe(
        api_key, [STRIPE_SECRET], "evt_old", received_at=(RECEIVED + dt.timedelta(days=1)).isoformat()
    )
    assert send(ingestor, replayed_later) == IngestOutcome(0, 1)
    assert dead(session) == [
        ("bad_signature", "Stripe-Signature's t is 86400 s from received_at; the tolerance is 300 s")
    ]


def test_during_a_rotation_deliveries_signed_with_either_secret_verify(
    session: Session, ingestor: Ingestor, acme: Organization, api_key: str
) -> None:
    rotated = "whsec_test_rotated_secret_00000000000001"
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    add_secret(session, acme, "stripe", rotated)
    assert send(ingestor, stripe(api_key, [STRIPE_SECRET], "evt_a")) == IngestOutcome(1, 0)
    assert send(ingestor, stripe(api_key, [rotated], "evt_b")) == IngestOutcome(1, 0)
    assert [e.verified for e in stored(session)] == [True, True]


def test_a_secret_added_or_removed_is_seen_within_the_cache_time(
    session: Session, ingestor: Ingestor, clock: FakeClock, acme: Organization, api_key: str
) -> None:
    assert send(ingestor, stripe(api_key, [FORGER_SECRET], "evt_a")) == IngestOutcome(1, 0)  # no secret yet
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    clock.now += 2.0
    assert send(ingestor, stripe(api_key, [FORGER_SECRET], "evt_b")) == IngestOutcome(0, 1)
    [secret] = webhook_secrets.list_secrets(session, acme)
    webhook_secrets.remove_secret(session, secret.id, OWNER)
    clock.now += 2.0
    assert send(ingestor, stripe(api_key, [FORGER_SECRET], "evt_c")) == IngestOutcome(1, 0)
    assert [e.verified for e in stored(session)] == [False, False]


def test_a_standard_webhooks_message_id_becomes_the_delivery_id(
    session: Session, ingestor: Ingestor, acme: Organization, api_key: str
) -> None:
    add_secret(session, acme, "svix", SVIX_SECRET)
    headers = standard_webhooks_headers(SVIX_SECRET, "msg_2Lh9", INVOICE, RECEIVED)
    assert send(ingestor, webhook_message(api_key, "svix", INVOICE, headers, RECEIVED, "receiver-id")) == (
        IngestOutcome(1, 0)
    )
    [event] = stored(session)
    assert event.event_id == derived_event_id("webhook", "svix", "msg_2Lh9")
    assert event.context["webhook"]["delivery_id"] == "msg_2Lh9"
    assert set(event.context["webhook"]["headers"]) == {"webhook-id", "webhook-timestamp"}


@pytest.fixture
def transaction(session: Session):
    return savepoints(session)


def test_replay_verifies_again_with_the_secrets_of_now(
    session: Session,
    ingestor: Ingestor,
    clock: FakeClock,
    acme: Organization,
    api_key: str,
    transaction,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stripe rolled the secret before the owner added the new one: its deliveries were refused.
    Once it is added, replay stores them, verified; a forgery stays refused."""
    monkeypatch.setenv("USERPATH_SECRET_KEY", TEST_SECRET_KEY)
    rolled = "whsec_test_rotated_secret_00000000000001"
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    assert send(ingestor, stripe(api_key, [rolled], "evt_a")) == IngestOutcome(0, 1)
    assert send(ingestor, stripe(api_key, [FORGER_SECRET], "evt_b")) == IngestOutcome(0, 1)
    assert send(ingestor, webhook_message(api_key, "stripe", INVOICE, {}, RECEIVED, "evt_c")) == IngestOutcome(0, 1)

    [result] = list(replay_dead_letters(transaction, acme, OWNER))
    assert (result.examined, result.stored, result.still_failing) == (3, 0, 3)
    add_secret(session, acme, "stripe", rolled)
    [result] = list(replay_dead_letters(transaction, acme, OWNER))
    assert (result.examined, result.stored, result.still_failing) == (3, 1, 2)
    [event] = stored(session)
    assert (event.event_id, event.verified) == (derived_event_id("webhook", "stripe", "evt_a"), True)


def test_secrets_stored_under_another_secret_key_refuse_the_webhooks_and_log_no_secret(
    session: Session, acme: Organization, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker with the wrong USERPATH_SECRET_KEY cannot read the secrets: the provider's webhooks
    are dead-lettered (replayable once the key is right), never stored unverified, never an error."""
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    savepoints = sessionmaker(bind=session.connection(), join_transaction_mode="create_savepoint")
    wrong = Ingestor(savepoints, KeyAuthenticator(pepper=None, ttl=2.0), SigningKeys(lambda: "another key", ttl=2.0))
    assert send(wrong, stripe(api_key, [STRIPE_SECRET])) == IngestOutcome(0, 1)
    [(reason, detail)] = dead(session)
    assert reason == "bad_signature" and "USERPATH_SECRET_KEY is not the key they were stored with" in detail
    assert f"of organization {acme.id} is not usable" in caplog.text and "cannot be decrypted" in caplog.text
    assert STRIPE_SECRET not in caplog.text and STRIPE_SECRET.removeprefix("whsec_") not in caplog.text


def test_a_forged_signature_no_database_can_store_is_still_one_dead_letter(
    session: Session, ingestor: Ingestor, acme: Organization, api_key: str
) -> None:
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    message = webhook_message(api_key, "stripe", INVOICE, {"Stripe-Signature": "t=1,v1=\ud800\x00"}, RECEIVED)
    assert send(ingestor, message) == IngestOutcome(0, 1)
    assert [reason for reason, _ in dead(session)] == ["bad_signature"]


@pytest.mark.parametrize("with_secret", [False, True])
def test_a_header_no_database_can_store_is_an_invalid_event_not_an_error(
    session: Session, ingestor: Ingestor, acme: Organization, api_key: str, with_secret: bool
) -> None:
    """A lone surrogate in a header that is not the signature: refused as an invalid event (after
    the signature verified, when there is a secret), never an exception in the batch."""
    if with_secret:
        add_secret(session, acme, "stripe", STRIPE_SECRET)
    message = stripe(api_key, [STRIPE_SECRET])
    message["headers"] = {**message["headers"], "X-Note": "\ud800"}  # type: ignore[dict-item]
    assert send(ingestor, message) == IngestOutcome(0, 1)
    assert dead(session) == [("invalid_event", "the webhook is not storable JSON (a lone surrogate)")]


def test_a_github_delivery_replayed_a_year_later_with_a_new_delivery_id_is_a_duplicate(
    session: Session, ingestor: Ingestor, acme: Organization, api_key: str
) -> None:
    """Seen: GitHub signs the body alone, and X-GitHub-Delivery (which no signature covers) made a
    year-old delivery sent again a second verified event. The body is the delivery's identity."""
    add_secret(session, acme, "github", GITHUB_SECRET)
    assert send(ingestor, github(api_key, GITHUB_SECRET, "gh-1")) == IngestOutcome(1, 0)
    a_year_later = RECEIVED + dt.timedelta(days=365)
    replayed = github(api_key, GITHUB_SECRET, "gh-forged-new-id", received_at=a_year_later.isoformat())
    assert send(ingestor, replayed, worker_clock=a_year_later) == IngestOutcome(0, 0, duplicates=1)
    [event] = stored(session)
    assert event.context["webhook"]["delivery_id"] == "gh-1"


def test_a_stripe_delivery_replayed_within_the_tolerance_with_another_delivery_id_is_a_duplicate(
    session: Session, ingestor: Ingestor, acme: Organization, api_key: str
) -> None:
    """Stripe's event id is in the body it signs: that, not the receiver's delivery id, is the event id."""
    add_secret(session, acme, "stripe", STRIPE_SECRET)
    assert send(ingestor, stripe(api_key, [STRIPE_SECRET], "evt_real")) == IngestOutcome(1, 0)
    replayed = stripe(api_key, [STRIPE_SECRET], "evt_real") | {"delivery_id": "another-id"}
    assert send(ingestor, replayed) == IngestOutcome(0, 0, duplicates=1)
    [event] = stored(session)
    assert (event.event_id, event.context["webhook"]["delivery_id"]) == (
        derived_event_id("webhook", "stripe", "evt_real"),
        "evt_real",
    )


def test_a_key_in_a_webhook_s_delivery_id_is_stored_in_its_display_form(
    session: Session, engine: Engine, ingestor: Ingestor, api_key: str
) -> None:
    assert send(ingestor, webhook_message(api_key, "acme", "{}", {}, RECEIVED, f"x-{api_key}")) == IngestOutcome(1, 0)
    assert api_key not in table_dump(session, engine)
    [event] = stored(session)
    assert event.context["webhook"]["delivery_id"].startswith("x-up_live_")
