"""Settings → API Keys in a real browser (issue 13): Debian's Chromium, driven by Selenium, against
``userpath web`` and a real worker, with the organization and its owners made by the real CLI.

An owner who knows only the product documentation opens the invitation, sets a password, clicks
"+", creates "App X Production Server" and copies the key; the worker stores an event sent with it
and the page shows the key as used; the owner rolls it (the old key expiring within the grace, and
still working) and deletes the new one (which stops authenticating at once). The owner invites a
member on the Members page (the invitation pending until the member opens its link and sets a
password); the member sees the list without any control. The owner makes a Stripe webhook source on
Settings → Webhooks and sees its URL once; the member sees the source's row, read-only. No key is in
a URL the browser asked for or in a log. A screenshot of each page is saved in the test's temporary
folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait
from sqlalchemy import Engine, select

from tests.common.browser import (
    ELEMENT_TIMEOUT,
    chromium,
    click_through,
    console_problems,
    element,
    free_port,
    page_text,
    requested_urls,
    running_web,
    screenshot,
    userpath,
    web_environment,
)
from tests.common.databases import TEST_DATABASE_PREFIX, flushed_redis
from tests.common.workers import counts, migrated_database, producer, running_worker, settle_at, wait_for
from userpath_client import UserPath
from userpath_client.contract import EVENTS_QUEUE, KEY_PATTERN, MAX_EVENT_BYTES, TRACK_TASK
from userpath_worker.db import utcnow
from userpath_worker.deadletter.models import DeadLetter, Reason

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/6"  # this module's own: flushed first
ORGANIZATION = "App X Inc"
FOUNDER = "founder@appx.example"
OWNER = "owner@appx.example"
MEMBER = "member@appx.example"
PASSWORD = "correct horse battery staple"
KEY_NAME = "App X Production Server"
SIGNING_SECRET = "whsec_browser_test_signing_secret_0042"
KEYS_PAGE = re.compile(r"/orgs/(\d+)/settings/api-keys$")
PHONE_WIDTH = 390  # CSS pixels: an iPhone 12 to 15


@pytest.fixture
def database() -> Iterator[tuple[str, Engine]]:
    url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_browser")
    yield url, engine
    engine.dispose()


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    yield from flushed_redis(REDIS_URL)


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


class Visit:
    """The browser's steps: a screenshot of each page, and every URL it asked for along the way."""

    def __init__(self, driver: WebDriver, tmp_path: Path) -> None:
        self.driver = driver
        self.tmp_path = tmp_path
        self.urls: list[str] = []
        self.sources: dict[str, str] = {}
        self.console: list[str] = []

    def page(self, name: str) -> str:
        """Screenshot the current page as ``name``; its text."""
        self.urls += [self.driver.current_url, *requested_urls(self.driver)]
        self.sources[name] = self.driver.page_source
        self.console += [f"{name}: {problem}" for problem in console_problems(self.driver)]
        screenshot(self.driver, self.tmp_path, name)
        return page_text(self.driver)

    def pages_showing(self, secret: str) -> list[str]:
        return [name for name, source in self.sources.items() if secret in source]

    def open(self, url: str, name: str) -> str:
        self.driver.get(url)
        return self.page(name)


def invitation_link(output: str, base_url: str) -> str:
    link = output.strip().splitlines()[-1].strip()
    assert link.startswith(f"{base_url}/invitations/"), f"the last line is not an invitation link:\n{output}"
    return link


def accept_invitation(visit: Visit, link: str, who: str) -> str:
    """Open the invitation, set the password; the keys page's URL, where the new member lands."""
    visit.open(link, f"{who}-invitation")
    element(visit.driver, "input[name=password]").send_keys(PASSWORD)
    element(visit.driver, "input[name=password_confirmation]").send_keys(PASSWORD)
    click_through(visit.driver, "button#set-password", then="table#api-keys")
    text = visit.page(f"{who}-api-keys")
    assert KEYS_PAGE.search(visit.driver.current_url), visit.driver.current_url
    assert "API Keys" in text
    return visit.driver.current_url


