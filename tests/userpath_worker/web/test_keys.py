"""Settings → API Keys (issue 13, item 3): the list, "+", the key shown once, roll, delete; what
admins and members may not do; and the keys created here never stored nor logged."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
import time_machine
from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from config.settings import Settings
from tests.common.databases import table_dump
from tests.common.signing import TEST_KEY_PEPPER
from tests.common.web import BASE_URL, OWNER, Browser, People, new_key_form
from userpath_client.contract import KEY_PATTERN
from userpath_worker import web_links
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import make_session_factory, utcnow
from userpath_worker.keys.models import ApiKey, KeyHandoff
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.keys.tokens import AuthFailure, Environment
from userpath_worker.organizations.models import Role
from userpath_worker.rotation.services import RotationPolicy, run_pass

NEW_KEY_FIELD = re.compile(r'<input id="new-key" type="text" value="([^"]+)" readonly')
CELLS = re.compile(r'<td class="([a-z-]+)">(.*?)</td>', re.S)


def keys_page(org_id: int) -> str:
    return f"/orgs/{org_id}/settings/api-keys"


def create(
    browser: Browser, org_id: int, name: str = "App X Production Server", **fields: str | list[str]
) -> TestResponse:
    return browser.post(keys_page(org_id), new_key_form(name, **fields))


def shown_key(browser: Browser, response: TestResponse) -> str:
    """The key in the read-only copy field of the page the POST redirected to, checked as the issue asks."""
    html = browser.shown_once(response).get_data(as_text=True)
    match = NEW_KEY_FIELD.search(html)
    assert match, html
    assert 'id="copy-key"' in html
    assert "it will not be shown again" in html
    key = match.group(1)
    assert KEY_PATTERN.fullmatch(key)
    assert html.count(key) == 1  # in the field only
    return key


def row(html: str, key_id: int) -> dict[str, str]:
    """The text of each cell of the key's row, by class, tags stripped."""
    match = re.search(rf'<tr id="key-{key_id}" data-key-id="{key_id}">(.*?)</tr>', html, re.S)
    assert match, f"no row for key {key_id}"
    return {name: " ".join(re.sub(r"<[^>]+>", " ", cell).split()) for name, cell in CELLS.findall(match.group(1))}


def authenticate(people: People, plaintext: str) -> KeyIdentity | AuthFailure:
    with Session(people.engine) as session:
        return KeyService(session, TEST_KEY_PEPPER).authenticate(plaintext)


def test_the_list_shows_each_key_with_its_columns_and_never_a_secret(browser: Browser, people: People) -> None:
    org_id = people.organization()
    live_id, live = people.key(org_id, "App X Production Server")
    test_id, test = people.key(org_id, "App Y Webhook Handler", environment=Environment.TEST)
    gone_id, _ = people.key(org_id, "Deleted")
    with Session(people.engine) as session, session.begin():
        KeyService(session, TEST_KEY_PEPPER).delete(gone_id, OWNER)
    browser.sign_in()
    response = browser.get(keys_page(org_id))
    html = response.get_data(as_text=True)
    assert "<h1>API Keys</h1>" in html and 'id="api-keys"' in html
    assert re.findall(r'data-key-id="(\d+)"', html) == [str(live_id), str(test_id)]  # deleted keys are not listed
    live_row = row(html, live_id)
    assert live_row["name"] == "App X Production Server"
    assert live_row["display"] == f"{live[:12]}...{live[-4:]}"
    assert live_row["environment"] == "live"
    assert live_row["status"] == "active"
    assert live_row["created"].endswith("UTC")
    assert live_row["last-used"] == "never"
    assert live_row["expires"] == "never"
    assert "flag" not in live_row and '<th scope="col">Rotation</th>' not in html  # nothing flagged: no column
    assert row(html, test_id)["environment"] == "test"
    assert live not in html and test not in html
    assert response.headers["Cache-Control"] == "no-store"


