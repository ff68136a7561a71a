"""Membership with consent, through the real pages (issue 20, reproduction 1).

An invitation is pending, and grants nothing, until the invitee accepts it. Nothing an owner of one
organization sees or does reaches another organization or an account that is someone else's: a
link shown to an owner sets a first password only for an e-mail no other organization knows, with
an SMTP server links go to the invitee alone, and the pages say the same for every e-mail.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.smtp import SmtpServer
from tests.common.web import BASE_URL, CSRF_FIELD, PASSWORD, Browser, People, web_settings
from userpath_worker.audit.models import AuditEntry
from userpath_worker.organizations.models import Member, Role
from userpath_worker.web.app import create_app

ALICE = "alice@a.example"  # owner of OrgA: the attacker
BOB = "bob@b.example"  # owner of OrgB
CAROL = "carol@c.example"
STOLEN = "alice chose this for bob"
LINK = re.compile(re.escape(BASE_URL) + r"(/invitations/[A-Za-z0-9_-]+)")
TOKEN = re.compile(r"/invitations/[A-Za-z0-9_-]{43}")  # a link's path, whatever comes before it


def members_page(org_id: int) -> str:
    return f"/orgs/{org_id}/settings/members"


def keys_page(org_id: int) -> str:
    return f"/orgs/{org_id}/settings/api-keys"


def invite(browser: Browser, org_id: int, email: str, role: str = "member") -> str:
    """Invite ``email`` on the Members page; the page's HTML."""
    response = browser.post(members_page(org_id), {"email": email, "role": role})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def link_in(html: str) -> str:
    found = LINK.search(html)
    assert found, "no invitation link"
    return found.group(1)


def roles(people: People, org_id: int) -> dict[str, Role]:
    with Session(people.engine) as session:
        return dict(session.execute(select(Member.email, Member.role).where(Member.org_id == org_id)).all())  # type: ignore[arg-type]


