"""Erasing a person (the right to erasure): their events and the dead letters that carry their id.

In batches, one transaction each, so that a large erasure holds no long lock and can show its
progress. Nothing stops the person's later events: those are stored as usual. The audit row says
how much was erased and by which kind of id, never the id itself.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from userpath_client.contract import WEBHOOK_TASK
from userpath_worker.audit import services as audit
from userpath_worker.db import Transaction
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events import normalizers
from userpath_worker.events.models import Event
from userpath_worker.organizations.models import Organization
from userpath_worker.organizations.services import require_owner

BATCH_SIZE = 1000
OWNERS_WORK = "erase people's data"  # what only owners may do, as the refusal says it


class IdKind(enum.StrEnum):
    USER_ID = "user_id"
    ANONYMOUS_ID = "anonymous_id"


@dataclass(frozen=True, slots=True)
class Person:
    """Whom to erase: an event's ``user_id`` or its ``anonymous_id``."""

    kind: IdKind
    id: str


@dataclass(frozen=True, slots=True)
class ErasureProgress:
    """Where an erasure is, after one batch. The last one yielded is the result."""

    stage: str  # "events", then "dead letters"
    done: int  # of the stage's total: events erased, then dead letters searched
    total: int
    events: int  # events erased so far (found, in a dry run)
    dead_letters: int  # dead letters erased so far (found, in a dry run)


def count_events(session: Session, org_id: int, person: Person) -> int:
    return session.scalar(select(func.count()).select_from(Event).where(*_events_of(org_id, person))) or 0


def erase_person(
    transaction: Transaction,
    organization: Organization,
    actor: str,
    person: Person,
    dry_run: bool = False,
    batch: int = BATCH_SIZE,
) -> Iterator[ErasureProgress]:
    """Delete the person's events, then the organization's dead letters that carry their id (only
    count them, with ``dry_run``), yielding the progress after each batch and at least once a
    stage; owners only. Audit-logged, unless it was a dry run."""
    with transaction() as session:
        require_owner(session, organization, actor, OWNERS_WORK)
        events_total = count_events(session, organization.id, person)
        letters_total = (
            session.scalar(select(func.count()).select_from(DeadLetter).where(DeadLetter.org_id == organization.id))
            or 0
        )

    events = 0
    after_id = 0
    while True:
        with transaction() as session:
            ids = list(
                session.scalars(
                    select(Event.id)
                    .where(*_events_of(organization.id, person), Event.id > after_id)
                    .order_by(Event.id)
                    .limit(batch)
                )
            )
            if ids and not dry_run:
                session.execute(delete(Event).where(Event.id.in_(ids)))
        events += len(ids)
        yield ErasureProgress("events", events, events_total, events, 0)
        if len(ids) < batch:
            break
        after_id = ids[-1]

    searched = letters = 0
    after_id = 0
    while True:
        with transaction() as session:
            found = session.execute(
                select(DeadLetter.id, DeadLetter.task, DeadLetter.payload)
                .where(DeadLetter.org_id == organization.id, DeadLetter.id > after_id)
                .order_by(DeadLetter.id)
                .limit(batch)
            ).all()
            carrying = [letter_id for letter_id, task, payload in found if carries(payload, task, person)]
            if carrying and not dry_run:
                session.execute(delete(DeadLetter).where(DeadLetter.id.in_(carrying)))
        searched += len(found)
        letters += len(carrying)
        yield ErasureProgress("dead letters", searched, letters_total, events, letters)
        if len(found) < batch:
            break
        after_id = found[-1].id

    if not dry_run:
        detail = {"by": person.kind.value, "events": events, "dead_letters": letters}
        with transaction() as session:
            audit.write(session, actor, audit.Entry(organization.id, "events.erased", detail=detail))


def carries(payload: Any, task: str | None, person: Person) -> bool:
    """Whether a dead letter's payload names the person: a whole ``userpath.track`` message (any
    event of its batch), one event of a batch, or a webhook whose normalizer finds their user id.
    A text preview (kept when the message was not storable JSON) has no fields to read, and is left
    alone: only a person's id in its field counts, never the same text elsewhere."""
    if not isinstance(payload, dict):
        return False
    if task == WEBHOOK_TASK:
        return person.kind is IdKind.USER_ID and _webhook_user_id(payload) == person.id
    batch = payload.get("batch")
    events = batch if isinstance(batch, list) else [payload]
    return any(isinstance(event, dict) and event.get(person.kind.value) == person.id for event in events)


def _webhook_user_id(payload: dict[str, Any]) -> str | None:
    """The user id the webhook's event would have had, as ``verdicts.webhook_verdicts`` finds it."""
    provider, headers, body = payload.get("provider"), payload.get("headers"), payload.get("body")
    if not (isinstance(provider, str) and isinstance(headers, dict) and isinstance(body, str)):
        return None
    try:
        parsed: Any = json.loads(body)
    except (ValueError, RecursionError):
        parsed = body  # not JSON: the normalizers get the text, as at ingestion
    return normalizers.normalize(provider, headers, parsed).user_id


def _events_of(org_id: int, person: Person) -> tuple[ColumnElement[bool], ...]:
    column = Event.user_id if person.kind is IdKind.USER_ID else Event.anonymous_id
    return Event.org_id == org_id, column == person.id
