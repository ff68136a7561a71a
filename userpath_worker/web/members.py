"""Settings → Members (owners): who belongs with which role; invite, change a role, remove.

The organizations and accounts services decide: owners only, and never without an owner.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, request, url_for

from userpath_worker.accounts import services as accounts
from userpath_worker.errors import UserError
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Role
from userpath_worker.web.context import Membership, actor, db, form_status, owner, page, shown_once, signed_in, web

blueprint = Blueprint("members", __name__)

ROLES = [(role.value, role.value.capitalize()) for role in Role]


@blueprint.get("/orgs/<int:org_id>/settings/members")
@signed_in
def list_members(org_id: int) -> Any:
    return _members_page(owner(org_id, "manage members"))


@blueprint.post("/orgs/<int:org_id>/settings/members")
@signed_in
def invite(org_id: int) -> Any:
    current = owner(org_id, "manage members")
    email, role = request.form.get("email", ""), request.form.get("role", "")
    if role not in dict(ROLES):
        return _members_page(current, "choose a role: owner, admin or member", 400, email=email)
    try:
        token = accounts.invite(db(), current.organization, email, Role(role), actor())
    except UserError as error:
        return _members_page(current, str(error), form_status(error), email=email, role=role)
    db().commit()
    link = accounts.invitation_url(web().settings.web_base_url, token)
    return shown_once(page("invitation_shown.html", 201, email=organizations.normalize_email(email), link=link))


@blueprint.post("/orgs/<int:org_id>/settings/members/<int:member_id>/role")
@signed_in
def change_role(org_id: int, member_id: int) -> Any:
    current = owner(org_id, "manage members")
    member = organizations.get_member(db(), current.organization, member_id)
    role = request.form.get("new_role", "")
    if role not in dict(ROLES):
        return _members_page(current, "choose a role: owner, admin or member", 400)
    try:
        organizations.change_role(db(), current.organization, member.email, Role(role), actor())
    except UserError as error:
        return _members_page(current, str(error), form_status(error))
    db().commit()
    flash(f"{member.email} is now {member.role.value}.")
    return redirect(url_for("members.list_members", org_id=org_id), 303)


@blueprint.route("/orgs/<int:org_id>/settings/members/<int:member_id>/remove", methods=["GET", "POST"])
@signed_in
def remove(org_id: int, member_id: int) -> Any:
    current = owner(org_id, "manage members")
    member = organizations.get_member(db(), current.organization, member_id)
    if request.method == "GET":
        return page("remove_member.html", member=member)
    try:
        organizations.remove_member(db(), current.organization, member.email, actor())
    except UserError as error:
        return page("remove_member.html", form_status(error), member=member, error=str(error))
    db().commit()
    flash(f"Removed {member.email} from {current.organization.name}.")
    return redirect(url_for("members.list_members", org_id=org_id), 303)


def _members_page(current: Membership, error: str | None = None, status: int = 200, **invited: str) -> Any:
    found = organizations.members_of(db(), current.organization)
    joined = {member.id: accounts.account_has_password(db(), member.email) for member in found}
    return page(
        "members.html",
        status,
        members=found,
        joined=joined,
        roles=ROLES,
        error=error,
        invited={"email": "", "role": Role.MEMBER.value, **invited},
    )
