"""What the views share: the request's database session, who is signed in, and in which
organization with which role.

One database session per request, opened on first use and closed (rolling back whatever was not
committed) when the request ends. A view commits itself, before it answers: a key is shown only
once it is stored. A form (POST) reads and then writes while other requests write too: on SQLite
its transactions take the write lock when they begin (``db.writer``), so that none of them fails
with "database is locked" under parallel requests.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flask import Response, abort, current_app, g, make_response, redirect, render_template, request, session, url_for
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from userpath_worker.accounts import services as accounts
from userpath_worker.accounts.models import Account
from userpath_worker.errors import Conflict, NotFound, PermissionDenied, UserError
from userpath_worker.keys import handoff
from userpath_worker.keys.services import KeyService, configured_pepper
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization, Role
from userpath_worker.rotation.services import RotationPolicy
from userpath_worker.web import secret_scanning

View = TypeVar("View", bound=Callable[..., Any])

SESSION_TOKEN = "session"  # the key, in Flask's signed cookie, of the web session's token
HANDOFF = "key_handoff"  # the key, in the session, of the token that takes a new key back (keys.handoff)


@dataclass(frozen=True, slots=True)
class Web:
    """The app's handles, built once by ``create_app``."""

    settings: Settings
    sessions: sessionmaker[Session]
    form_sessions: sessionmaker[Session]  # for POST requests: see the module
    policy: RotationPolicy

    def keys(self, database: Session) -> KeyService:
        return KeyService(database, pepper=configured_pepper(self.settings))

    @property
    def session_lifetime(self) -> dt.timedelta:
        return dt.timedelta(hours=self.settings.web_session_lifetime_hours)


@dataclass(frozen=True, slots=True)
class Membership:
    organization: Organization
    role: Role

    @property
    def is_owner(self) -> bool:
        """Whether to show the controls. The services decide what an owner may do."""
        return self.role is Role.OWNER


def web() -> Web:
    return cast(Web, current_app.extensions["userpath"])


def db() -> Session:
    if "db" not in g:
        g.db = (web().sessions if request.method in ("GET", "HEAD") else web().form_sessions)()
    return cast(Session, g.db)


def close_db(_error: BaseException | None = None) -> None:
    database = g.pop("db", None)
    if database is not None:
        database.close()


def load_account() -> None:
    """Who the session cookie says is signed in, if that session is still open (12 h idle at most,
    USERPATH_WEB_SESSION_LIFETIME_HOURS in all)."""
    g.account = None
    if request.endpoint in ("static", "healthz", secret_scanning.ENDPOINT):  # no browser, no session
        return
    token = session.get(SESSION_TOKEN)
    if not isinstance(token, str):
        return
    g.account = accounts.session_account(db(), token, web().session_lifetime)
    db().commit()  # the session's last activity, or its end
    if g.account is None:
        session.pop(SESSION_TOKEN, None)


def account() -> Account:
    return cast(Account, g.account)


def actor() -> str:
    """The signed-in member's e-mail: the actor the services check and audit."""
    return account().email


def signed_in(view: View) -> View:
    """The view runs for a signed-in account; anyone else goes to the sign-in page, and back after."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.get("account") is None:
            target = request.full_path.rstrip("?") if request.method == "GET" else None
            return redirect(url_for("auth.sign_in", next=target))
        return view(*args, **kwargs)

    return cast(View, wrapper)


def memberships() -> list[Membership]:
    if "memberships" not in g:
        g.memberships = [Membership(org, role) for org, role in accounts.memberships(db(), account())]
    return cast(list[Membership], g.memberships)


def membership(org_id: int) -> Membership:
    """The signed-in account's membership of organization ``org_id``; 404 if it has none, whether
    or not the organization exists."""
    for found in memberships():
        if found.organization.id == org_id:
            g.current = found
            return found
    abort(404)


def owner(org_id: int, doing: str) -> Membership:
    """The membership, if the signed-in member is an owner: the organizations service decides
    (PermissionDenied, 403, whose page says only owners can ``doing``), the one the CLI's and the
    key service's checks use."""
    current = membership(org_id)
    organizations.require_owner(db(), current.organization, actor(), doing)
    return current


MAX_PAGE = 1_000_000  # of any paged list: far past the end of any, and an offset every database takes


def page_number() -> int:
    """The ``page`` asked for (1 for none or anything but a number); 404 past MAX_PAGE, where a huge
    number would overflow the database's offset."""
    number = request.args.get("page", 1, type=int) or 1
    if number > MAX_PAGE:
        abort(404)
    return max(number, 1)


def form_status(error: UserError) -> int:
    """The status of a form shown again with a service's message. A refusal, or an organization,
    key or member that is not there, is not the form's mistake: it goes to its own page (403, 404)."""
    if isinstance(error, PermissionDenied | NotFound):
        raise error
    return 409 if isinstance(error, Conflict) else 400


def hand_off_key(key_id: int, plaintext: str) -> None:
    """Commit a new key with its hand-off, for the page the POST redirects to (post-redirect-get):
    the key is in no URL and the cookie holds only the token that takes it back. ``plaintext`` is
    what that page shows once: the key, or a webhook source's URL, which carries it."""
    session[HANDOFF] = handoff.hand_off(db(), key_id, account().id, plaintext)
    db().commit()


def take_handed_off_key(key_id: int) -> str | None:
    """The new key ``key_id`` this browser's POST handed off, once; None afterwards (a refresh, the
    back button), when the page shows the list instead."""
    token = session.pop(HANDOFF, None)
    plaintext = handoff.take(db(), token, key_id, account().id) if isinstance(token, str) else None
    db().commit()
    return plaintext


def shown_once(rendered: tuple[str, int]) -> Response:
    """A response that carries a secret (a new key, an invitation link): no cache keeps it."""
    response = make_response(rendered)
    response.headers["Cache-Control"] = "no-store"
    return response


def page(template: str, status: int = 200, **values: Any) -> tuple[str, int]:
    return render_template(template, **values), status


def template_globals() -> dict[str, Any]:
    """What the layout needs on every page: who is signed in, their organizations, the current one."""
    signed_in_account = g.get("account")
    return {
        "account": signed_in_account,
        "memberships": memberships() if signed_in_account is not None else [],
        "current": g.get("current"),
    }
