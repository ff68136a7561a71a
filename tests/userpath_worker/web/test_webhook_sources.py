"""Settings → Webhooks' sources: owners create one (provider, environment) through the CLI's
service and see its URL once; every member reads the list, never a URL; deleting goes through the
key service. The URL carries a key: it is in no log line, table, URL or later page."""

from __future__ import annotations

import logging
import re

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.databases import table_dump
from tests.common.signing import STRIPE_SECRET, TEST_KEY_PEPPER, TEST_SECRET_KEY
from tests.common.web import OWNER, Browser, People, web_settings
from userpath_worker.audit.models import AuditEntry
from userpath_worker.keys import scopes
from userpath_worker.keys.models import KeyHandoff
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.keys.tokens import AuthFailure, Environment
from userpath_worker.organizations.models import Role
from userpath_worker.web.app import create_app

EDGE = "https://events.acme.io"
SOURCE_URL = re.compile(r'<input id="source-url" type="text" value="([^"]+)"')


@pytest.fixture
def app(web_engine: Engine) -> Flask:
    return create_app(web_settings(web_engine, secret_key=TEST_SECRET_KEY, edge_base_url=EDGE), web_engine)


def webhooks_page(org_id: int) -> str:
    return f"/orgs/{org_id}/settings/webhooks"


def create(browser: Browser, org_id: int, provider: str = "stripe", environment: str = "live") -> str:
    """POST the form, follow the redirect to the page that shows the URL once; the URL."""
    posted = browser.post(f"{webhooks_page(org_id)}/sources", {"provider": provider, "environment": environment})
    assert posted.status_code == 303, posted.get_data(as_text=True)
    location = posted.headers["Location"]
    assert re.fullmatch(rf"{webhooks_page(org_id)}/sources/\d+/new", location), location
    shown = browser.get(location)
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    match = SOURCE_URL.search(shown.get_data(as_text=True))
    assert match, shown.get_data(as_text=True)
    return match.group(1)


def created_key(browser: Browser, people: People, org_id: int) -> tuple[str, KeyIdentity]:
    """A stripe source made on the page: its URL's key, and who that key is."""
    key = create(browser, org_id).rsplit("/", 1)[1]
    identity = authenticate(people, key)
    assert isinstance(identity, KeyIdentity)
    return key, identity


def sources_listed(html: str) -> list[tuple[str, str, str]]:
    """(name, provider, display) of each row of the sources' table."""
    table = re.search(r'<table id="webhook-sources">.*?</table>', html, re.S).group(0)  # type: ignore[union-attr]
    return re.findall(
        r'<td class="name">([^<]+)</td>\s*<td class="provider">([^<]+)</td>\s*<td class="display"><code>([^<]+)</code>',
        table,
    )


def authenticate(people: People, key: str) -> KeyIdentity | AuthFailure:
    with Session(people.engine) as session:
        return KeyService(session, TEST_KEY_PEPPER).authenticate(key)


