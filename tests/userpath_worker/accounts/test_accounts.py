"""Accounts: one-time links, the password policy, throttled sign-in, sessions, and what is stored.

Every case runs on SQLite and PostgreSQL (the ``session`` fixture), times with time-machine.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import time_machine
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from tests.common.databases import table_dump
from tests.common.factories import OWNER, PASSWORD, add_member, make_account, make_organization
from userpath_worker.accounts import passwords
from userpath_worker.accounts import services as accounts
from userpath_worker.accounts.models import Account, Channel, SignInThrottle, WebSession
from userpath_worker.accounts.secret import SECRET_FILE, web_secret
from userpath_worker.accounts.services import Asks
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import utcnow
from userpath_worker.errors import NotFound, PermissionDenied, UserError
from userpath_worker.organizations.models import Member, Organization, Role

START = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
ADDRESS = "203.0.113.7"
LIFETIME = dt.timedelta(days=7)
NEW_MEMBER = "new@example.com"


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def acme(session: Session) -> Organization:
    return make_organization(session, "Acme")


def audit_rows(session: Session, action: str) -> list[tuple[int, str, dict]]:
    rows = session.execute(
        select(AuditEntry.org_id, AuditEntry.actor, AuditEntry.detail)
        .where(AuditEntry.action == action)
        .order_by(AuditEntry.id)
    )
    return [tuple(row) for row in rows]


def counted(session: Session) -> list[int]:
    """The failures each throttle counter holds."""
    return sorted(session.scalars(select(SignInThrottle.failures)))


def fail(session: Session, email: str = OWNER, address: str = ADDRESS) -> None:
    with pytest.raises(accounts.InvalidCredentials):
        accounts.sign_in(session, email, "not the password", address)


# --- invitations ---------------------------------------------------------------------------


def test_an_invitation_is_pending_until_its_link_is_used_once(session: Session, acme) -> None:
    token = accounts.invite(session, acme, " New@Example.com ", Role.ADMIN, accounts.OPERATOR)

    assert accounts.invitation_url("https://userpath.example.com", token) == (
        f"https://userpath.example.com/invitations/{token}"
    )
    assert _member_roles(session, acme) == {OWNER: Role.OWNER}  # nothing granted yet
    assert [(i.email, i.role) for i in accounts.pending_invitations(session, acme)] == [(NEW_MEMBER, Role.ADMIN)]
    form = accounts.link_form(session, token)
    assert (form.email, form.organization, form.role, form.asks) == (NEW_MEMBER, "Acme", Role.ADMIN, Asks.NEW_PASSWORD)
    assert not accounts.account_has_password(session, NEW_MEMBER)

    account = accounts.accept_invitation(session, token, PASSWORD)
    assert account.email == NEW_MEMBER and accounts.account_has_password(session, NEW_MEMBER)
    assert _member_roles(session, acme)[NEW_MEMBER] is Role.ADMIN
    assert accounts.pending_invitations(session, acme) == []
    assert accounts.sign_in(session, NEW_MEMBER, PASSWORD, ADDRESS).id == account.id

    with pytest.raises(accounts.InvalidInvitation, match="already used or expired"):
        accounts.link_form(session, token)
    with pytest.raises(accounts.InvalidInvitation):
        accounts.accept_invitation(session, token, "another long password")
    assert accounts.sign_in(session, NEW_MEMBER, PASSWORD, ADDRESS).id == account.id


def _member_roles(session: Session, organization: Organization) -> dict[str, Role]:
    rows = session.execute(select(Member.email, Member.role).where(Member.org_id == organization.id))
    return dict(rows.all())  # type: ignore[arg-type]


def test_tokens_are_random_and_url_safe(session: Session, acme) -> None:
    tokens = {accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR) for _ in range(5)}
    assert len(tokens) == 5
    assert all(len(token) == 43 and token.replace("-", "").replace("_", "").isalnum() for token in tokens)


def test_an_unknown_link_is_invalid(session: Session) -> None:
    with pytest.raises(accounts.InvalidInvitation):
        accounts.link_form(session, "no-such-token")
    with pytest.raises(accounts.InvalidInvitation):
        accounts.accept_invitation(session, "no-such-token", PASSWORD)


def test_a_link_is_valid_for_72_hours(session: Session, acme, clock) -> None:
    token = accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR)
    clock.shift(accounts.INVITATION_LIFETIME - dt.timedelta(seconds=1))
    assert accounts.link_form(session, token).email == NEW_MEMBER
    clock.shift(dt.timedelta(seconds=1))
    with pytest.raises(accounts.InvalidInvitation):
        accounts.link_form(session, token)
    with pytest.raises(accounts.InvalidInvitation):
        accounts.accept_invitation(session, token, PASSWORD)
    assert session.scalar(select(Account).where(Account.email == NEW_MEMBER)) is None
    assert accounts.pending_invitations(session, acme) == []


def test_a_newer_invitation_replaces_the_organization_s_older_one(session: Session, acme) -> None:
    older = accounts.invite(session, acme, NEW_MEMBER, Role.ADMIN, accounts.OPERATOR)
    newer = accounts.invite(session, acme, NEW_MEMBER, Role.OWNER, accounts.OPERATOR)
    with pytest.raises(accounts.InvalidInvitation):
        accounts.link_form(session, older)
    accounts.accept_invitation(session, newer, PASSWORD)
    assert _member_roles(session, acme)[NEW_MEMBER] is Role.OWNER


def test_a_reset_link_makes_older_reset_links_of_the_e_mail_invalid(session: Session, acme) -> None:
    make_account(session, acme)
    other = make_organization(session, "Other", owner="someone@example.com")
    invitation = accounts.invite(session, other, OWNER, Role.MEMBER, accounts.OPERATOR)
    first_reset = accounts.reset_password(session, acme, OWNER, accounts.OPERATOR)
    stranger = accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR)

    second_reset = accounts.reset_password(session, acme, OWNER, accounts.OPERATOR)
    with pytest.raises(accounts.InvalidInvitation):
        accounts.link_form(session, first_reset)
    assert accounts.link_form(session, stranger).email == NEW_MEMBER  # another e-mail's link is kept
    # Another organization's invitation stays pending: it asks for the password, it sets none.
    assert accounts.link_form(session, invitation).asks is Asks.CURRENT_PASSWORD
    assert accounts.link_form(session, second_reset).asks is Asks.NEW_PASSWORD

    accounts.accept_invitation(session, second_reset, "a brand new passphrase")
    fail(session, OWNER)  # the old password no longer works
    assert accounts.sign_in(session, OWNER, "a brand new passphrase", ADDRESS).email == OWNER


def test_once_a_password_is_set_other_invitations_ask_for_it(session: Session, acme) -> None:
    other = make_organization(session, "Other", owner="x@example.com")
    elsewhere = accounts.invite(session, other, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR)
    newest = accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR)
    accounts.accept_invitation(session, newest, PASSWORD)
    with pytest.raises(accounts.InvalidCredentials):  # none of them can set another password now
        accounts.accept_invitation(session, elsewhere, "mallory's new password")
    assert accounts.sign_in(session, NEW_MEMBER, PASSWORD, ADDRESS).email == NEW_MEMBER
    account = accounts.accept_invitation(session, elsewhere, PASSWORD)
    assert [o.name for o, _ in accounts.memberships(session, account)] == ["Acme", "Other"]


def test_a_reset_is_for_members_only(session: Session, acme) -> None:
    with pytest.raises(NotFound, match="not a member"):
        accounts.reset_password(session, acme, "stranger@example.com", accounts.OPERATOR)
    accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR)
    with pytest.raises(NotFound, match="not a member"):  # invited is not a member yet
        accounts.reset_password(session, acme, NEW_MEMBER, accounts.OPERATOR)


def test_only_owners_or_the_operator_invite_and_reset_and_an_owner_s_reset_is_e_mailed(session: Session, acme) -> None:
    add_member(session, acme, "admin@example.com", Role.ADMIN)
    with pytest.raises(PermissionDenied):
        accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, "admin@example.com")
    with pytest.raises(PermissionDenied):
        accounts.reset_password(session, acme, OWNER, "admin@example.com", emailed=True)
    with pytest.raises(PermissionDenied):
        accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, "stranger@example.com")
    assert accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, OWNER)
    with pytest.raises(PermissionDenied, match="goes by e-mail"):
        accounts.reset_password(session, acme, "admin@example.com", OWNER)
    assert accounts.reset_password(session, acme, "admin@example.com", OWNER, emailed=True)


def test_inviting_a_member_again_keeps_their_role(session: Session, acme) -> None:
    accounts.accept_invitation(session, accounts.invite(session, acme, NEW_MEMBER, Role.ADMIN, OWNER), PASSWORD)
    account = accounts.accept_invitation(
        session, accounts.invite(session, acme, NEW_MEMBER, Role.OWNER, accounts.OPERATOR), PASSWORD
    )
    assert [role for _, role in accounts.memberships(session, account)] == [Role.ADMIN]


def test_an_invitation_never_replaces_an_existing_password(session: Session, acme) -> None:
    """Whoever holds an invitation for someone who already signs in (here an owner of another
    organization who invited them) must know their password to use it."""
    make_account(session, acme, NEW_MEMBER, Role.MEMBER)
    other = make_organization(session, "Other", owner="mallory@example.com")
    token = accounts.invite(session, other, NEW_MEMBER, Role.MEMBER, "mallory@example.com")
    assert accounts.account_has_password(session, NEW_MEMBER)

    with pytest.raises(accounts.InvalidCredentials):
        accounts.accept_invitation(session, token, "mallory's new password", "mallory's new password")
    assert accounts.link_form(session, token).email == NEW_MEMBER  # still unused
    account = accounts.accept_invitation(session, token, PASSWORD)
    assert [o.name for o, _ in accounts.memberships(session, account)] == ["Acme", "Other"]
    assert accounts.sign_in(session, NEW_MEMBER, PASSWORD, ADDRESS).id == account.id


@pytest.mark.parametrize("known_as", ["member", "invited first"])
def test_a_link_shown_to_an_owner_sets_no_password_for_an_e_mail_another_organization_knows(
    session: Session, acme, known_as: str
) -> None:
    other = make_organization(session, "Other", owner="bob@example.com")
    if known_as == "member":
        add_member(session, other, NEW_MEMBER, Role.MEMBER)
    else:
        accounts.invite(session, other, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR)
    token = accounts.invite(session, acme, NEW_MEMBER, Role.OWNER, OWNER)  # shown to the owner
    assert accounts.link_form(session, token).asks is Asks.EITHER  # the same page for every e-mail
    with pytest.raises(accounts.InvalidCredentials):
        accounts.accept_invitation(session, token, "the owner's choice", "the owner's choice")
    assert not accounts.account_has_password(session, NEW_MEMBER)
    assert NEW_MEMBER not in _member_roles(session, acme)


def test_a_link_shown_to_an_owner_sets_a_first_password_only_for_an_e_mail_nobody_else_knows(
    session: Session, acme
) -> None:
    token = accounts.invite(session, acme, NEW_MEMBER, Role.ADMIN, OWNER)
    later = make_organization(session, "Later", owner="bob@example.com")
    accounts.invite(session, later, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR)  # after Acme's: no claim
    with pytest.raises(accounts.PasswordsDiffer):
        accounts.accept_invitation(session, token, PASSWORD, "another one entirely")
    account = accounts.accept_invitation(session, token, PASSWORD, PASSWORD)
    assert account.password_channel is Channel.INVITER
    assert [(o.name, r) for o, r in accounts.memberships(session, account)] == [("Acme", Role.ADMIN)]


def test_an_account_an_owner_set_up_reaches_only_what_it_accepted_until_a_trusted_link_sets_its_password(
    session: Session, acme
) -> None:
    squatted = accounts.accept_invitation(
        session, accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, OWNER), "x" * 12
    )
    victim = make_organization(session, "Victim", owner=NEW_MEMBER)  # the operator founds it for the e-mail
    token = accounts.start_session(session, squatted)
    assert [o.name for o, _ in accounts.memberships(session, squatted)] == ["Acme"]
    # Another owner's invitation that the account accepts with its password: reached.
    third = make_organization(session, "Third", owner="carol@example.com")
    accounts.accept_invitation(
        session, accounts.invite(session, third, NEW_MEMBER, Role.MEMBER, "carol@example.com"), "x" * 12
    )
    assert [o.name for o, _ in accounts.memberships(session, squatted)] == ["Acme", "Third"]

    founders_link = accounts.invite(session, victim, NEW_MEMBER, Role.OWNER, accounts.OPERATOR)
    assert accounts.link_form(session, founders_link).asks is Asks.NEW_PASSWORD
    account = accounts.accept_invitation(session, founders_link, PASSWORD)
    assert account.password_channel is Channel.OPERATOR
    assert [o.name for o, _ in accounts.memberships(session, account)] == ["Acme", "Third", "Victim"]
    assert accounts.session_account(session, token, LIFETIME) is None  # the squatter is out


def test_with_an_smtp_server_an_owner_s_invitation_is_trusted(session: Session, acme) -> None:
    other = make_organization(session, "Other", owner="bob@example.com")
    add_member(session, other, NEW_MEMBER, Role.MEMBER)
    token = accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, OWNER, emailed=True)
    assert accounts.link_form(session, token).asks is Asks.NEW_PASSWORD  # only the mailbox has it
    account = accounts.accept_invitation(session, token, PASSWORD)
    assert account.password_channel is Channel.EMAIL
    assert [o.name for o, _ in accounts.memberships(session, account)] == ["Acme", "Other"]


def test_the_pending_invitations_are_not_those_of_members(session: Session, acme) -> None:
    """Whether a member used their link (the founder's, a new one) would tell whether they set a password."""
    accounts.invite(session, acme, OWNER, Role.OWNER, accounts.OPERATOR)
    add_member(session, acme, "added@example.com", Role.MEMBER)
    accounts.invite(session, acme, "added@example.com", Role.MEMBER, OWNER)
    accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, OWNER)
    assert [invitation.email for invitation in accounts.pending_invitations(session, acme)] == [NEW_MEMBER]