def row(driver: WebDriver, key_id: int | str) -> dict[str, str]:
    """The cells of the key's row, by class."""
    cells = element(driver, f'tr[data-key-id="{key_id}"]').find_elements(By.CSS_SELECTOR, "td[class]")
    return {cell.get_attribute("class").split()[0]: cell.text.strip() for cell in cells}


def key_ids(driver: WebDriver) -> list[str]:
    element(driver, "table#api-keys")
    return [tr.get_attribute("data-key-id") for tr in driver.find_elements(By.CSS_SELECTOR, "tr[data-key-id]")]


def shown_once(visit: Visit, name: str) -> str:
    """The key in the read-only copy field, with its Copy button and warning."""
    driver = visit.driver
    field = element(driver, "input#new-key")
    text = visit.page(name)
    assert field.get_attribute("readonly") is not None
    assert "it will not be shown again" in text.lower()
    key = field.get_attribute("value")
    assert KEY_PATTERN.fullmatch(key), f"not a key in input#new-key: {key!r}"
    assert key not in text  # only in the field

    # The Copy button puts it on the clipboard (the page's one script, allowed by its CSP).
    origin = re.match(r"https?://[^/]+", driver.current_url).group(0)
    driver.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    element(driver, "button#copy-key").click()
    WebDriverWait(driver, ELEMENT_TIMEOUT).until(lambda _: "Copied" in element(driver, "button#copy-key").text)
    clipboard = driver.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], e => arguments[0](String(e)))"
    )
    assert clipboard == key
    return key


def phone_screen(driver: WebDriver, visit: Visit, name: str) -> None:
    """The page at a 390 px wide screen, screenshot as ``name``: each owner's Roll and Delete within it."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        # The last card's Roll and Delete in view, for the screenshot to show them.
        driver.execute_script(
            "arguments[0].scrollIntoView({block: 'end'})", element(driver, "tr:last-child td.actions")
        )
        visit.page(name)
        assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE_WIDTH
        controls = driver.find_elements(By.CSS_SELECTOR, "td.actions a")
        assert {control.text for control in controls} >= {"Roll", "Delete"}
        for control in controls:
            box = control.rect
            assert control.is_displayed() and box["x"] >= 0 and box["x"] + box["width"] <= PHONE_WIDTH, (
                control.text,
                box,
            )
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def at_phone_width(driver: WebDriver, visit: Visit, name: str) -> None:
    """The page at a 390 px wide screen, screenshot as ``name``: nothing scrolls sideways."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        visit.page(name)
        assert driver.execute_script("return document.documentElement.scrollWidth") <= PHONE_WIDTH
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def send(key: str, event_id: str) -> None:
    with UserPath(key, broker_url=REDIS_URL) as client:
        client.track("Signed Up", user_id="user-1", properties={"plan": "pro"}, event_id=event_id)
        client.flush(timeout=30)  # NotSent if the broker did not take it


