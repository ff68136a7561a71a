"""Settings → Webhooks' signing secrets (owners only): add and remove them through the same services
as the CLI; a secret is never on a page, in a URL or in a table (other than encrypted)."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.databases import table_dump
from tests.common.signing import GITHUB_SECRET, STRIPE_SECRET, TEST_SECRET_KEY
from tests.common.web import OWNER, Browser, People, web_settings
from userpath_worker.audit.models import AuditEntry
from userpath_worker.organizations.models import Role
from userpath_worker.web.app import create_app
from userpath_worker.webhooks.crypto import SecretBox
from userpath_worker.webhooks.models import WebhookSecret


@pytest.fixture
def app(web_engine: Engine) -> Flask:
    return create_app(web_settings(web_engine, secret_key=TEST_SECRET_KEY), web_engine)


def webhooks_page(org_id: int) -> str:
    return f"/orgs/{org_id}/settings/webhooks"


def listed(html: str) -> list[tuple[str, str]]:
    table = re.search(r'<table id="webhook-secrets">.*?</table>', html, re.S).group(0)  # type: ignore[union-attr]
    return re.findall(r'<td class="provider">([^<]+)</td>\s*<td class="display"><code>([^<]+)</code>', table)


def stored(engine: Engine) -> list[WebhookSecret]:
    with Session(engine) as session:
        return list(session.scalars(select(WebhookSecret).order_by(WebhookSecret.id)))


def test_owners_add_list_and_remove_secrets(browser: Browser, people: People, web_engine: Engine) -> None:
    org_id = people.organization()
    browser.sign_in()
    html = browser.get(webhooks_page(org_id)).get_data(as_text=True)
    assert 'aria-current="page">Webhooks' in html and "No signing secrets" in html
    assert 'name="secret" type="password"' in html

    response = browser.post(webhooks_page(org_id), {"provider": "stripe", "secret": STRIPE_SECRET})
    assert response.status_code == 303 and STRIPE_SECRET not in response.headers["Location"]
    html = browser.get(webhooks_page(org_id)).get_data(as_text=True)
    assert "Added stripe secret whsec_...stuv: stripe webhooks must now verify." in html
    browser.post(webhooks_page(org_id), {"provider": "github", "secret": GITHUB_SECRET})
    html = browser.get(webhooks_page(org_id)).get_data(as_text=True)
    assert listed(html) == [("github", "...6789"), ("stripe", "whsec_...stuv")]
    assert STRIPE_SECRET not in html and GITHUB_SECRET not in html

    secrets = stored(web_engine)
    assert [SecretBox(TEST_SECRET_KEY).decrypt(s.ciphertext) for s in secrets] == [STRIPE_SECRET, GITHUB_SECRET]
    with Session(web_engine) as session:
        dump = table_dump(session, web_engine)
    assert STRIPE_SECRET not in dump and GITHUB_SECRET not in dump

    stripe_id = secrets[0].id
    confirm = browser.get(f"{webhooks_page(org_id)}/{stripe_id}/remove").get_data(as_text=True)
    assert "Remove the stripe secret whsec_...stuv?" in confirm
    response = browser.post(f"{webhooks_page(org_id)}/{stripe_id}/remove")
    assert response.status_code == 303
    assert listed(browser.get(webhooks_page(org_id)).get_data(as_text=True)) == [("github", "...6789")]
    with Session(web_engine) as session:
        actions = list(session.scalars(select(AuditEntry.action).where(AuditEntry.action.like("webhook_secret.%"))))
    assert sorted(actions) == ["webhook_secret.added", "webhook_secret.added", "webhook_secret.removed"]


def test_a_mistake_is_shown_without_the_secret(browser: Browser, people: People, web_engine: Engine) -> None:
    org_id = people.organization()
    browser.sign_in()
    response = browser.post(webhooks_page(org_id), {"provider": "svix", "secret": "whsec_not base64!"})
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "that is not a svix signing secret" in html and "not base64!" not in html
    assert stored(web_engine) == []


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_admins_and_members_neither_see_nor_change_the_secrets(
    browser: Browser, people: People, other_browser: Browser, web_engine: Engine, role: Role
) -> None:
    org_id = people.organization()
    browser.sign_in()
    browser.post(webhooks_page(org_id), {"provider": "stripe", "secret": STRIPE_SECRET})
    [secret] = stored(web_engine)
    people.member(org_id, "someone@example.com", role)
    other_browser.sign_in("someone@example.com")
    page = other_browser.get(webhooks_page(org_id))  # the sources, read-only (test_webhook_sources)
    assert page.status_code == 200 and "webhook-secrets" not in page.get_data(as_text=True)
    assert "whsec_" not in page.get_data(as_text=True) and 'name="secret"' not in page.get_data(as_text=True)
    assert other_browser.get(f"{webhooks_page(org_id)}/{secret.id}/remove").status_code == 403
    refused = other_browser.post(webhooks_page(org_id), {"provider": "github", "secret": GITHUB_SECRET})
    assert refused.status_code == 403
    assert other_browser.post(f"{webhooks_page(org_id)}/{secret.id}/remove").status_code == 403
    assert [s.provider for s in stored(web_engine)] == ["stripe"]


def test_another_organizations_secret_is_not_found(browser: Browser, people: People, web_engine: Engine) -> None:
    mine = people.organization()
    theirs = people.organization("Other", "other@example.com")
    other = Browser(browser.client.application.test_client())
    other.sign_in("other@example.com")
    other.post(webhooks_page(theirs), {"provider": "stripe", "secret": STRIPE_SECRET})
    [secret] = stored(web_engine)
    browser.sign_in(OWNER)
    assert browser.get(f"{webhooks_page(mine)}/{secret.id}/remove").status_code == 404
    assert browser.post(f"{webhooks_page(mine)}/{secret.id}/remove").status_code == 404
    assert len(stored(web_engine)) == 1