def test_cancelling_an_invitation(session: Session, acme) -> None:
    token = accounts.invite(session, acme, NEW_MEMBER, Role.ADMIN, OWNER)
    [pending] = accounts.pending_invitations(session, acme)
    other = make_organization(session, "Other", owner="bob@example.com")
    with pytest.raises(NotFound):
        accounts.cancel_invitation(session, other, pending.id, "bob@example.com")
    with pytest.raises(PermissionDenied):
        accounts.cancel_invitation(session, acme, pending.id, "bob@example.com")
    accounts.cancel_invitation(session, acme, pending.id, OWNER)
    with pytest.raises(accounts.InvalidInvitation):
        accounts.link_form(session, token)
    with pytest.raises(NotFound):
        accounts.cancel_invitation(session, acme, pending.id, OWNER)
    assert audit_rows(session, "member.invitation_cancelled") == [
        (acme.id, OWNER, {"email": NEW_MEMBER, "role": "admin"})
    ]


def test_confirming_an_invitation_with_a_password_is_throttled_like_a_sign_in(session: Session, acme) -> None:
    make_account(session, acme, NEW_MEMBER, Role.MEMBER)
    token = accounts.invite(session, make_organization(session, "Other"), NEW_MEMBER, Role.MEMBER, OWNER)
    for _ in range(accounts.MAX_FAILURES):
        with pytest.raises(accounts.InvalidCredentials):
            accounts.accept_invitation(session, token, "a guess at it", client_address=ADDRESS)
    with pytest.raises(accounts.TooManyAttempts, match="try again in 15 minutes"):
        accounts.accept_invitation(session, token, PASSWORD, client_address=ADDRESS)
    with pytest.raises(accounts.TooManyAttempts):
        accounts.sign_in(session, NEW_MEMBER, PASSWORD, ADDRESS)
    assert accounts.sign_in(session, NEW_MEMBER, PASSWORD, "198.51.100.1").email == NEW_MEMBER  # elsewhere
    assert [detail for _, _, detail in audit_rows(session, "sign_in_failed")][:1] == [{"client_address": ADDRESS}]


