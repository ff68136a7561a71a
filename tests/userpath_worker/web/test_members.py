"""Settings → Members and the audit log (owners only): invite, change a role, remove, never the
last owner; who did what, newest first, paged."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.common.web import OWNER, Browser, People
from userpath_worker.audit import services as audit
from userpath_worker.audit.models import AuditEntry
from userpath_worker.organizations.models import Member, Role
from userpath_worker.web.audit import PAGE_SIZE


def members_page(org_id: int) -> str:
    return f"/orgs/{org_id}/settings/members"


def member_id(people: People, org_id: int, email: str) -> int:
    with Session(people.engine) as session:
        return session.scalars(select(Member.id).where(Member.org_id == org_id, Member.email == email)).one()


def roles(people: People, org_id: int) -> dict[str, Role]:
    with Session(people.engine) as session:
        return dict(session.execute(select(Member.email, Member.role).where(Member.org_id == org_id)).all())  # type: ignore[arg-type]


def test_owners_see_who_is_a_member_with_which_role(browser: Browser, people: People) -> None:
    org_id = people.organization()
    people.member(org_id, "admin@example.com", Role.ADMIN)
    people.member(org_id, "member@example.com", Role.MEMBER)
    browser.sign_in()
    html = browser.get(members_page(org_id)).get_data(as_text=True)
    table = re.search(r'<table id="members">.*?</table>', html, re.S).group(0)  # type: ignore[union-attr]
    listed = re.findall(r'<td class="email">([^< ]+).*?<option value="(\w+)" selected>', table, re.S)
    assert listed == [(OWNER, "owner"), ("admin@example.com", "admin"), ("member@example.com", "member")]
    for field in ('name="email"', 'select name="role"', 'id="invite-member"'):
        assert field in html


def test_an_invitation_shows_its_link_once_and_the_link_works(
    browser: Browser, people: People, other_browser: Browser
) -> None:
    org_id = people.organization()
    browser.sign_in()
    response = browser.post(members_page(org_id), {"email": "Friend@Example.com ", "role": "admin"})
    html = response.get_data(as_text=True)
    assert response.status_code == 201 and response.headers["Cache-Control"] == "no-store"
    link = re.search(r'<input id="invitation-link" type="text" value="([^"]+)" readonly', html).group(1)  # type: ignore[union-attr]
    assert link.startswith("http://127.0.0.1:8000/invitations/")
    assert 'id="copy-link"' in html and "it will not be shown again" in html
    assert "friend@example.com" not in roles(people, org_id)  # invited: pending until accepted
    path = link.removeprefix("http://127.0.0.1:8000")
    assert path not in browser.get(members_page(org_id)).get_data(as_text=True)
    password = "friendly long password"
    accepted = other_browser.post(path, {"password": password, "password_confirmation": password})
    assert accepted.status_code == 302
    assert roles(people, org_id)["friend@example.com"] is Role.ADMIN
    assert other_browser.get(f"/orgs/{org_id}/settings/api-keys").status_code == 200


def test_an_invitation_needs_an_email_address_and_a_known_role(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    bad_email = browser.post(members_page(org_id), {"email": "not an address", "role": "member"})
    assert bad_email.status_code == 400 and "not an e-mail address" in bad_email.get_data(as_text=True)
    assert browser.post(members_page(org_id), {"email": "a@example.com", "role": "boss"}).status_code == 400
    assert set(roles(people, org_id)) == {OWNER}


def test_an_owner_changes_a_role(browser: Browser, people: People) -> None:
    org_id = people.organization()
    people.member(org_id, "member@example.com", Role.MEMBER)
    browser.sign_in()
    target = member_id(people, org_id, "member@example.com")
    response = browser.post(f"{members_page(org_id)}/{target}/role", {"new_role": "owner"})
    assert response.status_code == 303
    assert roles(people, org_id)["member@example.com"] is Role.OWNER
    assert "member@example.com is now owner" in browser.get(members_page(org_id)).get_data(as_text=True)
    with Session(people.engine) as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "member.role_changed")).one()
    assert entry.actor == OWNER and entry.detail == {"email": "member@example.com", "from": "member", "to": "owner"}


def test_the_last_owner_can_be_neither_demoted_nor_removed(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    me = member_id(people, org_id, OWNER)
    demoted = browser.post(f"{members_page(org_id)}/{me}/role", {"new_role": "admin"})
    assert demoted.status_code == 409 and "last owner" in demoted.get_data(as_text=True)
    removed = browser.post(f"{members_page(org_id)}/{me}/remove")
    assert removed.status_code == 409 and "last owner" in removed.get_data(as_text=True)
    assert roles(people, org_id) == {OWNER: Role.OWNER}


def test_an_owner_removes_a_member_who_then_sees_nothing(
    browser: Browser, people: People, other_browser: Browser
) -> None:
    org_id = people.organization()
    people.member(org_id, "member@example.com", Role.MEMBER)
    other_browser.sign_in("member@example.com")
    browser.sign_in()
    target = member_id(people, org_id, "member@example.com")
    confirmation = browser.get(f"{members_page(org_id)}/{target}/remove").get_data(as_text=True)
    assert "member@example.com" in confirmation and 'id="remove-member"' in confirmation
    assert browser.post(f"{members_page(org_id)}/{target}/remove").status_code == 303
    assert set(roles(people, org_id)) == {OWNER}
    assert other_browser.get(f"/orgs/{org_id}/settings/api-keys").status_code == 404


def test_another_organizations_member_id_answers_404(browser: Browser, people: People) -> None:
    mine = people.organization("Mine")
    theirs = people.organization("Theirs", owner="other@example.com")
    browser.sign_in()
    their_owner = member_id(people, theirs, "other@example.com")
    assert browser.get(f"{members_page(mine)}/{their_owner}/remove").status_code == 404
    assert browser.post(f"{members_page(mine)}/{their_owner}/remove").status_code == 404
    assert browser.post(f"{members_page(mine)}/{their_owner}/role", {"new_role": "member"}).status_code == 404
    assert browser.post(f"{members_page(mine)}/{their_owner}/reset-password").status_code == 404
    assert roles(people, theirs) == {"other@example.com": Role.OWNER}


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_the_members_and_audit_pages_are_for_owners(browser: Browser, people: People, role: Role) -> None:
    org_id = people.organization()
    people.member(org_id, "someone@example.com", role)
    browser.sign_in("someone@example.com")
    refused = browser.get(members_page(org_id))
    assert refused.status_code == 403 and "only owners can manage members" in refused.get_data(as_text=True)
    refused = browser.get(f"/orgs/{org_id}/settings/audit")
    assert refused.status_code == 403 and "only owners can read the audit log" in refused.get_data(as_text=True)
    target = member_id(people, org_id, OWNER)
    assert browser.get(f"{members_page(org_id)}/{target}/remove").status_code == 403


def test_the_audit_log_is_newest_first_and_paged(browser: Browser, people: People) -> None:
    org_id = people.organization()
    key_id, _ = people.key(org_id, "App X Production Server")
    with Session(people.engine) as session, session.begin():
        audit.write(session, OWNER, *(audit.Entry(org_id, f"test.entry.{n}") for n in range(PAGE_SIZE + 5)))
    browser.sign_in()
    first = browser.get(f"/orgs/{org_id}/settings/audit").get_data(as_text=True)
    first_ids = [int(found) for found in re.findall(r'data-entry-id="(\d+)"', first)]
    assert len(first_ids) == PAGE_SIZE
    assert first_ids == sorted(first_ids, reverse=True)
    assert '<td class="action">signed_in</td>' in first  # the newest: this sign-in
    assert 'rel="next"' in first and 'rel="prev"' not in first
    second = browser.get(f"/orgs/{org_id}/settings/audit?page=2").get_data(as_text=True)
    second_ids = [int(found) for found in re.findall(r'data-entry-id="(\d+)"', second)]
    assert second_ids and max(second_ids) < min(first_ids)
    assert 'rel="prev"' in second
    # The oldest entries: the invitation, the founder joining, the key named as it is listed.
    assert "key.created" in second and "App X Production Server" in second and f"#{key_id}" not in second
    assert "member.invited" in second
    assert 'data-entry-id="' not in browser.get(f"/orgs/{org_id}/settings/audit?page=99").get_data(as_text=True)
    assert browser.get(f"/orgs/{org_id}/settings/audit?page=nonsense").status_code == 200


@pytest.mark.parametrize("number", ["999999999999999999999", "9223372036854775808", "1000001"])
def test_a_page_number_past_any_audit_log_is_not_found(browser: Browser, people: People, number: str) -> None:
    """Issue 20, item 9: ``?page=999999999999999999999`` answered 500 (the offset overflowed)."""
    org_id = people.organization()
    browser.sign_in()
    response = browser.get(f"/orgs/{org_id}/settings/audit?page={number}")
    assert response.status_code == 404
    assert "There is nothing here" in response.get_data(as_text=True)
