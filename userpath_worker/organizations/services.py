from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config.settings import Settings
from userpath_worker.audit import services as audit
from userpath_worker.db import utcnow
from userpath_worker.emails import normalize_email, valid_email
from userpath_worker.errors import Conflict, NotFound, PermissionDenied, UserError
from userpath_worker.organizations.models import Member, Organization, OrganizationRateLimit, Role

__all__ = [
    "add_member",
    "change_role",
    "create_organization",
    "get_member",
    "get_organization",
    "list_organizations",
    "members_of",
    "normalize_email",
    "remove_member",
    "require_owner",
]


MAX_RETENTION_DAYS = 36_500  # a hundred years: as good as forever
# The bounds of an organization's rate at the edge (those of USERPATH_EDGE_EVENTS_PER_SECOND and
# USERPATH_EDGE_BURST): far beyond what one installation takes, but numbers Redis' Lua adds exactly.
MAX_EVENTS_PER_SECOND = 10_000_000
MAX_BURST = 100_000_000


@dataclass(frozen=True)
class RateLimit:
    """An organization's token bucket at the edge: it holds ``burst`` events and refills at
    ``events_per_second``."""

    events_per_second: int
    burst: int


def create_organization(session: Session, name: str, owner_email: str) -> Organization:
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise UserError("an organization name must be 1 to 100 characters")
    owner_email = valid_email(owner_email)
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
        closest = _closest_name(session, name)
        if closest is not None:
            raise NotFound(f"organization '{name}' not found; did you mean '{closest}'?")
        raise NotFound(f"organization '{name}' not found; create it with `userpath orgs create`")
    return organization


def _closest_name(session: Session, name: str) -> str | None:
    """The existing organization name most like ``name`` (case aside), if any is close enough."""
    names = {existing.casefold(): existing for existing in session.scalars(select(Organization.name))}
    found = difflib.get_close_matches(name.casefold(), names, n=1, cutoff=0.6)
    return names[found[0]] if found else None


def list_organizations(session: Session) -> list[tuple[Organization, int]]:
    """Every organization by name, with its number of members."""
    query = (
        select(Organization, func.count(Member.id))
        .outerjoin(Member, Member.org_id == Organization.id)
        .group_by(Organization.id)
        .order_by(Organization.name)
    )
    return [(organization, members) for organization, members in session.execute(query)]


def set_event_retention(session: Session, organization: Organization, days: int | None) -> None:
    """Keep the organization's events ``days`` days, or None: the default (USERPATH_EVENT_RETENTION_DAYS)."""
    if days is not None and not 1 <= days <= MAX_RETENTION_DAYS:
        raise UserError(f"--days must be from 1 to {MAX_RETENTION_DAYS}")
    organization.event_retention_days = days


def set_rate_limit(session: Session, organization: Organization, limit: RateLimit | None) -> None:
    """Give the organization its own rate at the edge, or None: the default (USERPATH_EDGE_*). Every
    edge process applies it within USERPATH_AUTH_CACHE_SECONDS."""
    if limit is not None and not 1 <= limit.events_per_second <= MAX_EVENTS_PER_SECOND:
        raise UserError(f"--events-per-second must be from 1 to {MAX_EVENTS_PER_SECOND}")
    if limit is not None and not 1 <= limit.burst <= MAX_BURST:
        raise UserError(f"--burst must be from 1 to {MAX_BURST}")
    own = session.get(OrganizationRateLimit, organization.id)
    if limit is None:
        if own is not None:
            session.delete(own)
    elif own is None:
        session.add(OrganizationRateLimit(org_id=organization.id, **dataclasses.asdict(limit)))
    else:
        own.events_per_second, own.burst, own.updated_at = limit.events_per_second, limit.burst, utcnow()
    session.flush()


def default_rate_limit(settings: Settings) -> RateLimit | None:
    """The rate of an organization without its own: USERPATH_EDGE_EVENTS_PER_SECOND (0: no limit)
    and USERPATH_EDGE_BURST."""
    if not settings.edge_events_per_second:
        return None
    return RateLimit(settings.edge_events_per_second, settings.edge_burst)


