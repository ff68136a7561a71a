"""Replaying dead letters: the ingestion rules, applied again to what was refused.

Replay validates stored dead letters again and stores the events of those that pass now, for
instance after a contract fix. It is idempotent twice over: a replayed dead letter is marked
and skipped next time, and storage dedupes on (org_id, event_id) anyway.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from config.settings import get_settings
from userpath_client.contract import WEBHOOK_TASK
from userpath_worker.audit import services as audit
from userpath_worker.db import Transaction, utcnow
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.deadletter.services import Delivery
from userpath_worker.errors import UserError
from userpath_worker.events import partitions, verdicts
from userpath_worker.events.models import Source
from userpath_worker.events.storage import insert_events
from userpath_worker.keys import scopes
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyIdentity
from userpath_worker.organizations.models import Organization
from userpath_worker.organizations.services import require_owner
from userpath_worker.webhooks.crypto import secret_key
from userpath_worker.webhooks.services import SigningKeys

# What a replay can fix: the content, or a signing secret added since (every webhook is verified
# again with the organization's secrets of now, so a forgery stays refused). A refused key stays
# refused; a message whose key was never known has no organization to store into.
REPLAYABLE = (
    Reason.INVALID_ENVELOPE,
    Reason.INVALID_EVENT,
    Reason.TOO_LARGE,
    Reason.INTERNAL_ERROR,
    Reason.UNSIGNED_WEBHOOK,
    Reason.BAD_SIGNATURE,
)
BATCH_SIZE = 500


@dataclass
class ReplayResult:
    examined: int = 0
    stored: int = 0  # dead letters whose events are now stored
    still_failing: int = 0


def _pending(org_id: int, reason: Reason | None, since: dt.datetime | None) -> Select[tuple[DeadLetter]]:
    query = select(DeadLetter).where(
        DeadLetter.org_id == org_id,
        DeadLetter.replayed_at.is_(None),
        DeadLetter.api_key_id.is_not(None),
        DeadLetter.reason.in_([reason.value] if reason else [r.value for r in REPLAYABLE]),
    )
    return query.where(DeadLetter.received_at >= since) if since else query


def count_replayable(session: Session, org_id: int, reason: Reason | None, since: dt.datetime | None) -> int:
    return session.scalar(select(func.count()).select_from(_pending(org_id, reason, since).subquery())) or 0


def replay_dead_letters(
    transaction: Transaction,
    organization: Organization,
    actor: str,
    reason: Reason | None = None,
    since: dt.datetime | None = None,
) -> Iterator[ReplayResult]:
    """Replay in batches, one transaction each; yields the running totals after each batch."""
    settings = get_settings()
    webhooks = _WebhookChecks(
        SigningKeys(lambda: secret_key(settings), ttl=0),  # the secrets of now, read again for each dead letter
        dt.timedelta(seconds=settings.webhook_tolerance_seconds),
    )
    if reason is not None and reason not in REPLAYABLE:
        raise UserError(f"{reason} dead letters cannot be replayed; replayable: {', '.join(REPLAYABLE)}")
    with transaction() as session:
        require_owner(session, organization, actor, "replay dead letters")
    totals = ReplayResult()
    after_id = 0
    while True:
        with transaction() as session:
            letters = list(
                session.scalars(
                    _pending(organization.id, reason, since)
                    .where(DeadLetter.id > after_id)
                    .order_by(DeadLetter.id)
                    .limit(BATCH_SIZE)
                )
            )
            if not letters:
                break
            keys = {
                key.id: key
                for key in session.scalars(
                    select(ApiKey).where(ApiKey.id.in_({letter.api_key_id for letter in letters}))
                )
            }
            now = utcnow()
            replayed: list[dict[str, Any]] = []  # the events rows of the batch, stored in one insert
            for letter in letters:
                key = keys[letter.api_key_id]
                # The key was authenticated when the message arrived; that verdict stands.
                identity = KeyIdentity(
                    key.id, key.org_id, key.environment, key.display, None, scopes=scopes.from_stored(key.scopes)
                )
                failure = _replay_payload(
                    session,
                    letter.payload,
                    identity,
                    Delivery(letter.task, letter.queue, letter.received_at),
                    webhooks,
                    replayed,
                )
                if failure is None:
                    letter.replayed_at = now
                    totals.stored += 1
                else:
                    totals.still_failing += 1
            insert_events(session, replayed)
            totals.examined += len(letters)
            after_id = letters[-1].id
        yield totals
    detail = {
        "reason": reason.value if reason else None,
        "since": since.isoformat() if since else None,
        "examined": totals.examined,
        "stored": totals.stored,
        "still_failing": totals.still_failing,
    }
    with transaction() as session:
        audit.write(session, actor, audit.Entry(organization.id, "deadletter.replayed", detail=detail))


@dataclass(frozen=True, slots=True)
class _WebhookChecks:
    signing_keys: SigningKeys
    tolerance: dt.timedelta


def _replay_payload(
    session: Session,
    payload: Any,
    identity: KeyIdentity,
    delivery: Delivery,
    webhooks: _WebhookChecks,
    replayed: list[dict[str, Any]],
) -> str | None:
    """Validate a dead letter's payload again; what passes now (after a contract fix) is added to
    ``replayed``, the rows the batch stores.

    The payload is a whole message (api_key shown in its display form) or one event of a batch;
    the key is the one that sent it, authenticated when it arrived. Returns why it still fails,
    or None when its events are to be stored (again, harmlessly: storage is idempotent).
    """
    if not isinstance(payload, dict) or "preview" in payload:
        return "only a text preview was kept"
    source = Source.WEBHOOK if delivery.task == WEBHOOK_TASK else Source.for_queue(delivery.queue)
    # Its scopes as at arrival (they never change): a message kept whole (internal_error) may not
    # have been checked yet.
    refused = verdicts.scope_refusal(payload, identity, source)
    if refused is not None:
        return refused.detail
    if source is Source.WEBHOOK:
        keys = webhooks.signing_keys.of(session, identity.org_id)
        judged = verdicts.webhook_verdicts(payload, identity, delivery, keys, webhooks.tolerance)
    else:
        envelope = payload if "batch" in payload else {"api_key": identity.display, "batch": [payload]}
        judged = verdicts.track_verdicts(envelope, identity, source, delivery)
    if judged.rejections:
        return "; ".join(rejection.detail for rejection in judged.rejections)
    partitions.ensure_days(session.connection(), {row["received_at"].date() for row in judged.rows})
    replayed.extend(judged.rows)
    return None
