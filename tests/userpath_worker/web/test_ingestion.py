"""Ingestion on the pages (issue 23, item 1): a key's counts and chart, the Ingestion tab's
refusals with samples and Replay, its rate limit at the edge and the events answered 429 (issue 21,
item 5), Live events; every member reads them, only owners replay, and nothing of another
organization is ever shown."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.common.signing import TEST_KEY_PEPPER, TEST_SECRET_KEY
from tests.common.web import OWNER, Browser, People
from userpath_client.contract import EVENTS_QUEUE, MAX_EVENT_BYTES, TRACK_TASK
from userpath_worker.db import make_session_factory, utcnow
from userpath_worker.deadletter.services import Delivery
from userpath_worker.edge.limits import RefusalCounts
from userpath_worker.events.models import Source
from userpath_worker.events.services import Ingestor
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization, Role
from userpath_worker.organizations.services import RateLimit
from userpath_worker.web.ingestion import CHART_HEIGHT, chart
from userpath_worker.webhooks.services import SigningKeys

MEMBER = "member@example.com"
STRANGER = "stranger@example.com"


def send(engine: Engine, key: str, *events: dict[str, object]) -> None:
    ingestor = Ingestor(
        make_session_factory(engine), KeyAuthenticator(TEST_KEY_PEPPER, ttl=0), SigningKeys(lambda: TEST_SECRET_KEY, 0)
    )
    ingestor.track(
        [{"api_key": key, "batch": list(events)}], {}, Source.SERVER, Delivery(TRACK_TASK, EVENTS_QUEUE, utcnow())
    )


def an_event(event_id: str, **fields: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "event": "Signed Up",
        "user_id": "user-1",
        "timestamp": utcnow().isoformat(),
        **fields,
    }


def sent_and_refused(web_engine: Engine, people: People) -> tuple[int, int, str, str]:
    """An organization whose key sent one good event, one invalid, one too large, and whose deleted
    key sent one more; plus a refusal no organization owns. (org id, key id, key, deleted key)."""
    org_id = people.organization()
    key_id, key = people.key(org_id)
    gone_id, gone = people.key(org_id, "Old server")
    send(
        web_engine,
        key,
        an_event("good"),
        an_event("invalid", event=""),
        an_event("big", properties={"x": "x" * MAX_EVENT_BYTES}),
    )
    with Session(web_engine) as session, session.begin():
        KeyService(session, TEST_KEY_PEPPER).delete(gone_id, OWNER)
    send(web_engine, gone, an_event("late"))
    send(web_engine, "up_live_" + "Z" * 40, an_event("nobody's"))
    return org_id, key_id, key, gone


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_an_owner_sees_what_a_key_sent_and_what_was_refused_and_replays_it(
    web_engine: Engine, people: People, browser: Browser
) -> None:
    org_id, key_id, key, gone = sent_and_refused(web_engine, people)
    browser.sign_in()

    keys_page = browser.get(f"/orgs/{org_id}/settings/api-keys").get_data(as_text=True)
    assert "1 stored · 2 refused" in text_of(keys_page)

    activity = browser.get(f"/orgs/{org_id}/settings/api-keys/{key_id}")
    html = activity.get_data(as_text=True)
    assert activity.status_code == 200
    day = re.search(r'<tr data-period="24h">(.*?)</tr>', html, re.S).group(1)
    assert text_of(day).split() == ["Last", "24", "hours", "1", "0", "2"]
    assert html.count('class="bar-stored"') == 1 and html.count('class="bar-refused"') == 1  # today's bar
    assert "invalid_event" in html and "too_large" in html and "last-refusal" in html

    tab = browser.get(f"/orgs/{org_id}/ingestion").get_data(as_text=True)
    for reason in ("invalid_event", "too_large", "deleted_key"):
        assert f'id="reason-{reason}"' in tab
    assert "Old server" in tab and "· deleted" in tab  # the deleted key's refusal, against that key
    assert "unknown_key" not in tab  # nobody's refusal is the operator's alone
    assert "What to do:" in tab and 'class="preview"' in tab
    assert key not in tab and gone not in tab  # samples show the key's display form only
    assert tab.count('class="secondary replay"') == 2  # invalid_event and too_large; a deleted key stays refused

    replayed = browser.post(f"/orgs/{org_id}/ingestion/replay", {"reason": "invalid_event"}, follow_redirects=True)
    assert "Replayed invalid_event: 0 of 1 now stored." in replayed.get_data(as_text=True)


def test_live_events_show_the_newest_pretty_and_raw_and_pause_stops_the_refresh(
    web_engine: Engine, people: People, browser: Browser
) -> None:
    org_id, _key_id, key, _gone = sent_and_refused(web_engine, people)
    browser.sign_in()
    live = browser.get(f"/orgs/{org_id}/events/live").get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="3">' in live and "<script>" not in live
    assert 'data-event-id="good"' in live and 'data-event-id="invalid"' not in live
    send(web_engine, key, an_event("new"))
    assert 'data-event-id="new"' in browser.get(f"/orgs/{org_id}/events/live").get_data(as_text=True)
    paused = browser.get(f"/orgs/{org_id}/events/live?paused=1&view=raw").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in paused
    assert '<pre class="raw-event" data-event-id="new">' in paused and "&#34;event_id&#34;: &#34;new&#34;" in paused


def test_a_member_reads_everything_but_cannot_replay(web_engine: Engine, people: People, browser: Browser) -> None:
    org_id, key_id, _key, _gone = sent_and_refused(web_engine, people)
    people.member(org_id, MEMBER, Role.MEMBER)
    browser.sign_in(MEMBER)
    for path in (f"/settings/api-keys/{key_id}", "/ingestion", "/events/live"):
        assert browser.get(f"/orgs/{org_id}{path}").status_code == 200
    tab = browser.get(f"/orgs/{org_id}/ingestion").get_data(as_text=True)
    assert 'id="reason-invalid_event"' in tab and "/ingestion/replay" not in tab
    assert browser.post(f"/orgs/{org_id}/ingestion/replay", {"reason": "invalid_event"}).status_code == 403


def test_another_organizations_member_finds_nothing_of_it(web_engine: Engine, people: People, browser: Browser) -> None:
    org_id, key_id, _key, _gone = sent_and_refused(web_engine, people)
    other = people.organization("Rival", STRANGER)
    browser.sign_in(STRANGER)
    for path in (f"/settings/api-keys/{key_id}", "/ingestion", "/events/live"):
        assert browser.get(f"/orgs/{org_id}{path}").status_code == 404
    assert browser.post(f"/orgs/{org_id}/ingestion/replay", {"reason": "invalid_event"}).status_code == 404
    # Their own organization's key page cannot reach another's key either.
    assert browser.get(f"/orgs/{other}/settings/api-keys/{key_id}").status_code == 404
    own = browser.get(f"/orgs/{other}/ingestion").get_data(as_text=True)
    assert "Nothing refused in the last 30 days." in own
    assert 'data-event-id="good"' not in browser.get(f"/orgs/{other}/events/live").get_data(as_text=True)


def test_the_chart_scales_to_the_busiest_day() -> None:
    today = dt.date(2026, 3, 10)
    bars = chart({today: {"stored": 4}, today - dt.timedelta(days=1): {"stored": 1, "invalid_event": 1}}, today)
    assert len(bars) == 30
    assert (bars[-1].stored_height, bars[-1].stored_y) == (CHART_HEIGHT, 0)
    assert (bars[-2].stored_height, bars[-2].refused_height) == (CHART_HEIGHT // 4, CHART_HEIGHT // 4)


def rate_limited(web_engine: Engine, org_id: int, key_id: int, events: int, ago: dt.timedelta) -> None:
    """``events`` of the key answered 429 ``ago``, counted as the edge counts them."""
    counts = RefusalCounts(sessionmaker(web_engine), clock=lambda: utcnow() - ago)
    counts.add(org_id, key_id, events)
    counts.flush()


def test_the_tab_shows_the_rate_limit_and_the_events_answered_429_by_key(
    web_engine: Engine, people: People, browser: Browser
) -> None:
    org_id = people.organization()
    key_id, _ = people.key(org_id)
    other_key_id, _ = people.key(org_id, "Mobile")
    browser.sign_in()
    tab = text_of(browser.get(f"/orgs/{org_id}/ingestion").get_data(as_text=True))
    assert "2000 events a second, in bursts of up to 20000 : the default" in tab
    assert "No event was answered 429 in the last 30 days." in tab

    with Session(web_engine) as session, session.begin():
        organizations.set_rate_limit(session, session.get_one(Organization, org_id), RateLimit(5, 50))
    rate_limited(web_engine, org_id, key_id, 30, dt.timedelta(minutes=5))
    rate_limited(web_engine, org_id, key_id, 12, dt.timedelta(days=3))  # in 30 days, not in 24 hours
    rate_limited(web_engine, org_id, other_key_id, 1, dt.timedelta(0))
    rate_limited(web_engine, org_id, key_id, 500, dt.timedelta(days=31))  # too old to show
    html = browser.get(f"/orgs/{org_id}/ingestion").get_data(as_text=True)
    tab = text_of(html)
    assert "5 events a second, in bursts of up to 50 : set for this organization by your operator" in tab
    rows = re.findall(r'<tr><td class="key">(.*?)</td><td class="day">(\d+)</td><td class="month">(\d+)</td>', html)
    assert rows == [
        ("App X Production Server (" + display(web_engine, key_id) + ")", "30", "42"),
        ("Mobile (" + display(web_engine, other_key_id) + ")", "1", "1"),
    ]
    assert "All keys 31 43" in tab
    assert "What to do:" in tab and "userpath orgs set-limits" in tab
    assert "Nothing refused in the last 30 days." in tab  # a 429 is no dead letter: no reason section, no Replay
    assert 'id="reason-rate_limited"' not in html

    key_page = browser.get(f"/orgs/{org_id}/settings/api-keys/{key_id}").get_data(as_text=True)
    assert "<code>rate_limited</code>: 42" in key_page and "the organization sent over its rate limit" in key_page


def test_members_read_the_rate_limit_and_another_organization_finds_none_of_it(
    web_engine: Engine, people: People, browser: Browser
) -> None:
    org_id = people.organization()
    key_id, _ = people.key(org_id)
    with Session(web_engine) as session, session.begin():
        organizations.set_rate_limit(session, session.get_one(Organization, org_id), RateLimit(7, 70))
    rate_limited(web_engine, org_id, key_id, 9, dt.timedelta(0))
    people.member(org_id, MEMBER, Role.MEMBER)
    browser.sign_in(MEMBER)
    tab = text_of(browser.get(f"/orgs/{org_id}/ingestion").get_data(as_text=True))
    assert "7 events a second, in bursts of up to 70" in tab and "9" in tab.split("Last 30 days")[1]

    other = people.organization("Rival", STRANGER)
    browser.sign_in(STRANGER)
    assert browser.get(f"/orgs/{org_id}/ingestion").status_code == 404
    own = text_of(browser.get(f"/orgs/{other}/ingestion").get_data(as_text=True))
    assert "the default" in own and "No event was answered 429 in the last 30 days." in own
    assert "7 events a second" not in own


def display(web_engine: Engine, key_id: int) -> str:
    with Session(web_engine) as session:
        return session.get_one(ApiKey, key_id).display
