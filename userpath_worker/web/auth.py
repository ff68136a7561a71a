"""Signing in and out, one-time links, and the way in (``/``).

A browser that signs in to an account (or sets its password with a link) is remembered by a signed
cookie of its own, ``userpath_browser``, which outlives sign-out: the sign-in throttle counts that
browser's failures apart from everyone else's, so nobody's guessing locks the owner's own browser
out (``accounts/throttle.py``). It is no credential: without the password it opens nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, request, session, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from userpath_worker.accounts import services as accounts
from userpath_worker.accounts.models import Account, Purpose
from userpath_worker.emails import normalize_email
from userpath_worker.errors import UserError
from userpath_worker.web.context import SESSION_TOKEN, db, memberships, page, signed_in, web
from userpath_worker.web.security import is_local_path

blueprint = Blueprint("auth", __name__)

BROWSER_COOKIE = "userpath_browser"
BROWSER_REMEMBERED = dt.timedelta(days=90)


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
        account = accounts.sign_in(
            db(), email, request.form.get("password", ""), _client_address(), _known_browser(email)
        )
    except accounts.TooManyAttempts as error:
        db().commit()
        return (*page("sign_in.html", 429, next=target, email=email, error=str(error)), _retry_after(error))
    except accounts.InvalidCredentials as error:
        db().commit()  # the failure counts towards the throttle
        return page("sign_in.html", 401, next=target, email=email, error=str(error))
    return _signed_in(account, target or url_for("auth.index"))


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
    """A one-time link: join an organization (setting a first password, or typing the account's
    own, as the link may: ``accounts.services``), or set a new password; then signed in."""
    try:
        form = accounts.link_form(db(), token)
    except accounts.InvalidInvitation as error:
        return page("invitation_invalid.html", 404, message=str(error))
    values = {"token": token, "form": form}
    if request.method == "GET":
        return page("invitation.html", **values)
    try:
        account = accounts.accept_invitation(
            db(),
            token,
            request.form.get("password", ""),
            request.form.get("password_confirmation"),
            _client_address(),
            _known_browser(form.email),
        )
    except accounts.InvalidInvitation as error:
        return page("invitation_invalid.html", 404, message=str(error))
    except accounts.TooManyAttempts as error:
        db().commit()
        return (*page("invitation.html", 429, **values, error=str(error)), _retry_after(error))
    except accounts.InvalidCredentials as error:
        db().commit()  # a wrong password counts towards the throttle, as at sign-in
        return page("invitation.html", 401, **values, error=str(error))
    except UserError as error:  # a weak password, or two that differ
        return page("invitation.html", 400, **values, error=str(error))
    joined = url_for("keys.list_keys", org_id=form.org_id) if form.purpose is Purpose.INVITE else None
    return _signed_in(account, joined or url_for("auth.index"))


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _retry_after(error: accounts.TooManyAttempts) -> dict[str, str]:
    return {"Retry-After": str(error.retry_after_minutes * 60)}


def _signed_in(account: Account, target: str) -> Response:
    """Sign ``account`` in with a new session (nothing of the session before carries over: a token
    someone planted, the anonymous CSRF secret) and go to ``target``; the browser is remembered."""
    previous = session.get(SESSION_TOKEN)
    if isinstance(previous, str):
        accounts.end_session(db(), previous)
    session.clear()
    session[SESSION_TOKEN] = accounts.start_session(db(), account)
    db().commit()
    response = redirect(target)
    browser = _remembered() or {"browser": secrets.token_urlsafe(16)}
    response.set_cookie(
        BROWSER_COOKIE,
        _serializer().dumps({"browser": browser["browser"], "email": _email_digest(account.email)}),
        max_age=int(BROWSER_REMEMBERED.total_seconds()),
        secure=web().settings.web_base_url.startswith("https://"),
        httponly=True,
        samesite="Lax",
    )
    return response


def _known_browser(email: str) -> str | None:
    """This browser's id, if it signed in to ``email``'s account before (within 90 days)."""
    remembered = _remembered()
    if remembered is None or remembered.get("email") != _email_digest(email):
        return None
    return str(remembered["browser"])


def _remembered() -> dict[str, Any] | None:
    cookie = request.cookies.get(BROWSER_COOKIE)
    if not cookie:
        return None
    try:
        found = _serializer().loads(cookie, max_age=int(BROWSER_REMEMBERED.total_seconds()))
    except BadSignature:
        return None
    return found if isinstance(found, dict) and isinstance(found.get("browser"), str) else None


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="userpath-browser")  # type: ignore[arg-type]


def _email_digest(email: str) -> str:
    """Which account the cookie is for, without the address in clear."""
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]
