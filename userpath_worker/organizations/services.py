from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from userpath_worker.errors import Conflict, NotFound, PermissionDenied, UserError
from userpath_worker.organizations.models import Member, Organization, Role


def normalize_email(email: str) -> str:
    """An e-mail address (a member's, an actor's) as it is stored and compared: trimmed, lower case."""
    return email.strip().lower()


def _valid_email(email: str) -> str:
    email = normalize_email(email)
    if "@" not in email or len(email) > 320:
        raise UserError(f"'{email}' is not an e-mail address")
    return email


def create_organization(session: Session, name: str, owner_email: str) -> Organization:
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise UserError("an organization name must be 1 to 100 characters")
    owner_email = _valid_email(owner_email)
    organization = Organization(name=name)
    try:
        with session.begin_nested():
            session.add(organization)
            session.flush()
    except IntegrityError:
        raise Conflict(f"organization '{name}' already exists; pick another name") from None
    session.add(Member(org_id=organization.id, email=owner_email, role=Role.OWNER))
    session.flush()
    return organization


def get_organization(session: Session, name: str) -> Organization:
    organization = session.scalar(select(Organization).where(Organization.name == name))
    if organization is None:
        raise NotFound(f"organization '{name}' not found; create it with `userpath orgs create`")
    return organization


def add_member(session: Session, organization: Organization, email: str, role: Role) -> Member:
    email = _valid_email(email)
    member = Member(org_id=organization.id, email=email, role=role)
    try:
        with session.begin_nested():
            session.add(member)
            session.flush()
    except IntegrityError:
        raise Conflict(f"{email} is already a member of '{organization.name}'") from None
    return member


def require_owner(session: Session, organization: Organization, actor_email: str) -> Member:
    """The acting member, if they are an owner of the organization; PermissionDenied otherwise."""
    member = session.scalar(
        select(Member).where(Member.org_id == organization.id, Member.email == normalize_email(actor_email))
    )
    if member is None or member.role is not Role.OWNER:
        raise PermissionDenied(
            f"{actor_email} is not an owner of '{organization.name}'; only owners can create, roll or delete keys"
        )
    return member
