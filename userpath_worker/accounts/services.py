"""Accounts: invitations and password resets by one-time link, sign-in with throttling, sessions.

Like every service these work inside the caller's transaction and never commit. ``sign_in``
records a failure and then raises: the caller must commit it anyway (catch InvalidCredentials
inside the transaction), or the throttle never counts.

Tokens (links, sessions) are ``secrets.token_urlsafe(32)``; only their SHA-256 digest is stored,
and none of them, nor any password, is written to the audit log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from userpath_worker.accounts import passwords
from userpath_worker.accounts.models import Account, Invitation, Purpose, SignInFailure, WebSession
from userpath_worker.accounts.passwords import WeakPassword
from userpath_worker.audit import services as audit
from userpath_worker.db import utcnow
from userpath_worker.emails import normalize_email
from userpath_worker.errors import NotFound, UserError
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Member, Organization, Role

__all__ = [
    "FAILURE_WINDOW",
    "INVITATION_LIFETIME",
    "MAX_ADDRESS_FAILURES",
    "MAX_FAILURES",
    "OPERATOR",
    "SESSION_IDLE",
    "InvalidCredentials",
    "InvalidInvitation",
    "TooManyAttempts",
    "WeakPassword",
    "accept_invitation",
    "account_has_password",
    "end_session",
    "invitation_confirms_password",
    "invitation_email",
    "invitation_url",
    "invite",
    "memberships",
    "reset_password",
    "session_account",
    "sign_in",
    "start_session",
]

INVITATION_LIFETIME = dt.timedelta(hours=72)
SESSION_IDLE = dt.timedelta(hours=12)
# Failed sign-ins within FAILURE_WINDOW: MAX_FAILURES for one e-mail, MAX_ADDRESS_FAILURES from one
# client address (several people may share an address; one guesser tries several e-mails).
MAX_FAILURES, FAILURE_WINDOW = 5, dt.timedelta(minutes=15)
MAX_ADDRESS_FAILURES = 20

# The actor of what the person running the ``userpath`` CLI does (no e-mail: they are the operator).
OPERATOR = "operator"


class InvalidCredentials(UserError):
    """Wrong e-mail or password; the same answer whether the e-mail is known or not."""

    def __init__(self) -> None:
        super().__init__("wrong e-mail or password")


class TooManyAttempts(UserError):
    """Too many failed sign-ins for this e-mail or from this address."""

    def __init__(self, retry_after_minutes: int) -> None:
        self.retry_after_minutes = retry_after_minutes
        unit = "minute" if retry_after_minutes == 1 else "minutes"
        super().__init__(f"too many failed sign-ins; try again in {retry_after_minutes} {unit}")


class InvalidInvitation(UserError):
    """A link that is unknown, used or expired."""

    def __init__(self) -> None:
        super().__init__("this link is invalid, already used or expired; ask an owner of your organization for another")


def invitation_url(base_url: str, token: str) -> str:
    return f"{base_url}/invitations/{token}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, _digest(token)


# --- invitations and resets ----------------------------------------------------------------


def invite(session: Session, organization: Organization, email: str, role: Role, actor: str) -> str:
    """Make ``email`` a member of ``organization`` with ``role`` (a member already keeps theirs) and
    return the plaintext token of a link where they set their password. ``actor`` is an owner's
    e-mail, or OPERATOR for the CLI."""
    _require_owner_unless_operator(session, organization, actor, "invite members")
    email = normalize_email(email)
    member = _member(session, organization, email)
    if member is None:
        member = organizations.add_member(session, organization, email, role)
    token = _new_invitation(session, organization, member.email, Purpose.INVITE)
    detail = {"email": email, "role": member.role.value}
    audit.write(session, actor, audit.Entry(organization.id, "member.invited", detail=detail))
    return token


def reset_password(session: Session, organization: Organization, email: str, actor: str) -> str:
    """A new link for a member of ``organization`` to set a new password; older unused links of the
    same e-mail stop working."""
    _require_owner_unless_operator(session, organization, actor, "reset members' passwords")
    email = normalize_email(email)
    if _member(session, organization, email) is None:
        raise NotFound(f"{email} is not a member of '{organization.name}'")
    _revoke_links(session, email)
    token = _new_invitation(session, organization, email, Purpose.RESET)
    audit.write(session, actor, audit.Entry(organization.id, "member.password_reset", detail={"email": email}))
    return token


def invitation_email(session: Session, token: str) -> str:
    """The e-mail a valid link is for; InvalidInvitation if it is unknown, used or expired."""
    return _valid_invitation(session, token).email


def invitation_confirms_password(session: Session, token: str) -> bool:
    """Whether a valid link asks for the account's current password (an invitation for an e-mail
    that already signs in) rather than a new one (a first invitation, a reset); InvalidInvitation
    if it is unknown, used or expired. The page asks for the one ``accept_invitation`` checks."""
    invitation = _valid_invitation(session, token)
    return _confirms(invitation, _account(session, invitation.email))


def _confirms(invitation: Invitation, account: Account | None) -> bool:
    return invitation.purpose is Purpose.INVITE and account is not None and account.password_hash is not None


def account_has_password(session: Session, email: str) -> bool:
    """Whether ``email`` already signs in with a password (its invitations then ask for that one)."""
    account = _account(session, email)
    return account is not None and account.password_hash is not None


def accept_invitation(session: Session, token: str, password: str, client_address: str | None = None) -> Account:
    """Use a link once: set its e-mail's password and return the account (sign it in next).

    An invitation for an e-mail that already has a password (a member of another organization)
    does not replace it: ``password`` must be that password, checked, throttled and recorded as a
    sign-in is (InvalidCredentials, TooManyAttempts; commit the failure), so whoever holds the link
    cannot take over the account. A reset link always sets a new one (WeakPassword).
    """
    invitation = _valid_invitation(session, token)
    account = _account(session, invitation.email)
    confirming = _confirms(invitation, account)
    if confirming:
        _check_password(session, invitation.email, password, client_address, utcnow())
    else:
        passwords.check_policy(password, invitation.email)
    now = utcnow()
    used = session.execute(
        update(Invitation).where(Invitation.id == invitation.id, Invitation.used_at.is_(None)).values(used_at=now)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidInvitation()  # used by a concurrent request a moment ago
    if account is None:
        account = Account(email=invitation.email)
        session.add(account)
    if not confirming:
        account.password_hash = passwords.hash_password(password)
        _revoke_links(session, invitation.email)  # an older link must not change the new password
    session.flush()
    action = "member.joined" if invitation.purpose is Purpose.INVITE else "member.password_changed"
    audit.write(session, account.email, audit.Entry(invitation.org_id, action, detail={"email": account.email}), at=now)
    return account


def _new_invitation(session: Session, organization: Organization, email: str, purpose: Purpose) -> str:
    token, digest = _new_token()
    now = utcnow()
    session.add(
        Invitation(
            token_digest=digest,
            email=email,
            org_id=organization.id,
            purpose=purpose,
            created_at=now,
            expires_at=now + INVITATION_LIFETIME,
        )
    )
    session.flush()
    return token


def _valid_invitation(session: Session, token: str) -> Invitation:
    invitation = session.scalar(select(Invitation).where(Invitation.token_digest == _digest(token)))
    if invitation is None or invitation.used_at is not None or invitation.expires_at <= utcnow():
        raise InvalidInvitation()
    return invitation


def _revoke_links(session: Session, email: str) -> None:
    """Every unused, unexpired link of ``email`` expires now."""
    now = utcnow()
    session.execute(
        update(Invitation)
        .where(Invitation.email == email, Invitation.used_at.is_(None), Invitation.expires_at > now)
        .values(expires_at=now)
    )


def _require_owner_unless_operator(session: Session, organization: Organization, actor: str, doing: str) -> None:
    if actor != OPERATOR:
        organizations.require_owner(session, organization, actor, doing)


# --- signing in ----------------------------------------------------------------------------


def sign_in(session: Session, email: str, password: str, client_address: str) -> Account:
    """The account whose e-mail and password these are.

    InvalidCredentials for a wrong password and for an unknown e-mail alike (checked against a
    dummy hash, so it takes as long); the failure is recorded and audit-logged in each
    organization the e-mail belongs to. TooManyAttempts, without checking the password, after
    MAX_FAILURES failures for the e-mail or MAX_ADDRESS_FAILURES from the address within
    FAILURE_WINDOW.
    """
    email, client_address, now = normalize_email(email), client_address[:64], utcnow()
    account = _check_password(session, email, password, client_address, now)
    _audit_everywhere(session, email, "signed_in", client_address, now)
    session.flush()
    return account


def _check_password(
    session: Session, email: str, password: str, client_address: str | None, now: dt.datetime
) -> Account:
    """The account of ``email`` if ``password`` is its password, throttled and recorded as a sign-in
    is (without an address, only the e-mail's failures are counted)."""
    client_address = (client_address or "")[:64]
    _refuse_if_throttled(session, email, client_address, now)
    account = _account(session, email)
    if not passwords.verify(account.password_hash if account else None, password):
        session.execute(delete(SignInFailure).where(SignInFailure.failed_at <= now - FAILURE_WINDOW))
        session.add(SignInFailure(email=email, client_address=client_address, failed_at=now))
        _audit_everywhere(session, email, "sign_in_failed", client_address, now)
        session.flush()
        raise InvalidCredentials()
    assert account is not None and account.password_hash is not None
    if passwords.needs_rehash(account.password_hash):
        account.password_hash = passwords.hash_password(password)
    session.execute(delete(SignInFailure).where(SignInFailure.email == email))
    return account


def _refuse_if_throttled(session: Session, email: str, client_address: str, now: dt.datetime) -> None:
    since = now - FAILURE_WINDOW
    waits = [_wait(session, SignInFailure.email == email, MAX_FAILURES, since)]
    if client_address:
        waits.append(_wait(session, SignInFailure.client_address == client_address, MAX_ADDRESS_FAILURES, since))
    longest = max((wait for wait in waits if wait is not None), default=None)
    if longest is not None:
        raise TooManyAttempts(max(1, math.ceil((longest - now).total_seconds() / 60)))


def _wait(session: Session, criterion: object, limit: int, since: dt.datetime) -> dt.datetime | None:
    """When failures matching ``criterion`` fall below ``limit`` again, if they are at it now."""
    recent = select(SignInFailure.failed_at).where(criterion, SignInFailure.failed_at > since)  # type: ignore[arg-type]
    count = session.scalar(select(func.count()).select_from(recent.subquery())) or 0
    if count < limit:
        return None
    # The failure whose expiry brings the count down to limit - 1.
    pivot = session.scalar(recent.order_by(SignInFailure.failed_at).offset(count - limit).limit(1))
    assert pivot is not None
    return pivot + FAILURE_WINDOW


# --- sessions ------------------------------------------------------------------------------


def start_session(session: Session, account: Account) -> str:
    """A new session for ``account``; its plaintext token, for the cookie. A new one at every sign-in."""
    token, digest = _new_token()
    now = utcnow()
    session.add(WebSession(token_digest=digest, account_id=account.id, created_at=now, last_seen_at=now))
    session.flush()
    return token


def session_account(session: Session, token: str) -> Account | None:
    """The account signed in with ``token``, or None if the session is unknown, ended, or idle for
    more than SESSION_IDLE (it then ends). Counts as activity."""
    web_session = _open_session(session, token)
    if web_session is None:
        return None
    now = utcnow()
    if now - web_session.last_seen_at > SESSION_IDLE:
        web_session.ended_at = now
        session.flush()
        return None
    web_session.last_seen_at = now
    session.flush()
    return session.get(Account, web_session.account_id)


def end_session(session: Session, token: str) -> None:
    """Sign out: the session ends (an unknown or ended one is left alone)."""
    web_session = _open_session(session, token)
    if web_session is None:
        return
    now = utcnow()
    web_session.ended_at = now
    account = session.get(Account, web_session.account_id)
    assert account is not None
    _audit_everywhere(session, account.email, "signed_out", None, now)
    session.flush()


def _open_session(session: Session, token: str) -> WebSession | None:
    return session.scalar(
        select(WebSession).where(WebSession.token_digest == _digest(token), WebSession.ended_at.is_(None))
    )


# --- who belongs where ---------------------------------------------------------------------


def memberships(session: Session, account: Account) -> list[tuple[Organization, Role]]:
    """The organizations ``account`` belongs to, with its role in each, by organization name."""
    rows = session.execute(
        select(Organization, Member.role)
        .join(Member, Member.org_id == Organization.id)
        .where(Member.email == account.email)
        .order_by(Organization.name)
    )
    return [(organization, role) for organization, role in rows]


def _account(session: Session, email: str) -> Account | None:
    return session.scalar(select(Account).where(Account.email == normalize_email(email)))


def _member(session: Session, organization: Organization, email: str) -> Member | None:
    return session.scalar(select(Member).where(Member.org_id == organization.id, Member.email == email))


def _audit_everywhere(session: Session, email: str, action: str, client_address: str | None, at: dt.datetime) -> None:
    """One audit row per organization ``email`` is a member of (an account's events belong to each)."""
    detail = {"client_address": client_address} if client_address else {}
    org_ids = session.scalars(select(Member.org_id).where(Member.email == email).order_by(Member.org_id))
    audit.write(session, email, *(audit.Entry(org_id, action, detail=detail) for org_id in org_ids), at=at)
