"""Signing in and out, sessions, invitation links and the organization switcher (issue 13, item 2)."""

from __future__ import annotations

import datetime as dt
import re

import time_machine
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tests.common.web import OWNER, PASSWORD, Browser, People, web_settings
from userpath_worker.accounts import services as accounts
from userpath_worker.accounts.models import WebSession
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import utcnow
from userpath_worker.organizations.models import Organization, Role
from userpath_worker.web.app import SESSION_COOKIE, create_app
from userpath_worker.web.context import SESSION_TOKEN


def session_token(browser: Browser) -> str | None:
    with browser.client.session_transaction() as flask_session:
        return flask_session.get(SESSION_TOKEN)


def test_healthz_answers_ok(browser: Browser) -> None:
    response = browser.get("/healthz")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "ok"


def test_the_sign_in_page_has_the_fields_the_documentation_names(browser: Browser) -> None:
    html = browser.get("/sign-in").get_data(as_text=True)
    assert 'name="email"' in html and 'name="password"' in html and 'id="sign-in"' in html


def test_signing_in_leads_to_the_first_organizations_keys_page(browser: Browser, people: People) -> None:
    org_id = people.organization()
    response = browser.sign_in()
    assert response.headers["Location"] == "/"
    landing = browser.get("/")
    assert landing.headers["Location"] == f"/orgs/{org_id}/settings/api-keys"
    assert "API Keys" in browser.get(landing.headers["Location"]).get_data(as_text=True)


def test_pages_ask_whoever_is_not_signed_in_to_sign_in(browser: Browser, people: People) -> None:
    org_id = people.organization()
    for path in ("/", f"/orgs/{org_id}/settings/api-keys", f"/orgs/{org_id}/settings/members"):
        response = browser.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/sign-in")
    refused = browser.post(f"/orgs/{org_id}/settings/api-keys", {"name": "x", "environment": "live", "expiry": "never"})
    assert refused.status_code == 302 and refused.headers["Location"].startswith("/sign-in")


def test_an_unknown_email_and_a_wrong_password_get_the_same_answer(browser: Browser, people: People) -> None:
    people.organization()
    wrong = browser.post("/sign-in", {"email": OWNER, "password": "not the password at all"})
    unknown = browser.post("/sign-in", {"email": "nobody@example.com", "password": "not the password at all"})
    assert wrong.status_code == unknown.status_code == 401
    message = "wrong e-mail or password"

    def error(html: str) -> str:
        return re.search(r'<p class="error"[^>]*>(.*?)</p>', html, re.S).group(1)  # type: ignore[union-attr]

    assert error(wrong.get_data(as_text=True)) == error(unknown.get_data(as_text=True)) == message
    assert session_token(browser) is None


def test_five_failures_then_429_with_try_again_in_minutes(browser: Browser, people: People) -> None:
    people.organization()
    for _ in range(accounts.MAX_FAILURES):
        assert browser.post("/sign-in", {"email": OWNER, "password": "wrong password!!"}).status_code == 401
    throttled = browser.post("/sign-in", {"email": OWNER, "password": PASSWORD})  # even the right one
    assert throttled.status_code == 429
    assert re.search(r"try again in \d+ minutes?", throttled.get_data(as_text=True))
    assert int(throttled.headers["Retry-After"]) > 0
    assert session_token(browser) is None


def test_sign_ins_and_failures_are_audit_logged(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.post("/sign-in", {"email": OWNER, "password": "wrong password!!"})
    browser.sign_in()
    browser.post("/sign-out")
    with Session(people.engine) as session:
        actions = session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.org_id == org_id, AuditEntry.actor == OWNER)
            .order_by(AuditEntry.id)
        ).all()
    assert actions[-3:] == ["sign_in_failed", "signed_in", "signed_out"]


def test_sign_in_starts_a_new_session_and_nothing_of_the_one_before_carries_over(
    browser: Browser, people: People
) -> None:
    people.organization()
    with browser.client.session_transaction() as flask_session:
        flask_session[SESSION_TOKEN] = "planted-by-an-attacker"
    anonymous_csrf = browser.csrf_token()
    browser.sign_in()
    first = session_token(browser)
    assert first and first != "planted-by-an-attacker"
    # The CSRF secret of the anonymous session is gone with it.
    stale = browser.post("/sign-out", {"csrf_token": anonymous_csrf})
    assert stale.status_code == 400
    browser.sign_in()
    assert session_token(browser) not in (None, first)
    with Session(people.engine) as session:
        assert accounts.session_account(session, first, dt.timedelta(days=7)) is None  # the earlier one ended


