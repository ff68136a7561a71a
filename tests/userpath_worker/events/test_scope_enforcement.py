"""The worker enforces key scopes (issue 21, item 6): a message whose key may not send its source,
or its provider's webhooks, is dead-lettered as ``scope_denied`` in the key's organization, before
anything else about it is judged; replay keeps the refusal. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.common.clock import FakeClock
from tests.common.factories import OWNER, make_organization
from tests.common.signing import TEST_SECRET_KEY, stripe_headers
from userpath_client.contract import EVENTS_QUEUE, JOBS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.deadletter.services import Delivery
from userpath_worker.events.models import Event, Source
from userpath_worker.events.replay import replay_dead_letters
from userpath_worker.events.services import Ingestor, IngestOutcome
from userpath_worker.keys import tokens
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations.models import Organization
from userpath_worker.webhooks import services as webhook_secrets
from userpath_worker.webhooks.crypto import SecretBox
from userpath_worker.webhooks.services import SigningKeys

RECEIVED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def ingestor(session: Session) -> Ingestor:
    factory = sessionmaker(bind=session.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False)
    return Ingestor(
        factory,
        KeyAuthenticator(pepper=None, ttl=2.0, clock=FakeClock()),
        SigningKeys(lambda: TEST_SECRET_KEY, ttl=0),
    )


def key_with(session: Session, keys: KeyService, *chosen: str) -> tuple[int, int, str]:
    """(org id, key id, plaintext) of a key limited to ``chosen``."""
    organization = make_organization(session)
    key, plaintext = keys.create(organization, "Scoped", OWNER, scopes=frozenset(chosen))
    return organization.id, key.id, plaintext


def envelope(plaintext: str, event_id: str) -> dict[str, Any]:
    event = {"event_id": event_id, "event": "Refund Issued", "user_id": "u1", "timestamp": "2026-03-01T11:59:00Z"}
    return {"api_key": plaintext, "batch": [event]}


def webhook(plaintext: str, provider: Any, delivery_id: str = "evt_1", **fields: Any) -> dict[str, Any]:
    return {
        "api_key": plaintext,
        "provider": provider,
        "delivery_id": delivery_id,
        "received_at": "2026-03-01T11:59:59+00:00",
        "headers": {},
        "body": '{"type": "invoice.paid"}',
        **fields,
    }


def send_track(ingestor: Ingestor, message: dict[str, Any], source: Source) -> IngestOutcome:
    queue = JOBS_QUEUE if source is Source.JOB else EVENTS_QUEUE
    return ingestor.track([message], {}, source, Delivery(TRACK_TASK, queue, RECEIVED))


def send_webhook(ingestor: Ingestor, message: dict[str, Any]) -> IngestOutcome:
    return ingestor.webhook([message], {}, Delivery(WEBHOOK_TASK, WEBHOOKS_QUEUE, RECEIVED))


def letters(session: Session) -> list[DeadLetter]:
    return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def test_a_track_only_key_stores_server_events_and_its_jobs_and_webhooks_are_scope_denied(
    session: Session, ingestor: Ingestor, keys: KeyService
) -> None:
    org_id, key_id, plaintext = key_with(session, keys, "track")
    assert send_track(ingestor, envelope(plaintext, "server-1"), Source.SERVER) == IngestOutcome(1, 0)
    denied_job = send_track(ingestor, envelope(plaintext, "job-1"), Source.JOB)
    denied_webhook = send_webhook(ingestor, webhook(plaintext, "stripe"))
    assert denied_job == denied_webhook == IngestOutcome(0, 1)
    assert denied_job.reasons == {"scope_denied": 1} and denied_job.org_id == org_id
    assert [e.event_id for e in session.scalars(select(Event))] == ["server-1"]
    job, hook = letters(session)
    assert (job.reason, job.org_id, job.api_key_id, job.queue) == ("scope_denied", org_id, key_id, JOBS_QUEUE)
    assert job.detail == "API key may not send job events: its scopes are track"
    assert hook.detail == "API key may not send stripe webhooks: its scopes are track"
    assert job.payload["api_key"] == hook.payload["api_key"] == tokens.display_form(plaintext)  # never the key


def test_one_providers_webhook_key_sends_that_providers_webhooks_only(
    session: Session, ingestor: Ingestor, keys: KeyService
) -> None:
    _, _, plaintext = key_with(session, keys, "webhooks:stripe")
    assert send_webhook(ingestor, webhook(plaintext, "stripe")) == IngestOutcome(1, 0)
    refused = [
        send_webhook(ingestor, webhook(plaintext, "github")),
        send_webhook(ingestor, webhook(plaintext, "Stripe")),  # not the provider's name: not permitted either
        send_webhook(ingestor, webhook(plaintext, ["stripe"])),
        send_webhook(ingestor, {key: value for key, value in webhook(plaintext, "x").items() if key != "provider"}),
        send_track(ingestor, envelope(plaintext, "leaked-1"), Source.SERVER),
        send_track(ingestor, envelope(plaintext, "leaked-2"), Source.JOB),
    ]
    assert all(outcome.reasons == {"scope_denied": 1} for outcome in refused), refused
    assert [letter.detail for letter in letters(session)] == [
        "API key may not send github webhooks: its scopes are webhooks:stripe",
        "API key may not send Stripe webhooks: its scopes are webhooks:stripe",
        "API key may not send webhook events: its scopes are webhooks:stripe",
        "API key may not send webhook events: its scopes are webhooks:stripe",
        "API key may not send server events: its scopes are webhooks:stripe",
        "API key may not send job events: its scopes are webhooks:stripe",
    ]
    assert len(list(session.scalars(select(Event)))) == 1


def test_scopes_are_judged_before_the_signature_and_the_contents(
    session: Session, ingestor: Ingestor, keys: KeyService
) -> None:
    """A key that may not send a provider's webhooks learns nothing about its signatures; an
    envelope it may not send is refused whatever is wrong inside it."""
    org_id, _, plaintext = key_with(session, keys, "webhooks:github")
    organization = session.get_one(Organization, org_id)
    webhook_secrets.add_secret(session, SecretBox(TEST_SECRET_KEY), organization, "stripe", "whsec_test", OWNER)
    body = '{"type": "invoice.paid"}'
    signed = webhook(plaintext, "stripe", body=body, headers=stripe_headers(["whsec_test"], body, RECEIVED))
    assert send_webhook(ingestor, signed).reasons == {"scope_denied": 1}
    assert send_webhook(ingestor, webhook(plaintext, "stripe", received_at="yesterday")).reasons == {"scope_denied": 1}
    assert send_track(ingestor, {"api_key": plaintext, "batch": "nonsense"}, Source.SERVER).reasons == {
        "scope_denied": 1
    }


def test_an_unrestricted_key_is_judged_without_a_scope_lookup(
    session: Session, ingestor: Ingestor, keys: KeyService
) -> None:
    organization = make_organization(session)
    _, plaintext = keys.create(organization, "Everything", OWNER)
    assert send_track(ingestor, envelope(plaintext, "s"), Source.SERVER) == IngestOutcome(1, 0)
    assert send_track(ingestor, envelope(plaintext, "j"), Source.JOB) == IngestOutcome(1, 0)
    assert send_webhook(ingestor, webhook(plaintext, "github")) == IngestOutcome(1, 0)
    assert ingestor.authenticator.misses == 1  # the scopes came with the cached identity


def test_replay_keeps_the_scopes_of_the_key_that_sent_a_message(
    session: Session, keys: KeyService, transaction
) -> None:
    """A message kept whole for replay (``internal_error``) is judged again with its key's scopes:
    a replay cannot store what the key was never allowed to send."""
    org_id, key_id, plaintext = key_with(session, keys, "webhooks:stripe")
    display = tokens.display_form(plaintext)
    for event_id, queue, task, payload in (
        ("track", EVENTS_QUEUE, TRACK_TASK, envelope(display, "kept-1")),
        ("github", WEBHOOKS_QUEUE, WEBHOOK_TASK, webhook(display, "github")),
        ("stripe", WEBHOOKS_QUEUE, WEBHOOK_TASK, webhook(display, "stripe")),
    ):
        session.add(
            DeadLetter(
                org_id=org_id,
                api_key_id=key_id,
                reason=Reason.INTERNAL_ERROR.value,
                detail=event_id,
                payload=json.loads(json.dumps(payload)),
                queue=queue,
                task=task,
                received_at=RECEIVED,
            )
        )
    session.flush()
    organization = session.get_one(Organization, org_id)
    *_, result = replay_dead_letters(transaction, organization, OWNER)
    assert (result.examined, result.stored, result.still_failing) == (3, 1, 2)
    assert [event.name for event in session.scalars(select(Event))] == ["stripe.invoice.paid"]