# --- passwords -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "at least 12 characters"),
        ("eleven char", "at least 12 characters"),
        ("x" * 1025, "at most 1024 characters"),
        ("new@example.com", "must not be your e-mail"),
        (" NEW@example.COM ", "must not be your e-mail"),
    ],
)
def test_the_password_policy(session: Session, acme, password: str, message: str) -> None:
    token = accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, accounts.OPERATOR)
    with pytest.raises(accounts.WeakPassword, match=message):
        accounts.accept_invitation(session, token, password)
    assert accounts.link_form(session, token).email == NEW_MEMBER  # a weak password uses nothing up
    assert accounts.accept_invitation(session, token, "twelve chars").email == NEW_MEMBER


def test_passwords_are_argon2id_with_owasp_parameters(session: Session, acme) -> None:
    account = make_account(session, acme)
    assert account.password_hash is not None
    assert account.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORD not in account.password_hash
    assert passwords.verify(account.password_hash, PASSWORD)
    assert not passwords.verify(account.password_hash, PASSWORD + "!")
    assert not passwords.verify("not a hash", PASSWORD)
    assert not passwords.verify(None, PASSWORD)


def test_a_hash_with_old_parameters_is_replaced_at_sign_in(session: Session, acme) -> None:
    account = make_account(session, acme)
    weaker = passwords.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    account.password_hash = weaker.hash(PASSWORD)
    assert passwords.needs_rehash(account.password_hash)
    accounts.sign_in(session, OWNER, PASSWORD, ADDRESS)
    assert account.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert not passwords.needs_rehash(account.password_hash)