def test_an_owner_sees_the_url_once_and_its_key_sends_only_that_providers_webhooks(
    browser: Browser, people: People, web_engine: Engine
) -> None:
    org_id = people.organization()
    browser.sign_in()
    form = browser.get(webhooks_page(org_id)).get_data(as_text=True)
    assert 'id="create-webhook-source"' in form and "No webhook sources yet." in form

    posted = browser.post(f"{webhooks_page(org_id)}/sources", {"provider": "stripe", "environment": "test"})
    location = posted.headers["Location"]
    shown = browser.get(location)
    url = SOURCE_URL.search(shown.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    assert url.startswith(f"{EDGE}/v1/webhooks/stripe/up_test_")
    key = url.rsplit("/", 1)[1]
    assert key not in location and key not in str(posted.headers.get("Set-Cookie"))

    identity = authenticate(people, key)
    assert isinstance(identity, KeyIdentity) and identity.org_id == org_id
    assert identity.environment is Environment.TEST and identity.scopes == frozenset({"webhooks:stripe"})
    assert scopes.permits(identity.scopes, "webhook", "stripe")
    assert not scopes.permits(identity.scopes, "webhook", "github") and not scopes.permits(identity.scopes, "server")

    # A refresh or the back button: the Webhooks page, which lists the source but never its URL.
    again = browser.get(location)
    assert again.status_code == 303 and again.headers["Location"] == webhooks_page(org_id)
    listing = browser.get(webhooks_page(org_id)).get_data(as_text=True)
    assert sources_listed(listing) == [("stripe webhooks (test)", "stripe", identity.display)]
    assert '<td class="status">active</td>' in listing
    assert key not in listing and key not in browser.get(f"/orgs/{org_id}/settings/api-keys").get_data(as_text=True)
    with Session(web_engine) as session:
        assert session.scalars(select(KeyHandoff)).all() == []
        assert key not in table_dump(session, web_engine)
        created = session.scalars(select(AuditEntry).where(AuditEntry.action == "key.created")).one()
    assert created.actor == OWNER and created.api_key_id == identity.key_id


def test_names_are_numbered_as_the_cli_would_and_other_keys_are_not_sources(browser: Browser, people: People) -> None:
    org_id = people.organization()
    people.key(org_id, "Everything")  # a key of every scope: not a source
    people.key(org_id, "Stripe and track", scopes=frozenset({"track", "webhooks:stripe"}))
    browser.sign_in()
    urls = [create(browser, org_id), create(browser, org_id), create(browser, org_id, "github")]
    assert [url.split("/")[-2] for url in urls] == ["stripe", "stripe", "github"]
    names = [name for name, _, _ in sources_listed(browser.get(webhooks_page(org_id)).get_data(as_text=True))]
    assert names == ["stripe webhooks (live)", "stripe webhooks (live) 2", "github webhooks (live)"]


def test_an_unusable_choice_is_shown_back_on_the_page(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    refused = browser.post(f"{webhooks_page(org_id)}/sources", {"provider": "stripe", "environment": "staging"})
    assert refused.status_code == 400 and "choose an environment (live or test)" in refused.get_data(as_text=True)
    refused = browser.post(f"{webhooks_page(org_id)}/sources", {"provider": "Not A Provider", "environment": "live"})
    assert refused.status_code == 400 and "names no provider" in refused.get_data(as_text=True)
    assert sources_listed(browser.get(webhooks_page(org_id)).get_data(as_text=True)) == []


def test_deleting_a_source_retires_its_url_audited_as_a_key_deletion(
    browser: Browser, people: People, web_engine: Engine
) -> None:
    org_id = people.organization()
    browser.sign_in()
    key, identity = created_key(browser, people, org_id)
    delete_path = f"{webhooks_page(org_id)}/sources/{identity.key_id}/delete"
    assert f'href="{delete_path}"' in browser.get(webhooks_page(org_id)).get_data(as_text=True)
    confirm = browser.get(delete_path).get_data(as_text=True)
    assert "Delete “stripe webhooks (live)”?" in confirm and key not in confirm

    deleted = browser.post(delete_path)
    assert deleted.status_code == 303 and deleted.headers["Location"] == webhooks_page(org_id)
    after = browser.get(webhooks_page(org_id)).get_data(as_text=True)
    assert "Deleted the webhook source &#39;stripe webhooks (live)&#39;" in after and sources_listed(after) == []
    assert authenticate(people, key) is AuthFailure.DELETED
    with Session(web_engine) as session:
        audited = session.scalars(select(AuditEntry).where(AuditEntry.action == "key.deleted")).one()
    assert audited.actor == OWNER and audited.api_key_id == identity.key_id
    assert browser.post(delete_path).status_code == 404  # gone: no longer a source


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_other_members_read_the_list_and_nothing_more(
    browser: Browser, other_browser: Browser, people: People, web_engine: Engine, role: Role
) -> None:
    org_id = people.organization()
    browser.sign_in()
    key, identity = created_key(browser, people, org_id)
    browser.post(webhooks_page(org_id), {"provider": "stripe", "secret": STRIPE_SECRET})
    people.member(org_id, "someone@example.com", role)
    other_browser.sign_in("someone@example.com")

    html = other_browser.get(webhooks_page(org_id)).get_data(as_text=True)
    assert sources_listed(html) == [("stripe webhooks (live)", "stripe", identity.display)]
    assert f'href="{webhooks_page(org_id)}"' in other_browser.get(f"/orgs/{org_id}/settings/api-keys").get_data(
        as_text=True
    )
    assert key not in html and "webhook-secrets" not in html and "whsec_" not in html
    assert "create-webhook-source" not in html and "/delete" not in html and 'name="csrf_token"' in html  # sign-out

    delete_path = f"{webhooks_page(org_id)}/sources/{identity.key_id}/delete"
    assert other_browser.get(delete_path).status_code == 403
    assert other_browser.post(delete_path).status_code == 403
    refused = other_browser.post(f"{webhooks_page(org_id)}/sources", {"provider": "github", "environment": "live"})
    assert refused.status_code == 403
    assert isinstance(authenticate(people, key), KeyIdentity)
    assert [name for name, _, _ in sources_listed(browser.get(webhooks_page(org_id)).get_data(as_text=True))] == [
        "stripe webhooks (live)"
    ]


@pytest.mark.parametrize("role", [Role.OWNER, Role.MEMBER])
def test_another_organization_sees_and_deletes_nothing(
    browser: Browser, other_browser: Browser, people: People, role: Role
) -> None:
    mine = people.organization()
    browser.sign_in()
    key, identity = created_key(browser, people, mine)
    theirs = people.organization("Other", "other@example.com")
    outsider = "other@example.com"
    if role is Role.MEMBER:
        outsider = "outsider@example.com"
        people.member(theirs, outsider, role)
    other_browser.sign_in(outsider)

    assert other_browser.get(webhooks_page(mine)).status_code == 404
    for path in (f"/sources/{identity.key_id}/delete", f"/sources/{identity.key_id}/new"):
        assert other_browser.get(webhooks_page(mine) + path).status_code == 404
        assert other_browser.get(webhooks_page(theirs) + path).status_code == 404
    assert other_browser.post(f"{webhooks_page(mine)}/sources/{identity.key_id}/delete").status_code == 404
    assert other_browser.post(f"{webhooks_page(theirs)}/sources/{identity.key_id}/delete").status_code == 404
    assert "stripe webhooks" not in other_browser.get(webhooks_page(theirs)).get_data(as_text=True)
    assert isinstance(authenticate(people, key), KeyIdentity)


def test_the_forms_need_their_csrf_token(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    create(browser, org_id)
    [(_, _, display)] = sources_listed(browser.get(webhooks_page(org_id)).get_data(as_text=True))
    key_id = re.search(r'data-key-id="(\d+)"', browser.get(webhooks_page(org_id)).get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    without = browser.post(
        f"{webhooks_page(org_id)}/sources", {"provider": "github", "environment": "live"}, csrf=False
    )
    assert without.status_code == 400 and "security token" in without.get_data(as_text=True)
    forged = browser.post(f"{webhooks_page(org_id)}/sources/{key_id}/delete", {"csrf_token": "x"})
    assert forged.status_code == 400
    assert sources_listed(browser.get(webhooks_page(org_id)).get_data(as_text=True)) == [
        ("stripe webhooks (live)", "stripe", display)
    ]


def test_the_url_is_in_no_log_line(browser: Browser, people: People, caplog: pytest.LogCaptureFixture) -> None:
    org_id = people.organization()
    browser.sign_in()
    with caplog.at_level(logging.DEBUG):
        url = create(browser, org_id)
        browser.get(webhooks_page(org_id))
    key = url.rsplit("/", 1)[1]
    logged = "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert key not in logged and key not in caplog.text
