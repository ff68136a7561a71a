"""Erasing a person: their events and the dead letters that carry their id, on SQLite and PostgreSQL.

Events and dead letters are made by the real ingestion service, as the worker makes them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.common.factories import OWNER, add_member, make_organization
from tests.common.signing import TEST_SECRET_KEY
from userpath_client.contract import EVENTS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import utcnow
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.deadletter.services import Delivery
from userpath_worker.errors import PermissionDenied
from userpath_worker.events.erasure import IdKind, Person, erase_person
from userpath_worker.events.models import Event, Source
from userpath_worker.events.services import Ingestor
from userpath_worker.keys import tokens
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.services import KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations.models import Organization, Role
from userpath_worker.webhooks.services import SigningKeys

ERASED = Person(IdKind.USER_ID, "user-1")


@pytest.fixture
def ingestor(session: Session) -> Ingestor:
    factory = sessionmaker(bind=session.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False)
    # No cache: a deleted key is refused at once.
    return Ingestor(factory, KeyAuthenticator(pepper=None, ttl=0.0), SigningKeys(lambda: TEST_SECRET_KEY, ttl=0.0))


def an_event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "event": "Signed Up", "timestamp": utcnow().isoformat(), **fields}


def track(ingestor: Ingestor, key: str, *batch: Any) -> None:
    ingestor.track(
        [{"api_key": key, "batch": list(batch)}], {}, Source.SERVER, Delivery(TRACK_TASK, EVENTS_QUEUE, utcnow())
    )


def webhook(ingestor: Ingestor, key: str, customer: str) -> None:
    """A Stripe delivery for ``customer`` without its delivery id: dead-lettered whole."""
    body = json.dumps({"type": "invoice.paid", "data": {"object": {"object": "invoice", "customer": customer}}})
    payload = {"api_key": key, "provider": "stripe", "received_at": utcnow().isoformat(), "headers": {}, "body": body}
    ingestor.webhook([payload], {}, Delivery(WEBHOOK_TASK, WEBHOOKS_QUEUE, utcnow()))


@pytest.fixture
def acme(session: Session, keys: KeyService, ingestor: Ingestor) -> Organization:
    """An organization with user-1's events and dead letters among others', and another
    organization with a user-1 of its own."""
    acme = make_organization(session)
    _, key = keys.create(acme, "Server", OWNER)
    track(
        ingestor,
        key,
        an_event("a1", user_id="user-1"),
        an_event("a2", user_id="user-2"),
        an_event("a3", user_id="user-1", anonymous_id="anon-1"),
        an_event("a4", anonymous_id="user-1"),  # another id that happens to read the same
        an_event("bad-1", user_id="user-1", timestamp="2026-03-01T12:00:00"),  # naive: dead letter
        an_event("bad-2", user_id="user-2", timestamp="2026-03-01T12:00:00"),
        an_event("nul", user_id="user-1", properties={"x": "a\x00b"}),  # kept only as a text preview
    )
    track(ingestor, tokens.generate(Environment.LIVE), an_event("stranger", user_id="user-1"))  # a key nobody issued
    webhook(ingestor, key, "user-1")
    webhook(ingestor, key, "cus-other")
    deleted, deleted_key = keys.create(acme, "Old", OWNER)
    keys.delete(deleted.id, OWNER)
    track(ingestor, deleted_key, an_event("d1", user_id="user-2"), an_event("d2", user_id="user-1"))

    beta = make_organization(session)
    _, beta_key = keys.create(beta, "Server", OWNER)
    track(ingestor, beta_key, an_event("b1", user_id="user-1"))
    return acme


def stored(session: Session) -> set[str]:
    return set(session.scalars(select(Event.event_id)))


def dead_letters(session: Session) -> list[Any]:
    return [letter.payload for letter in session.scalars(select(DeadLetter).order_by(DeadLetter.id))]


def test_the_persons_events_and_dead_letters_go_and_everyone_elses_stay(
    session: Session, acme: Organization, ingestor: Ingestor, transaction
) -> None:
    letters_before = dead_letters(session)
    assert len(letters_before) == 7
    steps = list(erase_person(transaction, acme, OWNER, ERASED, batch=2))

    assert stored(session) == {"a2", "a4", "b1"}
    kept = dead_letters(session)
    # Gone: user-1's naive event, the Stripe delivery for user-1, the deleted key's whole batch.
    assert len(kept) == 4
    assert [letter for letter in kept if "preview" in letter and "user-1" in letter["preview"]]  # unreadable: kept
    assert [letter for letter in kept if letter.get("event_id") == "bad-2"]
    assert [letter for letter in kept if "cus-other" in letter.get("body", "")]
    assert [letter for letter in kept if letter.get("batch", [{}])[0].get("event_id") == "stranger"]  # not Acme's

    # Batches of 2 (a full batch is followed by one more look, which finds nothing): events
    # 2 of 2, then Acme's 6 dead letters searched 2 at a time.
    assert [(s.stage, s.done, s.total) for s in steps] == [
        ("events", 2, 2),
        ("events", 2, 2),
        ("dead letters", 2, 6),
        ("dead letters", 4, 6),
        ("dead letters", 6, 6),
        ("dead letters", 6, 6),
    ]
    assert (steps[-1].events, steps[-1].dead_letters) == (2, 3)
    [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "events.erased"))
    assert (entry.org_id, entry.actor, entry.detail) == (
        acme.id,
        OWNER,
        {"by": "user_id", "events": 2, "dead_letters": 3},
    )
    assert "user-1" not in json.dumps(entry.detail)

    key = KeyService(session).create(acme, "Later", OWNER)[1]
    track(ingestor, key, an_event("later", user_id="user-1"))  # sent after the erasure: stored as usual
    assert "later" in stored(session)


def test_an_anonymous_id_erases_only_what_carries_it_as_one(session: Session, acme: Organization, transaction) -> None:
    *_, result = erase_person(transaction, acme, OWNER, Person(IdKind.ANONYMOUS_ID, "user-1"))
    assert (result.events, result.dead_letters) == (1, 0)
    assert "a4" not in stored(session) and {"a1", "a3"} <= stored(session)


def test_a_dry_run_counts_and_deletes_nothing(session: Session, acme: Organization, transaction) -> None:
    before = (stored(session), dead_letters(session))
    *_, result = erase_person(transaction, acme, OWNER, ERASED, dry_run=True)
    assert (result.events, result.dead_letters) == (2, 3)
    assert (stored(session), dead_letters(session)) == before
    assert session.scalars(select(AuditEntry).where(AuditEntry.action == "events.erased")).all() == []


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, None])
def test_only_owners_erase(session: Session, acme: Organization, transaction, role: Role | None) -> None:
    if role:
        add_member(session, acme, "someone@example.com", role)
    before = (stored(session), dead_letters(session))
    with pytest.raises(PermissionDenied):
        list(erase_person(transaction, acme, "someone@example.com", ERASED))
    assert (stored(session), dead_letters(session)) == before
