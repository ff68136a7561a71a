"""Small factories: build the rows and messages a test needs in one call, with sensible defaults."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.common.signing import TEST_KEY_PEPPER
from userpath_worker.accounts import services as accounts
from userpath_worker.accounts.models import Account
from userpath_worker.keys.services import KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization, Role
from userpath_worker.organizations.services import RateLimit

_sequence = itertools.count(1)

OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"


def make_organization(session: Session, name: str | None = None, owner: str = OWNER) -> Organization:
    return organizations.create_organization(session, name or f"Org {next(_sequence)}", owner)


def add_member(session: Session, organization: Organization, email: str, role: Role) -> None:
    organizations.add_member(session, organization, email, role)


def make_account(
    session: Session, organization: Organization, email: str = OWNER, role: Role = Role.OWNER, password: str = PASSWORD
) -> Account:
    """A member of ``organization`` (added if new) who accepted an invitation with ``password``."""
    token = accounts.invite(session, organization, email, role, accounts.OPERATOR)
    return accounts.accept_invitation(session, token, password)


def new_key(engine: Engine, environment: Environment = Environment.LIVE) -> tuple[int, int, str]:
    """(org id, key id, plaintext) of a fresh key, committed."""
    with Session(engine) as session, session.begin():
        organization = organizations.create_organization(session, f"Org {uuid.uuid4().hex[:8]}", OWNER)
        key, plaintext = KeyService(session, TEST_KEY_PEPPER).create(
            organization, "App X Production Server", OWNER, environment
        )
        return organization.id, key.id, plaintext


def new_limited_key(engine: Engine, events_per_second: int, burst: int) -> tuple[int, str]:
    """(org id, key) of a new organization limited at the edge to ``events_per_second`` and ``burst``."""
    org_id, _, key = new_key(engine)
    with Session(engine) as session, session.begin():
        organization = session.get_one(Organization, org_id)
        organizations.set_rate_limit(session, organization, RateLimit(events_per_second, burst))
    return org_id, key


def now() -> str:
    """Now as a producer writes it: ISO-8601 with the UTC offset."""
    return dt.datetime.now(dt.UTC).isoformat()


def envelope(key: str, count: int, prefix: str, **event_fields: Any) -> dict[str, Any]:
    """A ``userpath.track`` envelope of ``count`` events with the ids ``{prefix}-0``, ``{prefix}-1`` ..."""
    return {
        "api_key": key,
        "sent_at": now(),
        "batch": [
            {
                "event_id": f"{prefix}-{n}",
                "event": "Page Viewed",
                "user_id": f"user-{n}",
                "timestamp": now(),
                **event_fields,
            }
            for n in range(count)
        ],
    }


def event_row(org_id: int, event_id: str, received_at: dt.datetime) -> dict[str, Any]:
    """An events row as ``events.verdicts`` makes it, for ``events.storage.insert_events``."""
    return {
        "event_json": b'{"event":"Signed Up","properties":{"plan":"pro"}}',
        "org_id": org_id,
        "api_key_id": 1,
        "environment": "live",
        "source": "server",
        "event_id": event_id,
        "name": "Signed Up",
        "user_id": None,
        "anonymous_id": None,
        "timestamp": received_at,
        "sent_at": None,
        "received_at": received_at,
        "occurred_at": received_at,
        "verified": None,
    }
