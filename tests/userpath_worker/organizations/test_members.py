"""Member changes in the organizations service: owners only, never without an owner, audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.common.factories import OWNER, add_member, make_organization
from userpath_worker.audit.models import AuditEntry
from userpath_worker.errors import Conflict, NotFound, PermissionDenied
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Role


def test_an_owner_changes_a_role_and_it_is_audited(session: Session) -> None:
    organization = make_organization(session)
    add_member(session, organization, "member@example.com", Role.MEMBER)
    member = organizations.change_role(session, organization, " Member@Example.com", Role.ADMIN, OWNER)
    assert member.role is Role.ADMIN
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "member.role_changed")).one()
    assert (entry.actor, entry.org_id) == (OWNER, organization.id)
    assert entry.detail == {"email": "member@example.com", "from": "member", "to": "admin"}


def test_the_same_role_again_changes_and_audits_nothing(session: Session) -> None:
    organization = make_organization(session)
    organizations.change_role(session, organization, OWNER, Role.OWNER, OWNER)
    assert session.scalars(select(AuditEntry.action)).all() == []


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_only_owners_change_roles_or_remove_members(session: Session, role: Role) -> None:
    organization = make_organization(session)
    add_member(session, organization, "someone@example.com", role)
    with pytest.raises(PermissionDenied):
        organizations.change_role(session, organization, "someone@example.com", Role.OWNER, "someone@example.com")
    with pytest.raises(PermissionDenied):
        organizations.remove_member(session, organization, OWNER, "someone@example.com")


def test_the_last_owner_stays(session: Session) -> None:
    organization = make_organization(session)
    with pytest.raises(Conflict, match="last owner"):
        organizations.change_role(session, organization, OWNER, Role.MEMBER, OWNER)
    with pytest.raises(Conflict, match="last owner"):
        organizations.remove_member(session, organization, OWNER, OWNER)
    add_member(session, organization, "second@example.com", Role.OWNER)
    organizations.remove_member(session, organization, OWNER, OWNER)  # another owner remains
    assert [(m.email, m.role) for m in organizations.members_of(session, organization)] == [
        ("second@example.com", Role.OWNER)
    ]
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "member.removed")).one()
    assert entry.detail == {"email": OWNER, "role": "owner"}


def test_members_of_another_organization_are_not_found(session: Session) -> None:
    mine = make_organization(session)
    theirs = make_organization(session, owner="other@example.com")
    [their_owner] = organizations.members_of(session, theirs)
    with pytest.raises(NotFound):
        organizations.get_member(session, mine, their_owner.id)
    with pytest.raises(NotFound):
        organizations.remove_member(session, mine, "other@example.com", OWNER)
    assert organizations.get_member(session, theirs, their_owner.id) is their_owner


def test_members_are_listed_owners_first_then_by_email(session: Session) -> None:
    organization = make_organization(session)
    add_member(session, organization, "b@example.com", Role.MEMBER)
    add_member(session, organization, "a@example.com", Role.ADMIN)
    add_member(session, organization, "c@example.com", Role.OWNER)
    listed = [member.email for member in organizations.members_of(session, organization)]
    assert listed == ["c@example.com", OWNER, "a@example.com", "b@example.com"]
