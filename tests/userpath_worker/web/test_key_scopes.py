"""Key scopes on Settings → API Keys (issue 21, item 6): chosen in the "+" form, shown on the page
that shows the key and in the list, kept by Roll; only the organization's owners set them."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from tests.common.signing import TEST_KEY_PEPPER
from tests.common.web import Browser, People, new_key_form
from userpath_worker.audit.models import AuditEntry
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.organizations.models import Role

CELLS = re.compile(r'<td class="([a-z-]+)">(.*?)</td>', re.S)


def keys_page(org_id: int) -> str:
    return f"/orgs/{org_id}/settings/api-keys"


def scopes_cell(html: str, key_id: int) -> str:
    match = re.search(rf'<tr id="key-{key_id}" data-key-id="{key_id}">(.*?)</tr>', html, re.S)
    assert match, f"no row for key {key_id}"
    return dict(CELLS.findall(match.group(1)))["scopes"]


def identity_of(people: People, response: TestResponse) -> KeyIdentity:
    html = response.get_data(as_text=True)
    assert response.status_code == 201, html
    plaintext = re.search(r'<input id="new-key" type="text" value="([^"]+)" readonly', html).group(1)  # type: ignore[union-attr]
    with Session(people.engine) as session:
        identity = KeyService(session, TEST_KEY_PEPPER).authenticate(plaintext)
    assert isinstance(identity, KeyIdentity)
    return identity


def key_count(people: People) -> int:
    with Session(people.engine) as session:
        return session.scalar(select(func.count()).select_from(ApiKey)) or 0


def test_the_form_offers_every_scope_ticked_and_a_field_for_providers(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    form = browser.get(f"{keys_page(org_id)}/new").get_data(as_text=True)
    boxes = re.findall(r'<input type="checkbox" name="scope" value="([a-z]+)" id="scope-\1" checked>', form)
    assert boxes == ["track", "jobs", "webhooks"]
    assert '<input id="providers" name="providers" type="text" value=""' in form


def test_an_owner_limits_a_key_and_the_pages_show_its_scopes(browser: Browser, people: People) -> None:
    org_id = people.organization()
    unrestricted_id, _ = people.key(org_id, "Backend")
    browser.sign_in()
    created = browser.post(keys_page(org_id), new_key_form("Receivers", scope=["track"], providers="stripe, github"))
    identity = identity_of(people, created)
    assert identity.scopes == frozenset({"track", "webhooks:stripe", "webhooks:github"})
    assert "scopes: <span" in created.get_data(as_text=True)
    assert '<span class="scopes">track, webhooks:github, webhooks:stripe</span>' in created.get_data(as_text=True)

    listing = browser.get(keys_page(org_id)).get_data(as_text=True)
    assert '<th scope="col">Scopes</th>' in listing
    assert scopes_cell(listing, identity.key_id) == "track, webhooks:github, webhooks:stripe"
    assert scopes_cell(listing, unrestricted_id) == "all"
    with Session(people.engine) as session:
        audited = session.scalars(select(AuditEntry).where(AuditEntry.api_key_id == identity.key_id)).one()
    assert audited.action == "key.created"
    assert audited.detail["scopes"] == ["track", "webhooks:github", "webhooks:stripe"]


def test_every_box_ticked_is_a_key_that_may_send_everything(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    assert identity_of(people, browser.post(keys_page(org_id), new_key_form("All"))).scopes is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scope": []}, "choose at least one scope: track, jobs, webhooks or webhooks:PROVIDER"),
        ({"scope": [], "providers": "Stripe!"}, "'webhooks:Stripe!' names no provider"),
        ({"scope": ["webhooks"], "providers": "stripe"}, "webhooks already covers every provider's webhooks"),
        ({"scope": ["everything"]}, "unknown scope 'everything'"),
    ],
    ids=["none", "bad-provider", "webhooks-and-a-provider", "not-a-scope"],
)
def test_scopes_that_cannot_be_are_refused_on_the_form_shown_again(
    browser: Browser, people: People, fields: dict, message: str
) -> None:
    org_id = people.organization()
    browser.sign_in()
    response = browser.post(keys_page(org_id), new_key_form("Typo", **fields))
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert re.search(r'<p class="error" role="alert">[^<\n]*' + re.escape(message.replace("'", "&#39;")), html), html
    assert f'value="{fields.get("providers", "")}"' in html  # what was typed is kept
    assert 'id="scope-track" checked' not in html  # and what was unticked stays unticked
    assert key_count(people) == 0


def test_roll_keeps_the_scopes_and_says_so(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    old = identity_of(people, browser.post(keys_page(org_id), new_key_form("Jobs", scope=["jobs"])))
    rolled = browser.post(f"{keys_page(org_id)}/{old.key_id}/roll", {"grace": "0"})
    assert identity_of(people, rolled).scopes == frozenset({"jobs"})
    assert 'The new key keeps its scopes: <span class="scopes">jobs</span>' in rolled.get_data(as_text=True)


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_admins_and_members_cannot_make_a_scoped_key(browser: Browser, people: People, role: Role) -> None:
    org_id = people.organization()
    people.member(org_id, "someone@example.com", role)
    browser.sign_in("someone@example.com")
    assert browser.post(keys_page(org_id), new_key_form("Mine", scope=["track"])).status_code == 403
    assert browser.post(keys_page(org_id), new_key_form("Mine", scope=[], providers="Bad!")).status_code == 403
    assert key_count(people) == 0


def test_another_organizations_owner_cannot_make_a_key_here(browser: Browser, people: People) -> None:
    org_id = people.organization("Acme")
    people.organization("Elsewhere", owner="owner@elsewhere.example")
    browser.sign_in("owner@elsewhere.example")
    assert browser.get(f"{keys_page(org_id)}/new").status_code == 404
    assert browser.post(keys_page(org_id), new_key_form("Theirs", scope=["webhooks"])).status_code == 404
    assert key_count(people) == 0
