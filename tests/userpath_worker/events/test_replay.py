"""Dead-letter replay (after a contract fix) and retention, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.common.databases import savepoints
from tests.common.factories import OWNER, add_member, make_organization
from userpath_client.contract import EVENTS_QUEUE, JOBS_QUEUE, TRACK_TASK, WEBHOOK_TASK, WEBHOOKS_QUEUE
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import utcnow
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.deadletter.services import purge_dead_letters
from userpath_worker.errors import PermissionDenied, UserError
from userpath_worker.events.models import Event, Source
from userpath_worker.events.replay import replay_dead_letters
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations.models import Role


@pytest.fixture
def transaction(session: Session):
    return savepoints(session)


def letter(session: Session, key, reason: Reason, payload: Any, **fields: Any) -> DeadLetter:
    row = DeadLetter(
        org_id=key.org_id,
        api_key_id=key.id,
        reason=reason.value,
        detail="before the fix",
        payload=payload,
        queue=fields.pop("queue", EVENTS_QUEUE),
        task=fields.pop("task", TRACK_TASK),
        received_at=fields.pop("received_at", utcnow()),
        **fields,
    )
    session.add(row)
    session.flush()
    return row


def event(**overrides: Any) -> dict[str, Any]:
    return {"event": "Signed Up", "user_id": "u1", "timestamp": "2026-03-01T11:59:00+00:00", **overrides}


def run(transaction, organization, actor: str = OWNER, **options: Any):
    results = list(replay_dead_letters(transaction, organization, actor, **options))
    return results[-1] if results else None


def test_what_passes_now_is_stored_once_and_the_rest_stays(session: Session, keys: KeyService, transaction) -> None:
    organization = make_organization(session)
    key, _ = keys.create(organization, "Server", OWNER)
    fixed_event = letter(session, key, Reason.INVALID_EVENT, event(event_id="e1"), queue=JOBS_QUEUE)
    fixed_envelope = letter(
        session, key, Reason.INVALID_ENVELOPE, {"api_key": key.display, "batch": [event(event_id="e2")]}
    )
    webhook = letter(
        session,
        key,
        Reason.INVALID_ENVELOPE,
        {
            "api_key": key.display,
            "provider": "stripe",
            "delivery_id": "d1",
            "received_at": "2026-03-01T11:59:00+00:00",
            "headers": {},
            "body": '{"type": "invoice.paid"}',
        },
        queue=WEBHOOKS_QUEUE,
        task=WEBHOOK_TASK,
    )
    broken = letter(session, key, Reason.INVALID_EVENT, event(user_id=None))
    preview = letter(session, key, Reason.TOO_LARGE, {"preview": "{...", "bytes": 2_000_000})
    refused_key = letter(session, key, Reason.DELETED_KEY, {"api_key": key.display, "batch": [event(event_id="e3")]})

    result = run(transaction, organization)
    assert (result.examined, result.stored, result.still_failing) == (5, 3, 2)
    stored = {e.event_id: e for e in session.scalars(select(Event))}
    assert len(stored) == 3 and {"e1", "e2"} <= set(stored)
    assert stored["e1"].source is Source.JOB and stored["e2"].source is Source.SERVER
    assert {e.name for e in stored.values()} == {"Signed Up", "stripe.invoice.paid"}
    assert all(d.replayed_at is not None for d in (fixed_event, fixed_envelope, webhook))
    assert all(d.replayed_at is None for d in (broken, preview, refused_key))

    again = run(transaction, organization)
    assert (again.examined, again.stored) == (2, 0)
    assert session.scalar(select(func.count()).select_from(Event)) == 3
    audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "deadletter.replayed")).all()
    assert [a.detail["stored"] for a in audit] == [3, 0]


def test_filters_by_reason_and_time(session: Session, keys: KeyService, transaction) -> None:
    organization = make_organization(session)
    key, _ = keys.create(organization, "Server", OWNER)
    letter(session, key, Reason.INVALID_EVENT, event(event_id="old"), received_at=utcnow() - dt.timedelta(days=3))
    letter(session, key, Reason.INVALID_EVENT, event(event_id="new"))
    letter(session, key, Reason.INVALID_ENVELOPE, {"api_key": key.display, "batch": [event(event_id="env")]})
    result = run(transaction, organization, reason=Reason.INVALID_EVENT, since=utcnow() - dt.timedelta(days=1))
    assert (result.examined, result.stored) == (1, 1)
    assert list(session.scalars(select(Event.event_id))) == ["new"]
    with pytest.raises(UserError, match="cannot be replayed"):
        run(transaction, organization, reason=Reason.UNKNOWN_KEY)


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, None])
def test_only_owners_replay(session: Session, keys: KeyService, transaction, role: Role | None) -> None:
    organization = make_organization(session)
    if role:
        add_member(session, organization, "someone@example.com", role)
    with pytest.raises(PermissionDenied):
        run(transaction, organization, actor="someone@example.com")


def test_purge_deletes_only_what_is_older(session: Session, keys: KeyService, transaction) -> None:
    organization = make_organization(session)
    key, _ = keys.create(organization, "Server", OWNER)
    for days in (40, 31, 29, 1):
        letter(session, key, Reason.INVALID_EVENT, event(), received_at=utcnow() - dt.timedelta(days=days))
    assert purge_dead_letters(transaction, dt.timedelta(days=30), batch=1) == 2
    assert session.scalar(select(func.count()).select_from(DeadLetter)) == 2
