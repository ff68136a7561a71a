"""Accounts: invitations and password resets by one-time link, sign-in with throttling, sessions.

Like every service these work inside the caller's transaction and never commit. ``sign_in`` and
``accept_invitation`` record a failed password and then raise: the caller must commit it anyway
(catch InvalidCredentials inside the transaction), or the throttle never counts.

Membership is by consent, as GitHub's organization invitations are: an invitation is pending, and
grants nothing, until the invitee accepts it with its link; the member is added then, and the join
is audit-logged in the organization joined. What a link may do to the account of its e-mail
depends on how it reached whoever opens it (``Channel``):

- a link the operator's CLI printed, or one e-mailed to the address (USERPATH_SMTP_URL), sets the
  password of an account that has none, or whose password was set through a link shown to an
  owner; an invitation for an account that has a password of its own asks for that password;
- a link shown to the inviting owner (no SMTP server) sets a first password only for an e-mail that
  no other organization has made a member or invited before it; for anyone else it asks for the
  account's own password, which an account without one does not have. Its page asks the same for
  every e-mail. An account whose password came through such a link reaches only the organizations
  whose invitations it accepted itself, until a trusted link sets a new one: an owner who set up
  an e-mail before anyone else knew it gains nothing when the operator later gives it an
  organization;
- a reset link (the operator's, or e-mailed) always sets a new password; no page shows one.

Setting a password ends every session of the account. Tokens (links, sessions) are
``secrets.token_urlsafe(32)``; only their SHA-256 digest is stored, and none of them, nor any
password, is written to the audit log.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, select, update
from sqlalchemy.orm import Session

from userpath_worker.accounts import passwords, throttle
from userpath_worker.accounts.models import Account, Channel, Invitation, Purpose, WebSession
from userpath_worker.accounts.passwords import WeakPassword
from userpath_worker.accounts.throttle import FAILURE_WINDOW, MAX_ACCOUNT_FAILURES, MAX_FAILURES, TooManyAttempts
from userpath_worker.audit import services as audit
from userpath_worker.db import utcnow
from userpath_worker.emails import normalize_email, valid_email
from userpath_worker.errors import NotFound, PermissionDenied, UserError
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Member, Organization, Role

__all__ = [
    "FAILURE_WINDOW",
    "INVITATION_LIFETIME",
    "MAX_ACCOUNT_FAILURES",
    "MAX_FAILURES",
    "OPERATOR",
    "SESSION_IDLE",
    "Asks",
    "InvalidCredentials",
    "InvalidInvitation",
    "LinkForm",
    "PasswordsDiffer",
    "TooManyAttempts",
    "WeakPassword",
    "accept_invitation",
    "account_has_password",
    "cancel_invitation",
    "end_session",
    "invitation_url",
    "invite",
    "link_form",
    "memberships",
    "pending_invitations",
    "reset_password",
    "session_account",
    "sign_in",
    "start_session",
]

INVITATION_LIFETIME = dt.timedelta(hours=72)
SESSION_IDLE = dt.timedelta(hours=12)

# The actor of what the person running the ``userpath`` CLI does (no e-mail: they are the operator).
OPERATOR = "operator"


class InvalidCredentials(UserError):
    """Wrong e-mail or password; the same answer whether the e-mail is known or not."""

    def __init__(self) -> None:
        super().__init__("wrong e-mail or password")


class InvalidInvitation(UserError):
    """A link that is unknown, used or expired."""

    def __init__(self) -> None:
        super().__init__("this link is invalid, already used or expired; ask an owner of your organization for another")


class PasswordsDiffer(UserError):
    def __init__(self) -> None:
        super().__init__("the two passwords differ; type the same one twice")


class Asks(enum.StrEnum):
    """What the page of a link asks of whoever opens it."""

    NEW_PASSWORD = "new"  # choose a password, twice
    CURRENT_PASSWORD = "current"  # the account's own password
    # A link shown to an inviting owner: the account's password if it has one, or a new one twice.
    # The page is the same whatever the e-mail, so that it tells the owner nothing about it.
    EITHER = "either"


@dataclass(frozen=True, slots=True)
class LinkForm:
    """What the page of a valid link shows."""

    email: str
    org_id: int
    organization: str
    purpose: Purpose
    role: Role | None
    invited_by: str
    asks: Asks


def invitation_url(base_url: str, token: str) -> str:
    return f"{base_url}/invitations/{token}"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, _digest(token)


# --- invitations and resets ----------------------------------------------------------------


def invite(
    session: Session, organization: Organization, email: str, role: Role, actor: str, *, emailed: bool = False
) -> str:
    """Invite ``email`` to ``organization`` as ``role`` (a member already keeps theirs) and return the
    plaintext token of its link: pending, it grants nothing until it is accepted. A newer invitation
    of the organization for the same e-mail replaces an older one. ``actor`` is an owner's e-mail,
    whose link is shown to them unless ``emailed`` (sent to ``email`` only), or OPERATOR for the CLI."""
    _require_owner_unless_operator(session, organization, actor, "invite members")
    email = valid_email(email)
    member = _member(session, organization, email)
    role = member.role if member is not None else role
    _expire_links(session, Invitation.org_id == organization.id, Invitation.email == email, _invitations)
    channel = Channel.OPERATOR if actor == OPERATOR else Channel.EMAIL if emailed else Channel.INVITER
    token = _new_link(session, organization, email, Purpose.INVITE, channel, actor, role)
    detail = {"email": email, "role": role.value}
    audit.write(session, actor, audit.Entry(organization.id, "member.invited", detail=detail))
    return token


def pending_invitations(session: Session, organization: Organization) -> list[Invitation]:
    """The organization's invitations nobody accepted yet, newest first. Not those of its members
    (the founder's, a new link for a member): whether a member used theirs would tell whether they
    set a password."""
    member = exists().where(Member.org_id == Invitation.org_id, Member.email == Invitation.email)
    return list(
        session.scalars(
            select(Invitation)
            .where(Invitation.org_id == organization.id, _invitations, _usable(utcnow()), ~member)
            .order_by(Invitation.created_at.desc(), Invitation.id.desc())
        )
    )


def cancel_invitation(session: Session, organization: Organization, invitation_id: int, actor: str) -> Invitation:
    """Withdraw a pending invitation of ``organization`` (owners only): its link stops working.
    NotFound for another organization's invitation, as for one that is not pending."""
    _require_owner_unless_operator(session, organization, actor, "manage members")
    now = utcnow()
    invitation = session.scalar(
        select(Invitation).where(
            Invitation.id == invitation_id, Invitation.org_id == organization.id, _invitations, _usable(now)
        )
    )
    if invitation is None:
        raise NotFound(f"invitation {invitation_id} not found in '{organization.name}'")
    invitation.expires_at = now
    detail = {"email": invitation.email, "role": (invitation.role or Role.MEMBER).value}
    audit.write(session, actor, audit.Entry(organization.id, "member.invitation_cancelled", detail=detail), at=now)
    session.flush()
    return invitation


def reset_password(
    session: Session, organization: Organization, email: str, actor: str, *, emailed: bool = False
) -> str:
    """A new link for a member of ``organization`` to set a new password; older reset links of the
    same e-mail stop working. The operator's is printed; an owner's is e-mailed to the member
    (``emailed``): no page ever shows a link that replaces someone's password."""
    _require_owner_unless_operator(session, organization, actor, "reset members' passwords")
    if actor != OPERATOR and not emailed:
        raise PermissionDenied("a password reset from the web pages goes by e-mail: set USERPATH_SMTP_URL")
    email = normalize_email(email)
    if _member(session, organization, email) is None:
        raise NotFound(f"{email} is not a member of '{organization.name}'")
    _expire_links(session, Invitation.email == email, Invitation.purpose == Purpose.RESET)
    channel = Channel.OPERATOR if actor == OPERATOR else Channel.EMAIL
    token = _new_link(session, organization, email, Purpose.RESET, channel, actor, None)
    audit.write(session, actor, audit.Entry(organization.id, "member.password_reset", detail={"email": email}))
    return token


def link_form(session: Session, token: str) -> LinkForm:
    """What the page of a link shows and asks; InvalidInvitation if it is unknown, used or expired."""
    invitation = _valid_invitation(session, token)
    organization = session.get_one(Organization, invitation.org_id)
    if invitation.channel is Channel.INVITER:
        asks = Asks.EITHER
    elif _sets_password(session, invitation, _account(session, invitation.email)):
        asks = Asks.NEW_PASSWORD
    else:
        asks = Asks.CURRENT_PASSWORD
    return LinkForm(
        invitation.email,
        organization.id,
        organization.name,
        invitation.purpose,
        invitation.role,
        invitation.invited_by,
        asks,
    )


def account_has_password(session: Session, email: str) -> bool:
    """Whether ``email`` already signs in with a password (for the operator's tools, not the pages)."""
    account = _account(session, email)
    return account is not None and account.password_hash is not None


def accept_invitation(
    session: Session,
    token: str,
    password: str,
    confirmation: str | None = None,
    client_address: str = "",
    known_browser: str | None = None,
) -> Account:
    """Use a link once: join its organization, set the password where the link may (see the module),
    and return the account (sign it in next).

    Where the link sets the password: WeakPassword, PasswordsDiffer (when a ``confirmation`` was
    asked for and differs); every session of the account ends. Where it asks for the account's own
    password, it is checked, throttled and recorded as a sign-in is (InvalidCredentials,
    TooManyAttempts; commit the failure), so whoever holds the link cannot take the account.
    """
    invitation = _valid_invitation(session, token)
    email, now = invitation.email, utcnow()
    account = _account(session, email)
    sets = _sets_password(session, invitation, account)
    if sets:
        if confirmation is not None and confirmation != password:
            raise PasswordsDiffer()
        passwords.check_policy(password, email)
    else:
        account = _check_password(session, throttle.Attempt(email, client_address, known_browser), password, now)
    used = session.execute(
        update(Invitation).where(Invitation.id == invitation.id, Invitation.used_at.is_(None)).values(used_at=now)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidInvitation()  # used by a concurrent request a moment ago
    if account is None:
        account = Account(email=email, created_at=now)
        session.add(account)
    if sets:
        account.password_hash = passwords.hash_password(password)
        account.password_channel = invitation.channel
        session.flush()
        _end_sessions(session, account, now)
        _expire_links(session, Invitation.email == email, Invitation.purpose == Purpose.RESET)
    if invitation.purpose is Purpose.INVITE:
        _join(session, invitation, now)
    else:
        audit.write(session, email, audit.Entry(invitation.org_id, "member.password_changed", detail={"email": email}))
    session.flush()
    return account


def _sets_password(session: Session, invitation: Invitation, account: Account | None) -> bool:
    """Whether using ``invitation`` sets the password of its e-mail's account (rather than asking
    for the account's own)."""
    if invitation.purpose is Purpose.RESET:
        return True
    if account is not None and account.password_hash is not None:
        # Never replaced by an invitation, but for a trusted link meeting a password that a link
        # shown to some owner may have set: the address's owner claims the account.
        return invitation.channel.trusted and account.password_channel is Channel.INVITER
    return invitation.channel.trusted or not _known_elsewhere(session, invitation)


def _known_elsewhere(session: Session, invitation: Invitation) -> bool:
    """Whether another organization has the invitation's e-mail as a member, or invited it first."""
    email, org_id = invitation.email, invitation.org_id
    member = exists().where(Member.email == email, Member.org_id != org_id)
    invited_first = exists().where(
        Invitation.email == email,
        Invitation.org_id != org_id,
        Invitation.id < invitation.id,
        _invitations,
        _usable(utcnow()),
    )
    return bool(session.scalar(select(member | invited_first)))


def _join(session: Session, invitation: Invitation, now: dt.datetime) -> None:
    """The invitee becomes a member with the invited role (a member keeps theirs); audit-logged in
    the organization joined."""
    organization = session.get_one(Organization, invitation.org_id)
    member = _member(session, organization, invitation.email)
    if member is None:
        member = organizations.add_member(session, organization, invitation.email, invitation.role or Role.MEMBER)
        member.created_at = now  # when this invitation was used: what ``memberships`` compares
    detail = {"email": member.email, "role": member.role.value}
    audit.write(session, member.email, audit.Entry(organization.id, "member.joined", detail=detail), at=now)


# Pending invitations, as opposed to reset links; and links not used nor expired at ``now``.
_invitations = Invitation.purpose == Purpose.INVITE


def _usable(now: dt.datetime) -> ColumnElement[bool]:
    return Invitation.used_at.is_(None) & (Invitation.expires_at > now)


def _new_link(
    session: Session,
    organization: Organization,
    email: str,
    purpose: Purpose,
    channel: Channel,
    actor: str,
    role: Role | None,
) -> str:
    token, digest = _new_token()
    now = utcnow()
    session.add(
        Invitation(
            token_digest=digest,
            email=email,
            org_id=organization.id,
            purpose=purpose,
            role=role,
            channel=channel,
            invited_by=normalize_email(actor),
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


def _expire_links(session: Session, *criteria: object) -> None:
    """Every usable link that matches ``criteria`` expires now."""
    now = utcnow()
    session.execute(
        update(Invitation).where(*criteria, _usable(now)).values(expires_at=now)  # type: ignore[arg-type]
    )


def _require_owner_unless_operator(session: Session, organization: Organization, actor: str, doing: str) -> None:
    if actor != OPERATOR:
        organizations.require_owner(session, organization, actor, doing)


# --- signing in ----------------------------------------------------------------------------


def sign_in(
    session: Session, email: str, password: str, client_address: str, known_browser: str | None = None
) -> Account:
    """The account whose e-mail and password these are.

    InvalidCredentials for a wrong password and for an unknown e-mail alike (checked against a
    dummy hash, so it takes as long); the failure is counted and audit-logged in each organization
    the e-mail belongs to. TooManyAttempts, without checking the password, once the attempt's
    counters are at their limits (``throttle``). ``known_browser``: the id of the browser, if it
    signed in to this e-mail's account before.
    """
    email, now = normalize_email(email), utcnow()
    account = _check_password(session, throttle.Attempt(email, client_address, known_browser), password, now)
    _audit_everywhere(session, email, "signed_in", client_address, now)
    session.flush()
    return account


def _check_password(session: Session, attempt: throttle.Attempt, password: str, now: dt.datetime) -> Account:
    """The account of the attempt's e-mail if ``password`` is its password, throttled and recorded
    as a sign-in is."""
    throttle.hold(session, attempt, now)
    account = _account(session, attempt.email)
    if not passwords.verify(account.password_hash if account else None, password):
        throttle.count_failure(session, attempt, now)
        _audit_everywhere(session, attempt.email, "sign_in_failed", attempt.client_address, now)
        session.flush()
        raise InvalidCredentials()
    assert account is not None and account.password_hash is not None
    if passwords.needs_rehash(account.password_hash):
        account.password_hash = passwords.hash_password(password)
    throttle.forgive(session, attempt)
    return account


# --- sessions ------------------------------------------------------------------------------


def start_session(session: Session, account: Account) -> str:
    """A new session for ``account``; its plaintext token, for the cookie. A new one at every sign-in."""
    token, digest = _new_token()
    now = utcnow()
    session.add(WebSession(token_digest=digest, account_id=account.id, created_at=now, last_seen_at=now))
    session.flush()
    return token


def session_account(session: Session, token: str, lifetime: dt.timedelta) -> Account | None:
    """The account signed in with ``token``, or None if the session is unknown or ended, idle for
    more than SESSION_IDLE, or older than ``lifetime`` however active (it then ends). Counts as
    activity. Writes first: on SQLite a transaction that read first could not write."""
    digest, now = _digest(token), utcnow()
    open_session = (WebSession.token_digest == digest) & WebSession.ended_at.is_(None)
    account_id = session.execute(
        update(WebSession)
        .where(open_session, WebSession.last_seen_at >= now - SESSION_IDLE, WebSession.created_at > now - lifetime)
        .values(last_seen_at=now)
        .returning(WebSession.account_id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if account_id is None:
        session.execute(
            update(WebSession).where(open_session).values(ended_at=now).execution_options(synchronize_session=False)
        )
        return None
    return session.get(Account, account_id)


def end_session(session: Session, token: str) -> None:
    """Sign out: the session ends (an unknown or ended one is left alone)."""
    web_session = session.scalar(
        select(WebSession).where(WebSession.token_digest == _digest(token), WebSession.ended_at.is_(None))
    )
    if web_session is None:
        return
    now = utcnow()
    web_session.ended_at = now
    account = session.get_one(Account, web_session.account_id)
    _audit_everywhere(session, account.email, "signed_out", None, now)
    session.flush()


def _end_sessions(session: Session, account: Account, now: dt.datetime) -> None:
    """Every open session of ``account`` ends (a password was set: a stolen one must not last)."""
    session.execute(
        update(WebSession)
        .where(WebSession.account_id == account.id, WebSession.ended_at.is_(None))
        .values(ended_at=now)
        .execution_options(synchronize_session=False)
    )


# --- who belongs where ---------------------------------------------------------------------


def memberships(session: Session, account: Account) -> list[tuple[Organization, Role]]:
    """The organizations ``account`` reaches, with its role in each, by organization name: those it
    is a member of, or, while its password is one a link shown to an owner set, those whose
    invitation it accepted itself (see the module)."""
    query = (
        select(Organization, Member.role)
        .join(Member, Member.org_id == Organization.id)
        .where(Member.email == account.email)
        .order_by(Organization.name)
    )
    if account.password_channel is Channel.INVITER:
        query = query.where(
            exists().where(
                Invitation.email == Member.email,
                Invitation.org_id == Member.org_id,
                _invitations,
                Invitation.used_at >= Member.created_at,
            )
        )
    return [(organization, role) for organization, role in session.execute(query)]


def _account(session: Session, email: str) -> Account | None:
    return session.scalar(select(Account).where(Account.email == normalize_email(email)))


def _member(session: Session, organization: Organization, email: str) -> Member | None:
    return session.scalar(select(Member).where(Member.org_id == organization.id, Member.email == email))


def _audit_everywhere(session: Session, email: str, action: str, client_address: str | None, at: dt.datetime) -> None:
    """One audit row per organization ``email`` is a member of (an account's events belong to each)."""
    detail = {"client_address": client_address[:64]} if client_address else {}
    org_ids = session.scalars(select(Member.org_id).where(Member.email == email).order_by(Member.org_id))
    audit.write(session, email, *(audit.Entry(org_id, action, detail=detail) for org_id in org_ids), at=at)