def own_rate_limit(session: Session, org_id: int) -> RateLimit | None:
    """The organization's own rate at the edge, or None when the default applies."""
    row = session.execute(
        select(OrganizationRateLimit.events_per_second, OrganizationRateLimit.burst).where(
            OrganizationRateLimit.org_id == org_id
        )
    ).first()
    return RateLimit(row.events_per_second, row.burst) if row else None


def add_member(session: Session, organization: Organization, email: str, role: Role) -> Member:
    email = valid_email(email)
    member = Member(org_id=organization.id, email=email, role=role)
    try:
        with session.begin_nested():
            session.add(member)
            session.flush()
    except IntegrityError:
        raise Conflict(f"{email} is already a member of '{organization.name}'") from None
    return member


def require_owner(session: Session, organization: Organization, actor_email: str, doing: str) -> Member:
    """The acting member, if they are an owner of the organization; PermissionDenied otherwise,
    whose line says that only owners can ``doing``."""
    member = session.scalar(
        select(Member).where(Member.org_id == organization.id, Member.email == normalize_email(actor_email))
    )
    if member is None or member.role is not Role.OWNER:
        raise PermissionDenied(f"{actor_email} is not an owner of '{organization.name}'; only owners can {doing}")
    return member


def owner_emails(session: Session, organization: Organization) -> list[str]:
    """The e-mails of the organization's owners, in order: whom reminders and warnings go to."""
    return list(
        session.scalars(
            select(Member.email)
            .where(Member.org_id == organization.id, Member.role == Role.OWNER)
            .order_by(Member.email)
        )
    )


def members_of(session: Session, organization: Organization) -> list[Member]:
    """Everyone in the organization, owners first, then by e-mail."""
    order = {Role.OWNER: 0, Role.ADMIN: 1, Role.MEMBER: 2}
    found = session.scalars(select(Member).where(Member.org_id == organization.id).order_by(Member.email))
    return sorted(found, key=lambda member: order[member.role])


def get_member(session: Session, organization: Organization, member_id: int) -> Member:
    """A member of this organization by id; NotFound for an id of another organization's member too."""
    member = session.get(Member, member_id)
    if member is None or member.org_id != organization.id:
        raise NotFound(f"member {member_id} not found in '{organization.name}'")
    return member


def change_role(session: Session, organization: Organization, email: str, role: Role, actor: str) -> Member:
    """Give a member another role (owners only); an organization always keeps an owner."""
    require_owner(session, organization, actor, "change members' roles")
    member = _member_for_change(session, organization, email)
    previous = member.role
    if previous is role:
        return member
    if previous is Role.OWNER:
        _keep_an_owner(session, organization, member)
    member.role = role
    session.flush()
    detail = {"email": member.email, "from": previous.value, "to": role.value}
    audit.write(session, actor, audit.Entry(organization.id, "member.role_changed", detail=detail))
    return member


def remove_member(session: Session, organization: Organization, email: str, actor: str) -> Member:
    """Take a member out of the organization (owners only); never its last owner."""
    require_owner(session, organization, actor, "remove members")
    member = _member_for_change(session, organization, email)
    if member.role is Role.OWNER:
        _keep_an_owner(session, organization, member)
    session.delete(member)
    session.flush()
    detail = {"email": member.email, "role": member.role.value}
    audit.write(session, actor, audit.Entry(organization.id, "member.removed", detail=detail))
    return member


def _member_for_change(session: Session, organization: Organization, email: str) -> Member:
    member = session.scalar(
        select(Member).where(Member.org_id == organization.id, Member.email == normalize_email(email))
    )
    if member is None:
        raise NotFound(f"{normalize_email(email)} is not a member of '{organization.name}'")
    return member


def _keep_an_owner(session: Session, organization: Organization, leaving: Member) -> None:
    """Conflict unless an owner other than ``leaving`` remains."""
    # Lock the organization's owners (in one order: no deadlock), so that two owners demoting each
    # other at once cannot both see the other one still there. PostgreSQL re-reads a locked row
    # that changed, so the second one finds a single owner left; SQLite serializes writers anyway.
    owners = session.scalars(
        select(Member.id)
        .where(Member.org_id == organization.id, Member.role == Role.OWNER)
        .order_by(Member.id)
        .with_for_update()
    ).all()
    if not set(owners) - {leaving.id}:
        raise Conflict(
            f"{leaving.email} is the last owner of '{organization.name}'; make another member an owner first"
        )