def test_an_owner_manages_keys_in_a_browser_and_a_member_only_sees_them(
    database: tuple[str, Engine], redis_db: redis.Redis, driver: WebDriver, tmp_path: Path
) -> None:
    database_url, engine = database
    port = free_port()
    environment = web_environment(database_url, REDIS_URL, port)
    base_url = environment["USERPATH_WEB_BASE_URL"]

    created = userpath(environment, "orgs", "create", ORGANIZATION, "--owner", FOUNDER)
    invitation_link(created, base_url)  # the founder's; the test's owner is invited like any owner
    owner_link = invitation_link(
        userpath(environment, "members", "invite", "--org", ORGANIZATION, OWNER, "--role", "owner"), base_url
    )

    visit = Visit(driver, tmp_path)
    with (
        running_web(environment, tmp_path / "web.log") as web,
        running_worker(environment, tmp_path / "worker.log"),
    ):
        # The owner opens the invitation, sets a password and lands on Settings → API Keys.
        keys_page = accept_invitation(visit, owner_link, "owner")
        assert key_ids(driver) == []

        # "+" opens the form; the key is shown once, in the copy field.
        assert element(driver, "a#new-key").text.strip() == "+"
        click_through(driver, "a#new-key", then="input[name=name]").send_keys(KEY_NAME)
        Select(element(driver, "select[name=environment]")).select_by_value("live")
        Select(element(driver, "select[name=expiry]")).select_by_value("never")
        visit.page("new-key-form")
        click_through(driver, "button#create-key", then="input#new-key")
        key = shown_once(visit, "key-created")
        assert key.startswith("up_live_")
        assert "USERPATH_KEY" in page_text(driver) and "live" in element(driver, "#key-environment").text

        # A refresh does not post the form again: the key is gone, and the list shows its row.
        driver.refresh()
        element(driver, "table#api-keys")
        refreshed = visit.page("key-created-refreshed")
        [refreshed_id] = key_ids(driver)
        assert KEYS_PAGE.search(driver.current_url.split("#")[0])
        assert driver.current_url.endswith(f"#key-{refreshed_id}")  # at its row
        assert "already exists" not in refreshed and key not in driver.page_source

        visit.open(keys_page, "api-keys-one-key")
        [key_id] = key_ids(driver)
        created_row = row(driver, key_id)
        assert created_row["name"] == KEY_NAME
        assert created_row["environment"] == "live"
        assert created_row["last-used"] == "never"
        assert key not in driver.page_source

        # A real worker stores an event sent with the copied key; the page then shows it as used.
        send(key, "browser-1")
        settle_at(engine, (1, 0), 60, quiet_seconds=0.5)

        def used() -> bool:
            driver.get(keys_page)
            return row(driver, key_id)["last-used"] != "never"

        wait_for(used, 30, "the keys page to show the key as used", interval=1)
        visit.page("api-keys-used")
        last_used = element(driver, f'tr[data-key-id="{key_id}"] td.last-used')
        assert "UTC" in last_used.get_attribute("outerHTML"), "last used: relative, with the UTC time"

        # Roll, with an hour's grace: the new key is shown once, the old one is expiring.
        grace = click_through(driver, f'tr[data-key-id="{key_id}"] a.roll', then="select[name=grace]")
        Select(grace).select_by_value("1h")
        visit.page("roll-form")
        click_through(driver, "button#roll-key", then="input#new-key")
        rolled = shown_once(visit, "key-rolled")
        assert rolled != key

        visit.open(keys_page, "api-keys-rolled")
        [new_id] = [found for found in key_ids(driver) if found != key_id]
        assert "expiring" in row(driver, key_id)["status"].lower()
        assert row(driver, new_id)["name"] == KEY_NAME
        assert "active" in row(driver, new_id)["status"].lower()
        assert key not in driver.page_source and rolled not in driver.page_source
        assert row(driver, key_id)["status"] == "expiring\nreplaced by " + row(driver, new_id)["display"]

        # At a phone's width (390 px) every key is a card: Roll and Delete are on screen, nothing
        # scrolls sideways.
        phone_screen(driver, visit, "api-keys-phone")

        # Delete the new key: the confirmation names it; then it is gone or shown deleted.
        click_through(driver, f'tr[data-key-id="{new_id}"] a.delete', then="button#delete-key")
        assert KEY_NAME in visit.page("delete-confirmation")
        click_through(driver, "button#delete-key", then="table#api-keys")
        visit.page("after-delete")
        visit.open(keys_page, "api-keys-deleted")
        remaining = key_ids(driver)
        assert new_id not in remaining or "deleted" in row(driver, new_id)["status"].lower(), row(driver, new_id)
        assert key_id in remaining

        # The old key still works within its grace; the deleted one stops authenticating at once.
        send(key, "browser-2")
        send(rolled, "browser-3")
        settle_at(engine, (2, 1), 60)
        with engine.connect() as connection:
            assert connection.scalar(select(DeadLetter.reason)) == Reason.DELETED_KEY

        # Two refused for their content, as a producer without the client's checks sends them.
        bare = producer(REDIS_URL)
        for event in (
            {"event_id": "browser-invalid", "event": "", "timestamp": utcnow().isoformat()},
            {
                "event_id": "browser-big",
                "event": "Big",
                "timestamp": utcnow().isoformat(),
                "properties": {"x": "x" * MAX_EVENT_BYTES},
            },
        ):
            bare.send_task(TRACK_TASK, args=[{"api_key": key, "batch": [event]}], queue=EVENTS_QUEUE)
        settle_at(engine, (2, 3), 60)

        # The key's row opens its page: the counts, the chart, the last refusal and its reason.
        visit.open(keys_page, "api-keys-with-traffic")
        assert row(driver, key_id)["sent"] == "2 stored · 2 refused"
        click_through(driver, f'tr[data-key-id="{key_id}"] a.activity', then="table#key-counts")
        activity = visit.page("key-activity")
        day = element(driver, 'tr[data-period="24h"]').text.split()
        assert day[-3:] == ["2", "0", "2"], day  # stored, duplicates, refused (the deleted key's is its own)
        assert driver.find_elements(By.CSS_SELECTOR, "svg#key-chart rect.bar-stored")
        assert driver.find_elements(By.CSS_SELECTOR, "svg#key-chart rect.bar-refused")
        assert "invalid_event" in activity and "too_large" in activity
        at_phone_width(driver, visit, "key-activity-phone")

        # The Ingestion tab: each reason with its keys, samples and what to do; the owner replays one.
        click_through(driver, "a#ingestion-tab", then="section.reason")
        ingestion = visit.page("ingestion")
        for reason in ("invalid_event", "too_large", "deleted_key"):
            element(driver, f"section#reason-{reason}")
        assert "What to do:" in ingestion and "deleted" in element(driver, "section#reason-deleted_key").text
        limit = element(driver, "section#rate-limit").text  # the edge's limit; nothing answered 429 here
        assert "2000 events a second" in limit and "the default" in limit and "No event was answered 429" in limit
        assert key not in driver.page_source and rolled not in driver.page_source
        at_phone_width(driver, visit, "ingestion-phone")
        click_through(driver, "section#reason-invalid_event button.replay", then="p.notice")
        assert "Replayed invalid_event: 0 of 1 now stored." in visit.page("ingestion-replayed")

        # Live events: the newest events, refreshed by the page; a new one appears by itself.
        click_through(driver, "a#live-tab", then="table#live-events")
        assert element(driver, 'tr[data-event-id="browser-2"]')
        visit.page("live-events")
        send(key, "browser-4")
        wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-event-id="browser-4"]'),
            30,
            "the new event on Live events",
            interval=0.5,
        )
        visit.page("live-events-new")
        at_phone_width(driver, visit, "live-events-phone")
        click_through(driver, "a#pause", then="a#resume")
        click_through(driver, "a#view-raw", then="pre.raw-event")
        assert '"event_id": "browser-4"' in visit.page("live-events-raw-paused")

        # Settings → Webhooks: the owner adds Stripe's signing secret; only its display form shows.
        click_through(driver, 'nav.tabs a[href$="/webhooks"]', then="table#webhook-secrets")
        visit.page("webhooks-empty")
        Select(element(driver, "select#webhook-provider")).select_by_value("stripe")
        element(driver, "input#webhook-secret").send_keys(SIGNING_SECRET)
        added = "table#webhook-secrets tr[data-secret-id] td.display"
        listed = click_through(driver, "button#add-webhook-secret", then=added).text
        visit.page("webhooks-secret-added")
        assert listed == "whsec_...0042"

        # A webhook source: the URL to paste into Stripe is shown once, in the copy field; a refresh
        # shows the Webhooks page, with the source's row and without its URL.
        Select(element(driver, "select#source-provider")).select_by_value("stripe")
        Select(element(driver, "select#source-environment")).select_by_value("live")
        field = click_through(driver, "button#create-webhook-source", then="input#source-url")
        source_url = field.get_attribute("value")
        visit.page("webhook-source-created")
        assert field.get_attribute("readonly") is not None
        assert re.fullmatch(r"https?://[^/]+/v1/webhooks/stripe/up_live_\S+", source_url), source_url
        source_key = source_url.rsplit("/", 1)[1]
        driver.refresh()
        source_name = element(driver, "table#webhook-sources tr[data-key-id] td.name").text
        visit.page("webhook-source-refreshed")
        assert source_name == "stripe webhooks (live)" and source_key not in driver.page_source

        # Settings → Members: the owner invites the member, and copies the link the page shows once
        # (no SMTP server here); the invitation is pending, the member not a member yet.
        click_through(driver, 'nav.tabs a[href$="/members"]', then="input#invite-email").send_keys(MEMBER)
        Select(element(driver, "select#invite-role")).select_by_value("member")
        shown = click_through(driver, "button#invite-member", then="input#invitation-link")
        member_link = shown.get_attribute("value")
        assert member_link.startswith(f"{base_url}/invitations/")
        visit.page("invitation-shown")
        pending = click_through(driver, "a.button.secondary", then="table#invitations td.email").text
        assert visit.page("members-pending") and pending == MEMBER
        assert MEMBER not in element(driver, "table#members").text

        # Sign out; the member accepts, setting a password, and sees the list without any control.
        click_through(driver, "button#sign-out", then="input[name=email]")
        visit.page("signed-out")
        visit.open(keys_page, "keys-page-signed-out")
        element(driver, "input[name=email]")  # the session ended: the keys page asks to sign in
        assert driver.find_elements(By.CSS_SELECTOR, "table#api-keys") == []
        member_keys_page = accept_invitation(visit, member_link, "member")
        assert member_keys_page == keys_page
        assert key_id in key_ids(driver)
        for control in ("a#new-key", "a.roll", "a.delete"):
            assert driver.find_elements(By.CSS_SELECTOR, control) == [], f"a member sees {control}"
        click_through(driver, 'nav.tabs a[href$="/webhooks"]', then="table#webhook-sources td.name")
        visit.page("member-webhooks")
        for control in ("table#webhook-secrets", "button#create-webhook-source", "table#webhook-sources a.delete"):
            assert driver.find_elements(By.CSS_SELECTOR, control) == [], f"a member sees {control}"
        click_through(driver, "a#ingestion-tab", then="section#reason-invalid_event")
        visit.page("member-ingestion")
        assert driver.find_elements(By.CSS_SELECTOR, "button.replay") == [], "a member sees Replay"
        click_through(driver, "a#live-tab", then='tr[data-event-id="browser-4"]')
        visit.page("member-live-events")

        web_log, worker_log = web.log(), (tmp_path / "worker.log").read_text(errors="replace")

    # The keys were never in a URL (requests and redirects included) nor in a log line.
    assert any(KEYS_PAGE.search(url) for url in visit.urls)
    for secret, shown_on in (
        (key, ["key-created"]),
        (rolled, ["key-rolled"]),
        (source_key, ["webhook-source-created"]),
        (SIGNING_SECRET, []),
    ):
        assert visit.pages_showing(secret) == shown_on  # a key once, on no later page; a signing secret never
        assert [url for url in visit.urls if secret in url] == []
        assert secret not in web_log
        assert secret not in worker_log
    assert visit.console == []  # no script error or Content-Security-Policy violation on any page
    assert len(list(tmp_path.glob("*.png"))) == len(visit.sources) == 37
    assert counts(engine) == (3, 3)
