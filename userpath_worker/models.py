"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from userpath_worker.accounts.models import Account, Invitation, SignInThrottle, WebSession
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import Base
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event
from userpath_worker.events.rollups import IngestionCount
from userpath_worker.keys.models import ApiKey, KeyHandoff
from userpath_worker.organizations.models import Member, Organization, OrganizationRateLimit
from userpath_worker.rotation.models import Reminder, RotationPass
from userpath_worker.webhooks.models import WebhookSecret

metadata = Base.metadata

__all__ = [
    "Account",
    "ApiKey",
    "AuditEntry",
    "DeadLetter",
    "Event",
    "IngestionCount",
    "Invitation",
    "KeyHandoff",
    "Member",
    "Organization",
    "OrganizationRateLimit",
    "Reminder",
    "RotationPass",
    "SignInThrottle",
    "WebSession",
    "WebhookSecret",
    "metadata",
]