# --- signing in ----------------------------------------------------------------------------


def test_unknown_e_mails_get_the_same_answer_after_the_same_work(
    session: Session, acme, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_account(session, acme)
    add_member(session, acme, "invited@example.com", Role.MEMBER)  # a member without a password yet
    verified: list[str] = []

    class CountingHasher:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def verify(self, password_hash: str, password: str) -> bool:
            verified.append(password_hash)
            return real.verify(password_hash, password)

    real = passwords.HASHER
    monkeypatch.setattr(passwords, "HASHER", CountingHasher())
    answers = []
    for email in (OWNER, "nobody@example.com", "invited@example.com"):
        with pytest.raises(accounts.InvalidCredentials) as raised:
            accounts.sign_in(session, email, "not the password", ADDRESS)
        answers.append((type(raised.value), str(raised.value)))
    assert answers == [(accounts.InvalidCredentials, "wrong e-mail or password")] * 3
    # One argon2id verification each, with the same parameters: the dummy hash stands in.
    assert len(verified) == 3
    assert len({password_hash.rsplit("$", 2)[0] for password_hash in verified}) == 1


def test_five_failures_for_an_e_mail_from_one_address_in_15_minutes_then_try_again_later(
    session: Session, acme, clock
) -> None:
    make_account(session, acme)
    for _ in range(accounts.MAX_FAILURES):
        fail(session)
        clock.shift(dt.timedelta(minutes=2))  # failures at 0, 2, 4, 6 and 8 minutes; now 10

    with pytest.raises(accounts.TooManyAttempts, match="try again in 5 minutes") as raised:
        accounts.sign_in(session, OWNER, PASSWORD, ADDRESS)  # even right
    assert raised.value.retry_after_minutes == 5
    assert counted(session) == [accounts.MAX_FAILURES, accounts.MAX_FAILURES]  # a refusal is no failure
    assert accounts.sign_in(session, OWNER, PASSWORD, "198.51.100.1").email == OWNER  # from elsewhere

    clock.shift(dt.timedelta(minutes=5))  # the window of the first failure is over
    assert accounts.sign_in(session, OWNER, PASSWORD, ADDRESS).email == OWNER


def test_the_wait_is_rounded_up_to_a_minute(session: Session, acme, clock) -> None:
    make_account(session, acme)
    for _ in range(accounts.MAX_FAILURES):
        fail(session)
    clock.shift(dt.timedelta(minutes=14, seconds=30))
    with pytest.raises(accounts.TooManyAttempts, match="try again in 1 minute$"):
        accounts.sign_in(session, OWNER, PASSWORD, ADDRESS)


def test_unknown_e_mails_are_throttled_alike(session: Session) -> None:
    for _ in range(accounts.MAX_FAILURES):
        fail(session, "nobody@example.com")
    with pytest.raises(accounts.TooManyAttempts, match="try again in 15 minutes"):
        accounts.sign_in(session, "nobody@example.com", "whatever it is", ADDRESS)


def test_a_success_forgets_the_failures_counted_with_it(session: Session, acme) -> None:
    make_account(session, acme)
    for _ in range(accounts.MAX_FAILURES - 1):
        fail(session)
    accounts.sign_in(session, OWNER, PASSWORD, ADDRESS)
    for _ in range(accounts.MAX_FAILURES - 1):
        fail(session)
    assert accounts.sign_in(session, OWNER, PASSWORD, ADDRESS).email == OWNER


def test_failures_from_one_address_with_other_e_mails_never_refuse_the_owner(session: Session, acme) -> None:
    make_account(session, acme)
    for n in range(3 * accounts.MAX_ACCOUNT_FAILURES):
        fail(session, f"guess{n}@example.com")
    assert accounts.sign_in(session, OWNER, PASSWORD, ADDRESS).email == OWNER


def test_guessing_spread_over_addresses_closes_the_account_to_new_browsers_only(session: Session, acme, clock) -> None:
    make_account(session, acme)
    addresses = [f"203.0.113.{n}" for n in range(accounts.MAX_ACCOUNT_FAILURES // accounts.MAX_FAILURES)]
    for address in addresses:
        for _ in range(accounts.MAX_FAILURES):
            fail(session, OWNER, address)
    with pytest.raises(accounts.TooManyAttempts):
        accounts.sign_in(session, OWNER, PASSWORD, "192.0.2.1")  # a new browser, anywhere
    # The owner's own browser, which signed in before, is counted apart: nobody else locks it out.
    assert accounts.sign_in(session, OWNER, PASSWORD, addresses[0], known_browser="owner-laptop").email == OWNER
    for _ in range(accounts.MAX_FAILURES):  # its own failures lock it alone
        with pytest.raises(accounts.InvalidCredentials):
            accounts.sign_in(session, OWNER, "not the password", "192.0.2.1", known_browser="owner-laptop")
    with pytest.raises(accounts.TooManyAttempts):
        accounts.sign_in(session, OWNER, PASSWORD, "192.0.2.1", known_browser="owner-laptop")
    assert accounts.sign_in(session, OWNER, PASSWORD, "192.0.2.1", known_browser="owner-phone").email == OWNER
    clock.shift(accounts.FAILURE_WINDOW)
    assert accounts.sign_in(session, OWNER, PASSWORD, "192.0.2.1").email == OWNER


def test_counters_whose_window_is_over_are_deleted(session: Session, clock) -> None:
    fail(session, "a@example.com")
    clock.shift(accounts.FAILURE_WINDOW)
    fail(session, "b@example.com")
    assert counted(session) == [1, 1]  # b's two counters; a's are gone
    assert session.scalar(select(func.min(SignInThrottle.window_started_at))) == utcnow()


def test_sign_ins_and_failures_are_audited_in_each_organization_of_the_account(session: Session, acme) -> None:
    other = make_organization(session, "Other", owner="x@example.com")
    make_account(session, acme)
    add_member(session, other, OWNER, Role.MEMBER)
    fail(session)
    fail(session, "nobody@example.com")  # belongs nowhere: nothing to audit
    accounts.sign_in(session, OWNER, PASSWORD, ADDRESS)
    expected = [(acme.id, OWNER, {"client_address": ADDRESS}), (other.id, OWNER, {"client_address": ADDRESS})]
    assert audit_rows(session, "sign_in_failed") == expected
    assert audit_rows(session, "signed_in") == expected


# --- sessions ------------------------------------------------------------------------------


def test_a_new_session_token_at_every_sign_in(session: Session, acme) -> None:
    account = make_account(session, acme)
    first, second = accounts.start_session(session, account), accounts.start_session(session, account)
    assert first != second and len(first) == 43
    assert (
        accounts.session_account(session, first, LIFETIME)
        == accounts.session_account(session, second, LIFETIME)
        == account
    )
    assert accounts.session_account(session, "no-such-token", LIFETIME) is None


def test_a_session_ends_after_12_hours_idle(session: Session, acme, clock) -> None:
    account = make_account(session, acme)
    token = accounts.start_session(session, account)
    for _ in range(3):  # in use: each request moves the idle time on
        clock.shift(dt.timedelta(hours=11))
        assert accounts.session_account(session, token, LIFETIME) == account
    clock.shift(accounts.SESSION_IDLE + dt.timedelta(seconds=1))
    assert accounts.session_account(session, token, LIFETIME) is None
    clock.shift(-accounts.SESSION_IDLE)  # ended for good, even if the clock went back
    assert accounts.session_account(session, token, LIFETIME) is None
    assert session.scalar(select(WebSession.ended_at)) is not None


def test_a_session_ends_at_its_lifetime_however_active(session: Session, acme, clock) -> None:
    account = make_account(session, acme)
    token = accounts.start_session(session, account)
    for _ in range(13):  # a request every 12 hours: never idle, 6.5 days
        clock.shift(dt.timedelta(hours=12))
        assert accounts.session_account(session, token, LIFETIME) == account
    clock.shift(dt.timedelta(hours=12))
    assert accounts.session_account(session, token, LIFETIME) is None
    clock.shift(-dt.timedelta(days=1))  # ended for good
    assert accounts.session_account(session, token, LIFETIME) is None


def test_setting_a_password_ends_every_session_of_the_account(session: Session, acme) -> None:
    account = make_account(session, acme)
    other = make_account(session, acme, NEW_MEMBER, Role.MEMBER)
    tokens = [accounts.start_session(session, account) for _ in range(3)]
    someone_else = accounts.start_session(session, other)
    accounts.accept_invitation(session, accounts.reset_password(session, acme, OWNER, accounts.OPERATOR), "x" * 12)
    assert [accounts.session_account(session, token, LIFETIME) for token in tokens] == [None] * 3
    assert accounts.session_account(session, someone_else, LIFETIME) == other
    # Joining with the password one has sets nothing, and ends nothing.
    kept = accounts.start_session(session, account)
    elsewhere = make_organization(session, "Elsewhere", owner="z@example.com")
    accounts.accept_invitation(
        session, accounts.invite(session, elsewhere, OWNER, Role.MEMBER, "z@example.com"), "x" * 12
    )
    assert accounts.session_account(session, kept, LIFETIME) == account


def test_signing_out_ends_the_session_and_is_audited(session: Session, acme) -> None:
    account = make_account(session, acme)
    token, other = accounts.start_session(session, account), accounts.start_session(session, account)
    accounts.end_session(session, token)
    accounts.end_session(session, token)  # again: nothing more happens
    accounts.end_session(session, "no-such-token")
    assert accounts.session_account(session, token, LIFETIME) is None
    assert accounts.session_account(session, other, LIFETIME) == account  # another browser stays signed in
    assert audit_rows(session, "signed_out") == [(acme.id, OWNER, {})]


def test_memberships_across_organizations(session: Session, acme) -> None:
    zeta = make_organization(session, "Zeta", owner="z@example.com")
    beta = make_organization(session, "Beta", owner="b@example.com")
    account = make_account(session, acme)
    add_member(session, zeta, OWNER, Role.MEMBER)
    add_member(session, beta, OWNER, Role.ADMIN)
    assert [(o.name, r) for o, r in accounts.memberships(session, account)] == [
        ("Acme", Role.OWNER),
        ("Beta", Role.ADMIN),
        ("Zeta", Role.MEMBER),
    ]


# --- what is stored ------------------------------------------------------------------------


def test_no_token_or_password_reaches_any_table(session: Session, engine: Engine, acme) -> None:
    invitation = accounts.invite(session, acme, NEW_MEMBER, Role.MEMBER, OWNER)
    account = accounts.accept_invitation(session, invitation, PASSWORD)
    reset = accounts.reset_password(session, acme, NEW_MEMBER, accounts.OPERATOR)
    unused = accounts.invite(session, acme, "later@example.com", Role.MEMBER, accounts.OPERATOR)
    fail(session, NEW_MEMBER)
    web_session = accounts.start_session(session, accounts.sign_in(session, NEW_MEMBER, PASSWORD, ADDRESS))
    accounts.end_session(session, accounts.start_session(session, account))
    session.flush()

    dump = table_dump(session, engine)
    for secret in (invitation, reset, unused, web_session, PASSWORD, "not the password"):
        assert secret not in dump
    assert accounts._digest(web_session) in dump  # what is kept instead


def test_audit_rows_of_invitations_and_links(session: Session, acme) -> None:
    token = accounts.invite(session, acme, NEW_MEMBER, Role.ADMIN, OWNER)
    accounts.accept_invitation(session, token, PASSWORD)
    reset = accounts.reset_password(session, acme, NEW_MEMBER, accounts.OPERATOR)
    accounts.accept_invitation(session, reset, "a brand new passphrase")
    assert audit_rows(session, "member.invited") == [(acme.id, OWNER, {"email": NEW_MEMBER, "role": "admin"})]
    assert audit_rows(session, "member.joined") == [(acme.id, NEW_MEMBER, {"email": NEW_MEMBER, "role": "admin"})]
    assert audit_rows(session, "member.password_reset") == [(acme.id, accounts.OPERATOR, {"email": NEW_MEMBER})]
    assert audit_rows(session, "member.password_changed") == [(acme.id, NEW_MEMBER, {"email": NEW_MEMBER})]


# --- the web secret and the settings -------------------------------------------------------


def test_the_configured_web_secret_wins(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'u.db'}", web_secret="from-the-environment")
    assert web_secret(settings) == "from-the-environment"
    assert not (tmp_path / SECRET_FILE).exists()
    assert "from-the-environment" not in repr(settings)


def test_on_the_embedded_database_the_web_secret_is_made_once_beside_it(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'data' / 'u.db'}")
    secret = web_secret(settings)
    path = tmp_path / "data" / SECRET_FILE
    assert len(secret) >= 43 and path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert web_secret(settings) == secret
    assert sorted(p.name for p in path.parent.iterdir()) == [SECRET_FILE]  # no draft left behind

    os.chmod(path, 0o644)
    with pytest.raises(UserError, match="can be read by other users"):
        web_secret(settings)


def test_postgresql_needs_a_web_secret() -> None:
    with pytest.raises(UserError, match="USERPATH_WEB_SECRET is not set") as raised:
        web_secret(Settings(database_url="postgresql://u@db.internal/userpath"))
    assert len(str(raised.value).splitlines()) == 1


@pytest.mark.parametrize(
    "url", ["https://userpath.example.com", "http://127.0.0.1:8000", "https://example.com/userpath"]
)
def test_web_base_url(url: str) -> None:
    assert Settings(web_base_url=url).web_base_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://userpath.example.com/", "must not end with a slash"),
        ("ftp://userpath.example.com", "http:// or https://"),
        ("userpath.example.com", "http:// or https://"),
        ("https://", "http:// or https://"),
    ],
)
def test_web_base_url_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(web_base_url=url)


def test_web_settings_defaults() -> None:
    settings = Settings()
    assert (settings.web_base_url, settings.web_secret, settings.smtp_url) == ("http://127.0.0.1:8000", None, None)
    assert "smtp_url" not in repr(Settings(smtp_url="smtp://user:secret@mail.example.com"))
