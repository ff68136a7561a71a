"""Settings → Members (owners): who belongs with which role, the pending invitations; invite, cancel
an invitation, change a role, remove, and (with an SMTP server) e-mail a member a reset link.

The organizations and accounts services decide: owners only, and never without an owner. The page
says the same for every e-mail: nothing on it tells whether an address has an account elsewhere.
With USERPATH_SMTP_URL set, links go to the invitee by e-mail and are never shown here.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, request, url_for

from userpath_worker.accounts import delivery
from userpath_worker.accounts import services as accounts
from userpath_worker.emails import normalize_email
from userpath_worker.errors import UserError
from userpath_worker.mail import MailRefused, MailUnanswered
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Role
from userpath_worker.web.context import Membership, actor, db, form_status, owner, page, shown_once, signed_in, web

blueprint = Blueprint("members", __name__)

ROLES = [(role.value, role.value.capitalize()) for role in Role]
MANAGE = "manage members"


@blueprint.get("/orgs/<int:org_id>/settings/members")
@signed_in
def list_members(org_id: int) -> Any:
    return _members_page(owner(org_id, MANAGE))


@blueprint.post("/orgs/<int:org_id>/settings/members")
@signed_in
def invite(org_id: int) -> Any:
    current = owner(org_id, MANAGE)
    email, role = request.form.get("email", ""), request.form.get("role", "")
    if role not in dict(ROLES):
        return _members_page(current, "choose a role: owner, admin or member", 400, email=email)
    settings = web().settings
    emailed = settings.smtp_server is not None
    try:
        token = accounts.invite(db(), current.organization, email, Role(role), actor(), emailed=emailed)
    except UserError as error:
        return _members_page(current, str(error), form_status(error), email=email, role=role)
    db().commit()
    email = normalize_email(email)
    link = accounts.invitation_url(settings.web_base_url, token)
    if not emailed:
        return shown_once(page("invitation_shown.html", 201, email=email, link=link))
    try:
        delivery.send_invitation(settings, email, current.organization.name, Role(role), actor(), link)
    except (MailRefused, MailUnanswered) as error:
        return _mail_failed(current, email, error)
    return page("invitation_sent.html", 201, email=email)


@blueprint.post("/orgs/<int:org_id>/settings/members/invitations/<int:invitation_id>/cancel")
@signed_in
def cancel_invitation(org_id: int, invitation_id: int) -> Any:
    current = owner(org_id, MANAGE)
    cancelled = accounts.cancel_invitation(db(), current.organization, invitation_id, actor())
    db().commit()
    flash(f"Cancelled the invitation of {cancelled.email}.")
    return redirect(url_for("members.list_members", org_id=org_id), 303)


@blueprint.post("/orgs/<int:org_id>/settings/members/<int:member_id>/reset-password")
@signed_in
def reset_password(org_id: int, member_id: int) -> Any:
    """E-mail the member a link to set a new password: only with an SMTP server (a link shown here
    would let an owner take over an account that may be in other organizations too)."""
    current = owner(org_id, MANAGE)
    member = organizations.get_member(db(), current.organization, member_id)
    settings = web().settings
    emailed = settings.smtp_server is not None
    token = accounts.reset_password(db(), current.organization, member.email, actor(), emailed=emailed)
    db().commit()
    link = accounts.invitation_url(settings.web_base_url, token)
    try:
        delivery.send_reset(settings, member.email, current.organization.name, actor(), link)
    except (MailRefused, MailUnanswered) as error:
        return _mail_failed(current, member.email, error)
    flash(f"E-mailed {member.email} a link to set a new password.")
    return redirect(url_for("members.list_members", org_id=org_id), 303)


@blueprint.post("/orgs/<int:org_id>/settings/members/<int:member_id>/role")
@signed_in
def change_role(org_id: int, member_id: int) -> Any:
    current = owner(org_id, MANAGE)
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
    current = owner(org_id, MANAGE)
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


def _mail_failed(current: Membership, email: str, error: Exception) -> Any:
    """The link could not be e-mailed: say so (never showing it); a new one replaces it."""
    message = f"The link for {email} could not be e-mailed ({error}); invite again (or send again) to retry."
    return _members_page(current, message, 502)


def _members_page(current: Membership, error: str | None = None, status: int = 200, **invited: str) -> Any:
    return page(
        "members.html",
        status,
        members=organizations.members_of(db(), current.organization),
        invitations=accounts.pending_invitations(db(), current.organization),
        emails_links=web().settings.smtp_server is not None,
        roles=ROLES,
        error=error,
        invited={"email": "", "role": Role.MEMBER.value, **invited},
    )
