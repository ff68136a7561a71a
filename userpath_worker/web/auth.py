"""Signing in and out, invitation links, and the way in (``/``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, redirect, request, session, url_for

from userpath_worker.accounts import services as accounts
from userpath_worker.accounts.models import Account
from userpath_worker.errors import UserError
from userpath_worker.web.context import SESSION_TOKEN, db, memberships, page, signed_in
from userpath_worker.web.security import is_local_path

blueprint = Blueprint("auth", __name__)


@blueprint.get("/")
@signed_in
def index() -> Any:
    """The first organization's keys page."""
    found = memberships()
    if not found:
        return page("no_organization.html")
    return redirect(url_for("keys.list_keys", org_id=found[0].organization.id))


@blueprint.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    target = request.values.get("next")
    target = target if is_local_path(target) else None  # a link elsewhere is ignored
    if request.method == "GET":
        if g.account is not None:
            return redirect(target or url_for("auth.index"))
        return page("sign_in.html", next=target)
    email = request.form.get("email", "")
    try:
        account = accounts.sign_in(db(), email, request.form.get("password", ""), _client_address())
    except accounts.TooManyAttempts as error:
        db().commit()
        return (*page("sign_in.html", 429, next=target, email=email, error=str(error)), _retry_after(error))
    except accounts.InvalidCredentials as error:
        db().commit()  # the failure counts towards the throttle
        return page("sign_in.html", 401, next=target, email=email, error=str(error))
    _start_session(account)
    return redirect(target or url_for("auth.index"))


@blueprint.post("/sign-out")
def sign_out() -> Any:
    token = session.get(SESSION_TOKEN)
    if isinstance(token, str):
        accounts.end_session(db(), token)
        db().commit()
    session.clear()
    return redirect(url_for("auth.sign_in", signed_out=1))


@blueprint.route("/invitations/<token>", methods=["GET", "POST"])
def invitation(token: str) -> Any:
    """A one-time link: the member sets a password (or, already having one, confirms it) and is signed in."""
    try:
        email = accounts.invitation_email(db(), token)
        existing = accounts.invitation_confirms_password(db(), token)
    except accounts.InvalidInvitation as error:
        return page("invitation_invalid.html", 404, message=str(error))
    values = {"token": token, "email": email, "existing": existing}
    if request.method == "GET":
        return page("invitation.html", **values)
    password = request.form.get("password", "")
    if not existing and password != request.form.get("password_confirmation", ""):
        return page("invitation.html", 400, **values, error="the two passwords differ; type the same one twice")
    try:
        account = accounts.accept_invitation(db(), token, password, _client_address())
    except accounts.InvalidInvitation as error:
        return page("invitation_invalid.html", 404, message=str(error))
    except accounts.TooManyAttempts as error:
        db().commit()
        return (*page("invitation.html", 429, **values, error=str(error)), _retry_after(error))
    except UserError as error:  # a weak password, or not this account's password
        db().commit()  # a wrong current password counts towards the throttle, as at sign-in
        return page("invitation.html", 400, **values, error=str(error))
    _start_session(account)
    return redirect(url_for("auth.index"))


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _retry_after(error: accounts.TooManyAttempts) -> dict[str, str]:
    return {"Retry-After": str(error.retry_after_minutes * 60)}


def _start_session(account: Account) -> None:
    """Sign ``account`` in with a new session: nothing of the session before (a token someone
    planted, the anonymous CSRF secret) carries over."""
    previous = session.get(SESSION_TOKEN)
    if isinstance(previous, str):
        accounts.end_session(db(), previous)
    session.clear()
    session[SESSION_TOKEN] = accounts.start_session(db(), account)
    db().commit()
