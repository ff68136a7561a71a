"""Delivering a reminder: one structured log line, and a JSON POST when a webhook is set.

At most once: a delivery first claims the reminder (UPDATE ... WHERE claimed_at IS NULL, in its
own committed transaction), and only the one delivery whose claim changed the row sends it. A
failure that proves the webhook did not take the reminder (refused connection, an HTTP error
status) releases the claim so that a retry can send it. Anything else between the claim and
``delivered_at`` (a crash, no answer after the request went out) leaves the reminder claimed and
undelivered for good: it is lost rather than sent twice, and ``last_error`` says so where known.
"""

from __future__ import annotations

import enum
import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from userpath_worker.db import Transaction, utcnow
from userpath_worker.keys.models import ApiKey
from userpath_worker.organizations.models import Member, Organization, Role
from userpath_worker.rotation.models import Reminder, StaleReason

logger = logging.getLogger("userpath.rotation")

MAX_ATTEMPTS = 6  # the first try and five retries
WEBHOOK_TIMEOUT_SECONDS = 10.0


class DeliveryOutcome(enum.StrEnum):
    DELIVERED = "delivered"
    NOT_PENDING = "not_pending"  # delivered, being delivered, or out of attempts
    OBSOLETE = "obsolete"  # the key was rolled, deleted or expired since: nothing to remind
    FAILED = "failed"  # the webhook did not take it: a retry may send it
    UNKNOWN = "unknown"  # the webhook may have taken it: never sent again


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: DeliveryOutcome
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReminderMessage:
    """What a reminder says. The key appears only in its display form."""

    reminder_id: int
    org: str
    owners: list[str]
    key_id: int
    key_name: str
    display: str
    reasons: list[str]
    age_days: int
    last_used_at: str | None
    expires_at: str | None
    due_at: str

    def text(self) -> str:
        why = {
            StaleReason.TOO_OLD: f"it is {self.age_days} days old",
            StaleReason.UNUSED: (
                f"it was last used {self.last_used_at[:10]}" if self.last_used_at else "it was never used"
            ),
            StaleReason.EXPIRING_SOON: f"it expires {(self.expires_at or '')[:16].replace('T', ' ')} UTC",
        }
        reasons = "; ".join(why[StaleReason(reason)] for reason in self.reasons)
        return (
            f"API key '{self.key_name}' ({self.display}) of {self.org} should be rotated: {reasons}. "
            f"Roll it with `userpath keys roll {self.key_id} --as OWNER`, or delete it if unused."
        )

    def webhook_body(self) -> dict[str, Any]:
        """Slack-compatible (``text``) with the structured fields alongside."""
        return {"text": self.text(), **asdict(self)}


class WebhookRefused(Exception):
    """The webhook certainly did not take the request."""


class WebhookUnanswered(Exception):
    """The request went out but no answer came: the webhook may have taken it."""


def deliver(transaction: Transaction, reminder_id: int, webhook_url: str | None) -> DeliveryResult:
    with transaction() as session:
        message = claim(session, reminder_id)
    if isinstance(message, DeliveryOutcome):
        return DeliveryResult(message)
    try:
        if webhook_url:
            post_json(webhook_url, message.webhook_body(), WEBHOOK_TIMEOUT_SECONDS)
    except WebhookRefused as error:
        with transaction() as session:
            _settle(session, reminder_id, claimed_at=None, last_error=str(error))
        logger.warning("rotation reminder %d not delivered, to be retried: %s", reminder_id, error)
        return DeliveryResult(DeliveryOutcome.FAILED, str(error))
    except WebhookUnanswered as error:
        with transaction() as session:
            _settle(session, reminder_id, last_error=str(error))
        logger.error("rotation reminder %d may not have been delivered; not retried: %s", reminder_id, error)
        return DeliveryResult(DeliveryOutcome.UNKNOWN, str(error))
    with transaction() as session:
        _settle(session, reminder_id, delivered_at=utcnow(), last_error=None)
    logger.info("rotation reminder %s", json.dumps(message.webhook_body(), sort_keys=True))
    return DeliveryResult(DeliveryOutcome.DELIVERED)


def claim(session: Session, reminder_id: int) -> ReminderMessage | DeliveryOutcome:
    """Claim the reminder for this delivery alone and say what it is to send, or why not."""
    claimed = session.execute(
        update(Reminder)
        .where(Reminder.id == reminder_id, Reminder.claimed_at.is_(None), Reminder.attempts < MAX_ATTEMPTS)
        .values(claimed_at=utcnow(), attempts=Reminder.attempts + 1)
    )
    if claimed.rowcount != 1:
        return DeliveryOutcome.NOT_PENDING
    reminder = session.get_one(Reminder, reminder_id)
    key = session.get_one(ApiKey, reminder.api_key_id)
    if key.flagged_at is None:
        reminder.last_error = "not sent: the key was rolled, deleted or expired since"
        return DeliveryOutcome.OBSOLETE
    organization = session.get_one(Organization, reminder.org_id)
    owners = session.scalars(
        select(Member.email).where(Member.org_id == organization.id, Member.role == Role.OWNER).order_by(Member.email)
    )
    return ReminderMessage(
        reminder_id=reminder.id,
        org=organization.name,
        owners=list(owners),
        key_id=key.id,
        key_name=key.name,
        display=key.display,
        reasons=reminder.reasons,
        age_days=(utcnow() - key.created_at).days,
        last_used_at=key.last_used_at.isoformat() if key.last_used_at else None,
        expires_at=key.expires_at.isoformat() if key.expires_at else None,
        due_at=reminder.due_at.isoformat(),
    )


def unclaimed_reminders(transaction: Transaction, chunk: int = 1000) -> Iterator[int]:
    """Ids of the reminders no delivery holds and that have attempts left, oldest first."""
    after_id = 0
    while True:
        with transaction() as session:
            ids = list(
                session.scalars(
                    select(Reminder.id)
                    .where(Reminder.id > after_id, Reminder.claimed_at.is_(None), Reminder.attempts < MAX_ATTEMPTS)
                    .order_by(Reminder.id)
                    .limit(chunk)
                )
            )
        yield from ids
        if len(ids) < chunk:
            return
        after_id = ids[-1]


def post_json(url: str, body: dict[str, Any], timeout: float) -> None:
    """POST ``body`` as JSON; the errors name neither the URL nor the body (a webhook URL is a secret)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "userpath-worker"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise WebhookRefused(f"the webhook answered HTTP {error.code}") from None
    except urllib.error.URLError as error:
        # urllib raises URLError only while connecting and sending, before any answer.
        raise WebhookRefused(f"the webhook is unreachable ({type(error.reason).__name__})") from None
    except (OSError, http.client.HTTPException) as error:
        raise WebhookUnanswered(f"no answer from the webhook ({type(error).__name__})") from None


def _settle(session: Session, reminder_id: int, **values: Any) -> None:
    session.execute(update(Reminder).where(Reminder.id == reminder_id).values(**values))