def test_last_used_is_relative_with_the_utc_time(browser: Browser, people: People) -> None:
    org_id = people.organization()
    key_id, _ = people.key(org_id)
    used = utcnow() - dt.timedelta(hours=3)
    with Session(people.engine) as session, session.begin():
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=used))
    browser.sign_in()
    html = browser.get(keys_page(org_id)).get_data(as_text=True)
    utc = used.strftime("%Y-%m-%d %H:%M UTC")
    assert row(html, key_id)["last-used"] == f"3 hours ago {utc}"
    assert f'<span class="utc">{utc}</span>' in html


def test_the_rotation_flag_shows_its_reasons_in_words(browser: Browser, people: People) -> None:
    org_id = people.organization()
    start = utcnow()
    with time_machine.travel(start, tick=False) as traveller:
        key_id, _ = people.key(org_id, expires_in=dt.timedelta(days=96))
        traveller.shift(dt.timedelta(days=91))
        sessions = make_session_factory(people.engine)
        for _ in run_pass(sessions.begin, RotationPolicy.from_settings(Settings())):
            pass
        browser.sign_in()
        html = browser.get(keys_page(org_id)).get_data(as_text=True)
    assert row(html, key_id)["flag"] == "rotate older than 90 days; unused for 30 days; expires in 5 days"
    assert '<th scope="col">Rotation</th>' in html and 'id="rotation-hint"' in html  # and what to do about it