def test_sign_out_ends_the_session_even_for_a_copied_cookie(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    cookie = browser.client.get_cookie(SESSION_COOKIE)
    assert cookie is not None
    assert browser.post("/sign-out").headers["Location"].startswith("/sign-in")
    assert browser.get(f"/orgs/{org_id}/settings/api-keys").status_code == 302
    # Someone who kept a copy of the cookie is not signed in either.
    browser.client.set_cookie(SESSION_COOKIE, cookie.value)
    assert browser.get(f"/orgs/{org_id}/settings/api-keys").status_code == 302


def test_a_session_idle_for_12_hours_ends(browser: Browser, people: People) -> None:
    org_id = people.organization()
    keys_page = f"/orgs/{org_id}/settings/api-keys"
    with time_machine.travel(utcnow(), tick=False) as traveller:
        browser.sign_in()
        traveller.shift(dt.timedelta(hours=11, minutes=59))
        assert browser.get(keys_page).status_code == 200  # activity: the idle time starts again
        traveller.shift(dt.timedelta(hours=11, minutes=59))
        assert browser.get(keys_page).status_code == 200
        traveller.shift(accounts.SESSION_IDLE + dt.timedelta(minutes=1))
        response = browser.get(keys_page)
    assert response.status_code == 302 and response.headers["Location"].startswith("/sign-in")
    with Session(people.engine) as session:
        assert session.scalar(select(WebSession.ended_at)) is not None


def invite(people: People, org_id: int, email: str, role: Role = Role.MEMBER) -> str:
    with Session(people.engine) as session, session.begin():
        return accounts.invite(session, session.get_one(Organization, org_id), email, role, OWNER)


def test_an_invitation_sets_the_password_and_signs_in(browser: Browser, people: People) -> None:
    org_id = people.organization()
    token = invite(people, org_id, "new@example.com")
    form = browser.get(f"/invitations/{token}").get_data(as_text=True)
    for name in ('name="password"', 'name="password_confirmation"', 'id="set-password"', "new@example.com"):
        assert name in form
    response = browser.post(
        f"/invitations/{token}", {"password": "a long new password", "password_confirmation": "a long new password"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/orgs/{org_id}/settings/api-keys"  # the organization joined
    assert session_token(browser) is not None
    # The link is used: it works once.
    assert browser.get(f"/invitations/{token}").status_code == 404
    other = Browser(browser.client.application.test_client())
    assert other.sign_in("new@example.com", "a long new password").status_code == 302


def test_an_invitation_refuses_mismatched_and_weak_passwords(browser: Browser, people: People) -> None:
    org_id = people.organization()
    token = invite(people, org_id, "new@example.com")
    differ = browser.post(
        f"/invitations/{token}", {"password": "a long new password", "password_confirmation": "another long one"}
    )
    assert differ.status_code == 400 and "differ" in differ.get_data(as_text=True)
    weak = browser.post(f"/invitations/{token}", {"password": "short", "password_confirmation": "short"})
    assert weak.status_code == 400 and "12 characters" in weak.get_data(as_text=True)
    assert session_token(browser) is None
    assert browser.get(f"/invitations/{token}").status_code == 200  # still usable


def test_an_unknown_or_expired_invitation_is_refused(browser: Browser, people: People) -> None:
    org_id = people.organization()
    assert browser.get("/invitations/not-a-token").status_code == 404
    token = invite(people, org_id, "new@example.com")
    with time_machine.travel(utcnow() + accounts.INVITATION_LIFETIME + dt.timedelta(minutes=1)):
        assert browser.get(f"/invitations/{token}").status_code == 404


def test_an_invitation_for_someone_who_has_a_password_asks_for_it(browser: Browser, people: People) -> None:
    people.organization("First")
    second = people.organization("Second", owner="other@example.com")
    with Session(people.engine) as session, session.begin():
        token = accounts.invite(session, session.get_one(Organization, second), OWNER, Role.ADMIN, accounts.OPERATOR)
    form = browser.get(f"/invitations/{token}").get_data(as_text=True)
    assert 'name="password_confirmation"' not in form and "You already sign in" in form
    assert browser.post(f"/invitations/{token}", {"password": "not my password!"}).status_code == 401
    accepted = browser.post(f"/invitations/{token}", {"password": PASSWORD})
    assert accepted.status_code == 302 and accepted.headers["Location"] == f"/orgs/{second}/settings/api-keys"


def test_an_owner_s_invitation_link_asks_the_same_of_everyone(browser: Browser, people: People) -> None:
    """A link shown to an owner: the account's password, or a new one twice; the page does not say
    which the e-mail needs."""
    people.organization("First")
    second = people.organization("Second", owner="other@example.com")
    with Session(people.engine) as session, session.begin():
        token = accounts.invite(session, session.get_one(Organization, second), OWNER, Role.ADMIN, "other@example.com")
    form = browser.get(f"/invitations/{token}").get_data(as_text=True)
    assert 'name="password_confirmation"' in form and "If you already sign in" in form
    assert browser.post(f"/invitations/{token}", {"password": "not my password!"}).status_code == 401
    assert browser.post(f"/invitations/{token}", {"password": PASSWORD}).status_code == 302


def test_a_reset_link_sets_a_new_password(browser: Browser, people: People) -> None:
    org_id = people.organization()
    with Session(people.engine) as session, session.begin():
        token = accounts.reset_password(session, session.get_one(Organization, org_id), OWNER, accounts.OPERATOR)
    assert 'name="password_confirmation"' in browser.get(f"/invitations/{token}").get_data(as_text=True)
    new = "my brand new password"
    assert browser.post(f"/invitations/{token}", {"password": new, "password_confirmation": new}).status_code == 302
    assert Browser(browser.client.application.test_client()).sign_in(OWNER, new).status_code == 302


def test_a_member_of_several_organizations_switches_between_them(browser: Browser, people: People) -> None:
    first = people.organization("Alpha")
    second = people.organization("Beta", owner="other@example.com")
    people.member(second, OWNER, Role.MEMBER)
    browser.sign_in()
    html = browser.get(f"/orgs/{second}/settings/api-keys").get_data(as_text=True)
    switcher = re.search(r'<nav id="organizations".*?</nav>', html, re.S).group(0)  # type: ignore[union-attr]
    links = re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', switcher)
    assert links == [(f"/orgs/{first}/settings/api-keys", "Alpha"), (f"/orgs/{second}/settings/api-keys", "Beta")]
    assert 'aria-current="page">Beta' in switcher
    assert browser.get(f"/orgs/{first}/settings/api-keys").status_code == 200


def test_setting_a_password_ends_every_other_session(browser: Browser, people: People) -> None:
    """Reproduction 3: after a reset and a new password, a session stolen before kept answering 200."""
    org_id = people.organization()
    keys_page = f"/orgs/{org_id}/settings/api-keys"
    stolen = Browser(browser.client.application.test_client())
    stolen.sign_in()
    with Session(people.engine) as session, session.begin():
        token = accounts.reset_password(session, session.get_one(Organization, org_id), OWNER, accounts.OPERATOR)
    new = "my brand new password"
    assert browser.post(f"/invitations/{token}", {"password": new, "password_confirmation": new}).status_code == 302
    assert browser.get(keys_page).status_code == 200
    assert stolen.get(keys_page).status_code == 302
    with Session(people.engine) as session:
        assert session.scalar(select(func.count()).where(WebSession.ended_at.is_(None))) == 1


def test_a_session_ends_after_its_absolute_lifetime_however_active(browser: Browser, people: People) -> None:
    """Reproduction 3: a session row made to look a year old still worked."""
    org_id = people.organization()
    keys_page = f"/orgs/{org_id}/settings/api-keys"
    with time_machine.travel(utcnow(), tick=False) as traveller:
        browser.sign_in()
        for _ in range(13):  # busy every 12 hours, never idle: 6.5 days
            traveller.shift(dt.timedelta(hours=12))
            assert browser.get(keys_page).status_code == 200
        traveller.shift(dt.timedelta(hours=12))  # 7 days after signing in
        response = browser.get(keys_page)
    assert response.status_code == 302 and response.headers["Location"].startswith("/sign-in")


def test_the_absolute_lifetime_is_a_setting(web_engine: Engine, people: People) -> None:
    org_id = people.organization()
    app = create_app(web_settings(web_engine, web_session_lifetime_hours=1), web_engine)
    browser = Browser(app.test_client())
    with time_machine.travel(utcnow(), tick=False) as traveller:
        browser.sign_in()
        traveller.shift(dt.timedelta(minutes=59))
        assert browser.get(f"/orgs/{org_id}/settings/api-keys").status_code == 200
        traveller.shift(dt.timedelta(minutes=1))
        assert browser.get(f"/orgs/{org_id}/settings/api-keys").status_code == 302
