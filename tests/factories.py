"""Small factories: build the rows a test needs in one call, with sensible defaults."""

from __future__ import annotations

import itertools

from sqlalchemy.orm import Session

from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization, Role

_sequence = itertools.count(1)

OWNER = "owner@example.com"


def make_organization(session: Session, name: str | None = None, owner: str = OWNER) -> Organization:
    return organizations.create_organization(session, name or f"Org {next(_sequence)}", owner)


def add_member(session: Session, organization: Organization, email: str, role: Role) -> None:
    organizations.add_member(session, organization, email, role)