def audit_log(people: People, org_id: int) -> list[tuple[str, str, dict]]:
    with Session(people.engine) as session:
        rows = session.execute(
            select(AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
            .where(AuditEntry.org_id == org_id)
            .order_by(AuditEntry.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def new_browser(app: Flask) -> Browser:
    return Browser(app.test_client())


def test_an_owner_cannot_take_over_another_organizations_owner_through_an_invitation(
    app: Flask, browser: Browser, people: People
) -> None:
    """Reproduction 1: Alice, owner of OrgA, invites Bob, who founded OrgB and has not opened his
    link yet; the page shows her the link; she opens it and sets Bob's first password."""
    org_a = people.organization("OrgA", owner=ALICE)
    org_b, bob_link = people.founded("OrgB", BOB)
    browser.sign_in(ALICE)
    link = link_in(invite(browser, org_a, BOB))

    alice_as_bob = new_browser(app)
    attempt = alice_as_bob.post(link, {"password": STOLEN, "password_confirmation": STOLEN})
    assert attempt.status_code in (400, 401), attempt.status_code
    assert alice_as_bob.get(keys_page(org_b)).status_code == 302  # to sign in: she is nobody
    create = {"name": "Alice's", "environment": "live", "expiry": "never"}
    assert alice_as_bob.post(keys_page(org_b), create).status_code == 302
    assert new_browser(app).post("/sign-in", {"email": BOB, "password": STOLEN}).status_code == 401
    # OrgB sees the attempt on its account; nobody joined anything.
    assert "sign_in_failed" in [action for actor, action, _ in audit_log(people, org_b) if actor == BOB]
    assert BOB not in roles(people, org_a)

    # Bob's own link still works: he sets his password and owns OrgB; Alice's link now asks for it.
    bob = new_browser(app)
    assert bob.get(bob_link).status_code == 200
    assert bob.post(bob_link, {"password": PASSWORD, "password_confirmation": PASSWORD}).status_code == 302
    assert bob.get(keys_page(org_b)).status_code == 200
    assert alice_as_bob.post(link, {"password": STOLEN, "password_confirmation": STOLEN}).status_code in (400, 401)
    assert alice_as_bob.get(keys_page(org_b)).status_code == 302


@pytest.fixture
def mailing_app(web_engine: Engine, smtp: SmtpServer) -> Flask:
    return create_app(web_settings(web_engine, smtp_url=smtp.url, smtp_from="userpath@a.example"), web_engine)


def test_with_smtp_an_invitation_goes_to_the_invitee_only(mailing_app: Flask, people: People, smtp: SmtpServer) -> None:
    """With USERPATH_SMTP_URL set, the inviting owner never sees the link: only Bob's mailbox does."""
    org_a = people.organization("OrgA", owner=ALICE)
    org_b, _ = people.founded("OrgB", BOB)
    alice = new_browser(mailing_app)
    alice.sign_in(ALICE)
    shown = invite(alice, org_a, BOB)
    assert not TOKEN.search(shown) and BOB in shown
    assert not TOKEN.search(alice.get(members_page(org_a)).get_data(as_text=True))

    [mail] = smtp.to(BOB)
    assert smtp.received == [mail] and mail.recipients == [BOB]
    body = mail.message.get_content()
    assert "OrgA" in body and ALICE in body
    link = link_in(body)

    # Bob, who reads his mailbox, sets his first password with it and joins OrgA; OrgB stays his.
    bob = new_browser(mailing_app)
    assert bob.post(link, {"password": PASSWORD, "password_confirmation": PASSWORD}).status_code == 302
    assert roles(people, org_a)[BOB] is Role.MEMBER
    assert bob.get(keys_page(org_a)).status_code == bob.get(keys_page(org_b)).status_code == 200
    assert (BOB, "member.joined", {"email": BOB, "role": "member"}) in audit_log(people, org_a)


def test_with_smtp_an_invitation_the_server_refuses_says_so_and_shows_no_link(
    mailing_app: Flask, people: People, smtp: SmtpServer
) -> None:
    org_a = people.organization("OrgA", owner=ALICE)
    alice = new_browser(mailing_app)
    alice.sign_in(ALICE)
    smtp.refuse_recipients.add(BOB)
    response = alice.post(members_page(org_a), {"email": BOB, "role": "member"})
    html = response.get_data(as_text=True)
    assert response.status_code == 502 and not TOKEN.search(html)
    assert "could not be e-mailed" in html and "invite again" in html
    assert smtp.received == []


def test_an_invitation_grants_nothing_until_it_is_accepted(app: Flask, browser: Browser, people: People) -> None:
    """Related: an invitation made Carol a member, even an owner, before she accepted; signing in,
    she landed on the inviting organization's keys page."""
    org_a = people.organization("OrgA", owner=ALICE)
    org_c = people.organization("OrgC", owner=CAROL)
    browser.sign_in(ALICE)
    link = link_in(invite(browser, org_a, CAROL, "owner"))
    assert CAROL not in roles(people, org_a)

    carol = new_browser(app)
    carol.sign_in(CAROL)
    assert carol.get("/").headers["Location"] == keys_page(org_c)
    assert carol.get(keys_page(org_a)).status_code == 404
    assert carol.get(members_page(org_a)).status_code == 404
    listed = browser.get(members_page(org_a)).get_data(as_text=True)
    assert re.search(r'<table id="invitations">.*carol@c\.example.*</table>', listed, re.S)

    joins_in_c = [row for row in audit_log(people, org_c) if row[1] == "member.joined"]
    accepted = carol.post(link, {"password": PASSWORD})
    assert accepted.status_code == 302 and accepted.headers["Location"] == keys_page(org_a)
    assert roles(people, org_a)[CAROL] is Role.OWNER
    assert carol.get(members_page(org_a)).status_code == 200
    assert (CAROL, "member.joined", {"email": CAROL, "role": "owner"}) in audit_log(people, org_a)
    assert [row for row in audit_log(people, org_c) if row[1] == "member.joined"] == joins_in_c  # not here


def test_an_owner_cancels_a_pending_invitation_and_its_link_stops_working(
    app: Flask, browser: Browser, people: People
) -> None:
    org_a = people.organization("OrgA", owner=ALICE)
    browser.sign_in(ALICE)
    link = link_in(invite(browser, org_a, CAROL))
    listed = browser.get(members_page(org_a)).get_data(as_text=True)
    [cancel] = re.findall(r'action="(/orgs/\d+/settings/members/invitations/\d+/cancel)"', listed)
    assert browser.post(cancel).status_code == 303
    after = browser.get(members_page(org_a)).get_data(as_text=True)
    assert "Cancelled the invitation of carol@c.example." in after and 'id="invitations"' not in after
    assert new_browser(app).get(link).status_code == 404
    assert ("alice@a.example", "member.invitation_cancelled", {"email": CAROL, "role": "member"}) in audit_log(
        people, org_a
    )


def test_another_organizations_invitation_cannot_be_cancelled(browser: Browser, people: People) -> None:
    org_a = people.organization("OrgA", owner=ALICE)
    org_b = people.organization("OrgB", owner=BOB)
    bob = new_browser(browser.client.application)
    bob.sign_in(BOB)
    link = link_in(invite(bob, org_b, CAROL))
    listed = bob.get(members_page(org_b)).get_data(as_text=True)
    their = re.findall(r"/settings/members/invitations/(\d+)/cancel", listed)
    browser.sign_in(ALICE)
    assert browser.post(f"{members_page(org_a)}/invitations/{their[0]}/cancel").status_code == 404
    assert browser.post(f"{members_page(org_b)}/invitations/{their[0]}/cancel").status_code == 404
    assert new_browser(browser.client.application).get(link).status_code == 200


def normalized(html: str, *variables: str) -> str:
    """The page without what may differ between two e-mails: the e-mail, the link's token, the CSRF
    token, and ids of rows."""
    for variable in variables:
        html = html.replace(variable, "VARIABLE")
    html = re.sub(r"/invitations/[A-Za-z0-9_-]+", "/invitations/TOKEN", html)
    html = re.sub(r"invitations/\d+/cancel", "invitations/ID/cancel", html)
    html = re.sub(r'data-invitation-id="\d+"', 'data-invitation-id="ID"', html)
    html = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "TIME", html)  # a minute may turn between two
    return CSRF_FIELD.sub("", html)


def test_the_pages_say_the_same_for_every_email(app: Flask, browser: Browser, people: People) -> None:
    """The Members page and the link told Alice which e-mails already had a password ('yes' or
    'invited'; 'Join with your password'): whom to target."""
    org_a = people.organization("OrgA", owner=ALICE)
    people.organization("OrgB", owner=BOB)  # has a password
    people.founded("OrgC", CAROL)  # a founder without one
    fresh = "dana@d.example"  # unknown everywhere
    browser.sign_in(ALICE)
    shown = {email: invite(browser, org_a, email) for email in (BOB, CAROL, fresh)}
    assert len({normalized(html, email) for email, html in shown.items()}) == 1

    listed = browser.get(members_page(org_a)).get_data(as_text=True)
    rows = {
        email: re.search(rf'<tr[^>]*>\s*<td class="email">{re.escape(email)}.*?</tr>', listed, re.S) for email in shown
    }
    assert all(rows.values()), listed
    assert len({normalized(row.group(0), email) for email, row in rows.items() if row}) == 1

    opened = {email: new_browser(app).get(link_in(html)) for email, html in shown.items()}
    assert {response.status_code for response in opened.values()} == {200}
    assert len({normalized(response.get_data(as_text=True), email) for email, response in opened.items()}) == 1


def test_a_link_shown_to_an_owner_sets_a_first_password_for_an_unknown_e_mail(
    app: Flask, browser: Browser, people: People
) -> None:
    org_a = people.organization("OrgA", owner=ALICE)
    browser.sign_in(ALICE)
    link = link_in(invite(browser, org_a, "dana@d.example", "admin"))
    dana = new_browser(app)
    joined = dana.post(link, {"password": PASSWORD, "password_confirmation": PASSWORD})
    assert joined.status_code == 302 and joined.headers["Location"] == keys_page(org_a)
    assert roles(people, org_a)["dana@d.example"] is Role.ADMIN
    assert new_browser(app).sign_in("dana@d.example").status_code == 302


def test_an_account_an_owner_set_up_reaches_no_other_organization_until_a_trusted_link_resets_it(
    app: Flask, browser: Browser, people: People
) -> None:
    """The other order: Alice invites an e-mail nobody knows yet and sets its password herself;
    later the operator founds OrgD for that e-mail. Alice's password reaches OrgA only, and the
    operator's link gives the account to whoever it was handed to, ending her sessions."""
    org_a = people.organization("OrgA", owner=ALICE)
    browser.sign_in(ALICE)
    dave = "dave@d.example"
    squatter = new_browser(app)
    squatters_link = link_in(invite(browser, org_a, dave))
    squatted = squatter.post(squatters_link, {"password": STOLEN, "password_confirmation": STOLEN})
    assert squatted.status_code == 302

    org_d, dave_link = people.founded("OrgD", dave)
    assert squatter.get(keys_page(org_d)).status_code == 404
    later = new_browser(app)
    later.sign_in(dave, STOLEN)
    assert later.get("/").headers["Location"] == keys_page(org_a)
    assert later.get(keys_page(org_d)).status_code == 404

    real_dave = new_browser(app)
    page = real_dave.get(dave_link).get_data(as_text=True)
    assert 'name="password_confirmation"' in page  # a new password, not the squatter's
    assert real_dave.post(dave_link, {"password": PASSWORD, "password_confirmation": PASSWORD}).status_code == 302
    assert real_dave.get(keys_page(org_d)).status_code == 200
    for ended in (squatter, later):
        assert ended.get(keys_page(org_a)).status_code == 302
    assert new_browser(app).post("/sign-in", {"email": dave, "password": STOLEN}).status_code == 401


def test_an_invitation_for_an_e_mail_another_organization_invited_first_asks_for_its_password(
    app: Flask, browser: Browser, people: People
) -> None:
    """Alice cannot claim an e-mail that OrgB invited before her, and cannot block it either."""
    org_a = people.organization("OrgA", owner=ALICE)
    org_b = people.organization("OrgB", owner=BOB)
    bob = new_browser(app)
    bob.sign_in(BOB)
    erin = "erin@e.example"
    erins_link = link_in(invite(bob, org_b, erin))
    browser.sign_in(ALICE)
    alices_link = link_in(invite(browser, org_a, erin))
    assert new_browser(app).post(alices_link, {"password": STOLEN, "password_confirmation": STOLEN}).status_code in (
        400,
        401,
    )
    erin_browser = new_browser(app)
    assert erin_browser.post(erins_link, {"password": PASSWORD, "password_confirmation": PASSWORD}).status_code == 302
    assert erin_browser.get(keys_page(org_b)).status_code == 200
    # Now Alice's invitation asks for Erin's password, which only Erin knows.
    assert erin_browser.post(alices_link, {"password": PASSWORD}).status_code == 302
    assert erin_browser.get(keys_page(org_a)).status_code == 200


def test_with_smtp_an_owner_e_mails_a_member_a_reset_link_and_never_sees_it(
    mailing_app: Flask, people: People, smtp: SmtpServer
) -> None:
    org_a = people.organization("OrgA", owner=ALICE)
    people.member(org_a, CAROL, Role.MEMBER)
    carol_elsewhere = new_browser(mailing_app)
    carol_elsewhere.sign_in(CAROL)
    alice = new_browser(mailing_app)
    alice.sign_in(ALICE)
    listed = alice.get(members_page(org_a)).get_data(as_text=True)
    [reset] = re.findall(rf'action="(/orgs/{org_a}/settings/members/\d+/reset-password)"', listed.split(CAROL, 1)[1])
    sent = alice.post(reset, follow_redirects=True)
    assert sent.status_code == 200 and f"E-mailed {CAROL} a link" in sent.get_data(as_text=True)
    assert not TOKEN.search(sent.get_data(as_text=True))
    [mail] = smtp.to(CAROL)
    new = "carol's new password"
    carol = new_browser(mailing_app)
    assert (
        carol.post(link_in(mail.message.get_content()), {"password": new, "password_confirmation": new}).status_code
        == 302
    )
    assert carol_elsewhere.get(keys_page(org_a)).status_code == 302  # every other session ended
    assert new_browser(mailing_app).sign_in(CAROL, new).status_code == 302


def test_without_smtp_no_page_resets_a_password(browser: Browser, people: People) -> None:
    """A reset link shown to an owner would hand them the member's account, and its other
    organizations with it."""
    org_a = people.organization("OrgA", owner=ALICE)
    people.member(org_a, CAROL, Role.MEMBER)
    browser.sign_in(ALICE)
    assert "reset-password" not in browser.get(members_page(org_a)).get_data(as_text=True)
    with Session(people.engine) as session:
        carol_id = session.scalars(select(Member.id).where(Member.org_id == org_a, Member.email == CAROL)).one()
    refused = browser.post(f"{members_page(org_a)}/{carol_id}/reset-password")
    assert refused.status_code == 403 and "goes by e-mail" in refused.get_data(as_text=True)


def test_six_parallel_uses_of_one_link_let_one_through(app: Flask, browser: Browser, people: People) -> None:
    """What held up in the review: a link works once, however many use it at the same moment."""
    org_a = people.organization("OrgA", owner=ALICE)
    browser.sign_in(ALICE)
    link = link_in(invite(browser, org_a, "dana@d.example"))
    users = [new_browser(app) for _ in range(6)]
    tokens = [user.csrf_token() for user in users]

    def use(number: int) -> int:
        password = f"password number {number}"
        form = {"password": password, "password_confirmation": password, "csrf_token": tokens[number]}
        return users[number].post(link, form).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = sorted(pool.map(use, range(6)))
    assert statuses == [302] + [404] * 5
    assert roles(people, org_a)["dana@d.example"] is Role.MEMBER
