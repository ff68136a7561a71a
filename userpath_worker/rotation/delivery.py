"""Delivering a reminder: one structured log line, an e-mail to the organization's owners when
``USERPATH_SMTP_URL`` is set, and a JSON POST when a webhook is set. Each carries the link to the key
on the web pages' API Keys page.

At most once: a delivery first claims the reminder (UPDATE ... WHERE claimed_at IS NULL, in its
own committed transaction), and only the one delivery whose claim changed the row sends it. A
failure that proves the webhook did not take the reminder (refused connection, an HTTP error
status) releases the claim so that a retry can send it. Anything else between the claim and
``delivered_at`` (a crash, no answer after the request went out) leaves the reminder claimed and
undelivered for good: it is lost rather than sent twice, and ``last_error`` says so where known.

The e-mail is treated as the webhook is, and goes first: one message to every owner, in one SMTP
transaction. Refused (no connection, the login, the sender, every owner or the message refused)
releases the claim and is retried with the same backoff and attempts; no answer to the message
leaves the reminder claimed for good (UNKNOWN). Once the server took it, ``emailed_at`` is
committed before the webhook is posted, so a retry after the webhook refused sends the webhook
alone and the owners are never e-mailed twice. Owners the server refused while it took the others
are not retried (that would e-mail the others again): the log and ``last_error`` say how many.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from config.settings import Settings
from userpath_worker import mail, web_links
from userpath_worker.db import Transaction, utcnow
from userpath_worker.keys.models import ApiKey
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization
from userpath_worker.rotation.models import Reminder, StaleReason
from userpath_worker.webhook_post import WebhookRefused, WebhookUnanswered, post_json

logger = logging.getLogger("userpath.rotation")

MAX_ATTEMPTS = 6  # the first try and five retries
WEBHOOK_TIMEOUT_SECONDS = 10.0
SMTP_TIMEOUT_SECONDS = 10.0
DEFAULT_WEB_BASE_URL: str = Settings.model_fields["web_base_url"].default


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
    url: str  # the key's row on its organization's API Keys page

    def why(self) -> list[str]:
        """Each reason in words."""
        words = {
            StaleReason.TOO_OLD: f"it is {self.age_days} days old",
            StaleReason.UNUSED: (
                f"it was last used {self.last_used_at[:10]}" if self.last_used_at else "it was never used"
            ),
            StaleReason.EXPIRING_SOON: f"it expires {(self.expires_at or '')[:16].replace('T', ' ')} UTC",
        }
        return [words[StaleReason(reason)] for reason in self.reasons]

    def text(self) -> str:
        return (
            f"API key '{self.key_name}' ({self.display}) of {self.org} should be rotated: {'; '.join(self.why())}. "
            f"Roll it, or delete it if it is unused: {self.url}"
        )

    def webhook_body(self) -> dict[str, Any]:
        """Slack-compatible (``text``) with the structured fields alongside."""
        return {"text": self.text(), **asdict(self)}

    def email(self, sender: str) -> EmailMessage:
        """The plain-text e-mail to the owners: which key, why, and the link; never the key itself."""
        subject = f"Rotate API key '{self.key_name}' ({self.display}) of {self.org}"
        reasons = "".join(f"- {reason}\n" for reason in self.why())
        body = (
            f"The API key '{self.key_name}' ({self.display}) of {self.org} should be rotated:\n"
            f"{reasons}\n"
            "Roll it (its replacement is shown to you once), or delete it if it is unused,\n"
            "on the organization's API Keys page:\n"
            f"{self.url}\n\n"
            f"You get this e-mail because you are an owner of {self.org}.\n"
        )
        # A name may hold a line break, which a header must not.
        return mail.plain_text(sender, self.owners, " ".join(subject.split()), body)


@dataclass(frozen=True, slots=True)
class Claimed:
    message: ReminderMessage
    emailed: bool  # an earlier attempt e-mailed the owners already


def deliver_as_configured(transaction: Transaction, reminder_id: int, settings: Settings) -> DeliveryResult:
    """``deliver`` through the webhook, the SMTP server and the base URL ``settings`` give."""
    return deliver(
        transaction,
        reminder_id,
        settings.reminder_webhook_url,
        web_base_url=settings.web_base_url,
        mail_to_owners=mail.Mail.from_settings(settings),
    )


def deliver(
    transaction: Transaction,
    reminder_id: int,
    webhook_url: str | None,
    *,
    web_base_url: str = DEFAULT_WEB_BASE_URL,
    mail_to_owners: mail.Mail | None = None,
) -> DeliveryResult:
    with transaction() as session:
        claimed = claim(session, reminder_id, web_base_url)
    if isinstance(claimed, DeliveryOutcome):
        return DeliveryResult(claimed)
    message, partly = claimed.message, None
    try:
        if mail_to_owners and message.owners and not claimed.emailed:
            sent = mail.send(mail_to_owners.server, message.email(mail_to_owners.sender), SMTP_TIMEOUT_SECONDS)
            with transaction() as session:
                _settle(session, reminder_id, emailed_at=utcnow())
            if sent.refused:
                partly = f"the SMTP server refused {len(sent.refused)} of {len(message.owners)} owners"
                logger.warning("rotation reminder %d: %s; not retried", reminder_id, partly)
        if webhook_url:
            post_json(webhook_url, message.webhook_body(), WEBHOOK_TIMEOUT_SECONDS)
    except (WebhookRefused, mail.MailRefused) as error:
        with transaction() as session:
            _settle(session, reminder_id, claimed_at=None, last_error=str(error))
        logger.warning("rotation reminder %d not delivered, to be retried: %s", reminder_id, error)
        return DeliveryResult(DeliveryOutcome.FAILED, str(error))
    except (WebhookUnanswered, mail.MailUnanswered) as error:
        with transaction() as session:
            _settle(session, reminder_id, last_error=str(error))
        logger.error("rotation reminder %d may not have been delivered; not retried: %s", reminder_id, error)
        return DeliveryResult(DeliveryOutcome.UNKNOWN, str(error))
    with transaction() as session:
        _settle(session, reminder_id, delivered_at=utcnow(), last_error=partly)
    logger.info("rotation reminder %s", json.dumps(message.webhook_body(), sort_keys=True))
    return DeliveryResult(DeliveryOutcome.DELIVERED)


def claim(session: Session, reminder_id: int, web_base_url: str = DEFAULT_WEB_BASE_URL) -> Claimed | DeliveryOutcome:
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
    owners = organizations.owner_emails(session, organization)
    message = ReminderMessage(
        reminder_id=reminder.id,
        org=organization.name,
        owners=owners,
        key_id=key.id,
        key_name=key.name,
        display=key.display,
        reasons=reminder.reasons,
        age_days=(utcnow() - key.created_at).days,
        last_used_at=key.last_used_at.isoformat() if key.last_used_at else None,
        expires_at=key.expires_at.isoformat() if key.expires_at else None,
        due_at=reminder.due_at.isoformat(),
        url=web_links.key_url(web_base_url, organization.id, key.id),
    )
    return Claimed(message, emailed=reminder.emailed_at is not None)


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


def _settle(session: Session, reminder_id: int, **values: Any) -> None:
    session.execute(update(Reminder).where(Reminder.id == reminder_id).values(**values))