def test_plus_opens_the_form_with_name_environment_and_expiry(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    listing = browser.get(keys_page(org_id)).get_data(as_text=True)
    assert re.search(rf'<a id="new-key"[^>]*href="{keys_page(org_id)}/new"[^>]*>\+</a>', listing)
    form = browser.get(f"{keys_page(org_id)}/new").get_data(as_text=True)
    assert 'name="name"' in form and 'maxlength="100"' in form and 'id="create-key"' in form
    environments = re.search(r'<select name="environment".*?</select>', form, re.S).group(0)  # type: ignore[union-attr]
    expiries = re.search(r'<select name="expiry".*?</select>', form, re.S).group(0)  # type: ignore[union-attr]
    assert re.findall(r'value="([^"]+)"', environments) == ["live", "test"]
    assert re.findall(r'value="([^"]+)"', expiries) == ["never", "30", "90", "365"]


def test_creating_a_key_shows_it_once_and_stores_it_as_the_cli_would(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    key = shown_key(browser, create(browser, org_id))
    identity = authenticate(people, key)
    assert isinstance(identity, KeyIdentity) and identity.org_id == org_id and identity.environment is Environment.LIVE
    with Session(people.engine) as session:
        created = session.scalars(select(AuditEntry).where(AuditEntry.action == "key.created")).one()
    assert created.actor == OWNER and created.api_key_id == identity.key_id
    # Never again: not on the list, nor on the form pages.
    for path in (keys_page(org_id), f"{keys_page(org_id)}/{identity.key_id}/roll"):
        assert key not in browser.get(path).get_data(as_text=True)


def test_a_refresh_after_the_key_was_shown_lists_the_keys_with_its_row(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    posted = create(browser, org_id)
    key = shown_key(browser, posted)
    assert key not in posted.headers["Location"] and key not in str(posted.headers.get("Set-Cookie"))
    key_id = authenticate(people, key)
    assert isinstance(key_id, KeyIdentity)
    # The refresh (a GET of the same page): the key is gone; the list, with its row, instead.
    again = browser.get(posted.headers["Location"])
    assert again.status_code == 303
    assert again.headers["Location"] == f"{keys_page(org_id)}#key-{key_id.key_id}"
    listing = browser.get(keys_page(org_id)).get_data(as_text=True)
    assert row(listing, key_id.key_id)["name"] == "App X Production Server" and key not in listing
    with Session(people.engine) as session:
        assert session.scalars(select(KeyHandoff)).all() == []  # taken: nothing of the key is left


def test_another_browser_of_the_same_account_cannot_take_the_key(
    browser: Browser, other_browser: Browser, people: People
) -> None:
    org_id = people.organization()
    browser.sign_in()
    other_browser.sign_in()
    posted = create(browser, org_id)
    assert other_browser.get(posted.headers["Location"]).status_code == 303  # no hand-off token in its session
    shown_key(browser, posted)  # still there for the browser that made it


def test_the_created_page_says_what_to_do_next_with_this_installations_urls(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    html = browser.shown_once(create(browser, org_id, environment="test")).get_data(as_text=True)
    assert "<code>USERPATH_KEY</code>" in html
    assert "This is a <strong>test</strong> key" in html and "marked <code>test</code>" in html
    environment = re.search(r'<pre class="snippet" id="snippet-env"><code>(.*?)</code>', html, re.S).group(1)  # type: ignore[union-attr]
    assert "export USERPATH_KEY=" in environment
    assert f"export USERPATH_BROKER_URL='{Settings().broker_url}'" in environment  # this installation's broker
    python = re.search(r'id="snippet-python"><code>(.*?)</code>', html, re.S).group(1)  # type: ignore[union-attr]
    assert 'UserPath(os.environ["USERPATH_KEY"], broker_url=os.environ["USERPATH_BROKER_URL"])' in python
    live = browser.shown_once(create(browser, org_id, "Live one")).get_data(as_text=True)
    assert "This is a <strong>live</strong> key" in live


def test_the_broker_snippet_masks_the_brokers_password(app: Flask, browser: Browser, people: People) -> None:
    settings = app.extensions["userpath"].settings
    app.extensions["userpath"] = dataclasses.replace(
        app.extensions["userpath"],
        settings=settings.model_copy(update={"broker_url": "redis://worker:s3cret-pass@broker.internal:6379/0"}),
    )
    org_id = people.organization()
    browser.sign_in()
    html = browser.shown_once(create(browser, org_id)).get_data(as_text=True)
    assert "s3cret-pass" not in html
    assert "export USERPATH_BROKER_URL='redis://worker:**@broker.internal:6379/0'" in html
    assert "userpath broker producer-user NAME" in html


def test_the_curl_snippet_sends_to_this_installation_s_edge(app: Flask, browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    # USERPATH_EDGE_BASE_URL is the only thing the snippet needs.
    settings = app.extensions["userpath"].settings.model_copy(update={"edge_base_url": "https://edge.example.com/"})
    app.extensions["userpath"] = dataclasses.replace(app.extensions["userpath"], settings=settings)
    html = browser.shown_once(create(browser, org_id, "After")).get_data(as_text=True)
    curl = re.search(r'id="snippet-curl"><code>(.*?)</code>', html, re.S).group(1)  # type: ignore[union-attr]
    assert curl.startswith('curl -u "$USERPATH_KEY:" https://edge.example.com/v1/track')


@pytest.mark.parametrize(("expiry", "days"), [("never", None), ("30", 30), ("90", 90), ("365", 365)])
def test_the_expiry_choices(browser: Browser, people: People, expiry: str, days: int | None) -> None:
    org_id = people.organization()
    browser.sign_in()
    key = shown_key(browser, create(browser, org_id, expiry=expiry, environment="test"))
    identity = authenticate(people, key)
    assert isinstance(identity, KeyIdentity) and identity.environment is Environment.TEST
    if days is None:
        assert identity.expires_at is None
    else:
        assert identity.expires_at is not None
        assert abs(identity.expires_at - (utcnow() + dt.timedelta(days=days))) < dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("", 400, "1 to 100 characters"),
        ("   ", 400, "1 to 100 characters"),
        ("x" * 101, 400, "1 to 100 characters"),
        ("Taken", 409, "already exists"),
    ],
    ids=["empty", "blank", "too-long", "taken"],
)
def test_the_services_rules_on_names_are_the_pages(
    browser: Browser, people: People, name: str, status: int, message: str
) -> None:
    org_id = people.organization()
    people.key(org_id, "Taken")
    browser.sign_in()
    response = create(browser, org_id, name)
    html = response.get_data(as_text=True)
    assert response.status_code == status
    assert message in html and 'class="error"' in html
    assert not NEW_KEY_FIELD.search(html)
    with Session(people.engine) as session:
        assert session.scalars(select(ApiKey.name).where(ApiKey.org_id == org_id)).all() == ["Taken"]


def test_choices_not_on_the_form_are_refused(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    assert create(browser, org_id, environment="prod").status_code == 400
    assert create(browser, org_id, expiry="5").status_code == 400


@pytest.mark.parametrize(
    ("grace", "length"),
    [
        ("0", dt.timedelta(0)),
        ("1h", dt.timedelta(hours=1)),
        ("24h", dt.timedelta(hours=24)),
        ("7d", dt.timedelta(days=7)),
    ],
)
def test_rolling_shows_the_new_key_once_and_lists_the_old_one_as_expiring(
    browser: Browser, people: People, grace: str, length: dt.timedelta
) -> None:
    org_id = people.organization()
    old_id, old = people.key(org_id)
    browser.sign_in()
    form = browser.get(f"{keys_page(org_id)}/{old_id}/roll").get_data(as_text=True)
    grace_select = re.search(r'<select name="grace".*?</select>', form, re.S).group(0)  # type: ignore[union-attr]
    assert re.findall(r'value="([^"]+)"', grace_select) == ["0", "1h", "24h", "7d"]
    assert 'id="roll-key"' in form
    new = shown_key(browser, browser.post(f"{keys_page(org_id)}/{old_id}/roll", {"grace": grace}))
    assert new != old
    html = browser.get(keys_page(org_id)).get_data(as_text=True)
    new_identity = authenticate(people, new)
    assert isinstance(new_identity, KeyIdentity)
    assert row(html, new_identity.key_id)["status"] == "active"
    # The old row links to its replacement's; its expiry is shown once, in Expires.
    assert re.search(
        rf'<span class="replaced-by">replaced by <a href="#key-{new_identity.key_id}">{re.escape(new[:12])}\.\.\.', html
    )
    old_row = row(html, old_id)
    assert "until" not in old_row["status"]
    if length:
        assert old_row["status"] == f"expiring replaced by {new[:12]}...{new[-4:]}"
        assert old_row["expires"].startswith("in ")
        expiry = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", old_row["expires"]).group(0)  # type: ignore[union-attr]
        old_html = re.search(rf'<tr id="key-{old_id}".*?</tr>', html, re.S).group(0)  # type: ignore[union-attr]
        assert old_html.count(expiry) == 1
        assert isinstance(authenticate(people, old), KeyIdentity)  # still works within the grace
    else:
        assert old_row["status"] == f"expired replaced by {new[:12]}...{new[-4:]}"
        assert authenticate(people, old) is AuthFailure.EXPIRED
    with Session(people.engine) as session:
        rolled = session.scalars(select(AuditEntry).where(AuditEntry.action == "key.rolled")).one()
    assert rolled.actor == OWNER and rolled.api_key_id == old_id


def test_a_key_that_is_not_active_cannot_be_rolled(browser: Browser, people: People) -> None:
    org_id = people.organization()
    old_id, _ = people.key(org_id)
    browser.sign_in()
    shown_key(browser, browser.post(f"{keys_page(org_id)}/{old_id}/roll", {"grace": "1h"}))
    again = browser.post(f"{keys_page(org_id)}/{old_id}/roll", {"grace": "1h"})
    assert again.status_code == 409 and "cannot be rolled" in again.get_data(as_text=True)
    assert browser.post(f"{keys_page(org_id)}/{old_id}/roll", {"grace": "30d"}).status_code == 400


def test_deleting_asks_first_naming_the_key_then_it_stops_authenticating(browser: Browser, people: People) -> None:
    org_id = people.organization()
    key_id, plaintext = people.key(org_id, "App Y Webhook Handler")
    browser.sign_in()
    confirmation = browser.get(f"{keys_page(org_id)}/{key_id}/delete").get_data(as_text=True)
    assert "App Y Webhook Handler" in confirmation and 'id="delete-key"' in confirmation
    assert isinstance(authenticate(people, plaintext), KeyIdentity)  # asking deleted nothing
    response = browser.post(f"{keys_page(org_id)}/{key_id}/delete")
    assert response.status_code == 303 and response.headers["Location"] == keys_page(org_id)
    assert authenticate(people, plaintext) is AuthFailure.DELETED
    listing = browser.get(keys_page(org_id)).get_data(as_text=True)
    assert f'data-key-id="{key_id}"' not in listing
    assert "Deleted the key" in listing
    assert browser.post(f"{keys_page(org_id)}/{key_id}/delete").status_code == 409


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER])
def test_admins_and_members_read_the_list_and_every_change_is_refused_with_403(
    browser: Browser, people: People, role: Role
) -> None:
    org_id = people.organization()
    key_id, plaintext = people.key(org_id)
    people.member(org_id, "someone@example.com", role)
    browser.sign_in("someone@example.com")
    listing = browser.get(keys_page(org_id)).get_data(as_text=True)
    assert f'data-key-id="{key_id}"' in listing
    for control in ('id="new-key"', 'class="roll"', 'class="delete"', "/settings/members", "/settings/audit"):
        assert control not in listing
    for path in (
        f"{keys_page(org_id)}/new",
        f"{keys_page(org_id)}/{key_id}/roll",
        f"{keys_page(org_id)}/{key_id}/delete",
    ):
        assert browser.get(path).status_code == 403, path
    # Whatever the page showed, the server refuses every change, with or without a valid form.
    posts = [
        (keys_page(org_id), {"name": "Mine", "environment": "live", "expiry": "never"}),
        (keys_page(org_id), {"name": "", "environment": "nonsense", "expiry": "5"}),
        (f"{keys_page(org_id)}/{key_id}/roll", {"grace": "0"}),
        (f"{keys_page(org_id)}/{key_id}/delete", {}),
        (f"/orgs/{org_id}/settings/members", {"email": "friend@example.com", "role": "owner"}),
        (f"/orgs/{org_id}/settings/members/1/role", {"new_role": "member"}),
        (f"/orgs/{org_id}/settings/members/1/remove", {}),
    ]
    for path, data in posts:
        assert browser.post(path, data).status_code == 403, path
    assert isinstance(authenticate(people, plaintext), KeyIdentity)
    with Session(people.engine) as session:
        assert session.scalars(select(ApiKey.id)).all() == [key_id]
        assert session.scalars(select(AuditEntry.action).where(AuditEntry.action.like("key.%"))).all() == [
            "key.created"
        ]


def test_the_keys_made_through_the_pages_are_in_no_table_and_no_log(
    browser: Browser, people: People, all_logs: pytest.LogCaptureFixture
) -> None:
    org_id = people.organization()
    browser.sign_in()
    created = shown_key(browser, create(browser, org_id))
    identity = authenticate(people, created)
    assert isinstance(identity, KeyIdentity)
    rolled = shown_key(browser, browser.post(f"{keys_page(org_id)}/{identity.key_id}/roll", {"grace": "1h"}))
    invitation = browser.post(f"/orgs/{org_id}/settings/members", {"email": "friend@example.com", "role": "member"})
    token = re.search(r"/invitations/([A-Za-z0-9_-]+)", invitation.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    for path in (keys_page(org_id), f"/orgs/{org_id}/settings/audit"):
        browser.get(path)
    with people.engine.connect() as connection:
        dump = table_dump(connection, people.engine)  # type: ignore[arg-type]
    assert "App X Production Server" in dump  # the dump does see the keys' rows
    logged = all_logs.text + "\n".join(str(record.args) for record in all_logs.records)
    assert "api_keys" in logged  # SQL and its parameters were captured
    for secret in (created, rolled, created.split("_")[-1], rolled.split("_")[-1], token):
        assert secret not in dump
        assert secret not in logged


def test_a_reminders_link_opens_the_keys_row(browser: Browser, people: People) -> None:
    org_id = people.organization()
    key_id, _ = people.key(org_id)
    link = web_links.key_url(BASE_URL, org_id, key_id)
    path, _, fragment = link.removeprefix(BASE_URL).partition("#")
    browser.sign_in()
    html = browser.get(path).get_data(as_text=True)
    assert re.search(rf'<tr id="{fragment}" data-key-id="{key_id}">', html)
