"""Item 5 of issue 13, one test a point: CSRF, the Origin check, the response headers, escaping,
another organization's key, an off-site ``next``; and the session cookie's flags."""

from __future__ import annotations

import base64
import re

import pytest
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from tests.common.signing import TEST_KEY_PEPPER
from tests.common.web import BASE_URL, CSRF_FIELD, OWNER, PASSWORD, Browser, People, new_key_form, web_settings
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.web.app import SESSION_COOKIE, create_app
from userpath_worker.web.auth import BROWSER_COOKIE
from userpath_worker.web.security import CONTENT_SECURITY_POLICY, is_local_path, origin_of


def keys_page(org_id: int) -> str:
    return f"/orgs/{org_id}/settings/api-keys"


def test_a_form_without_its_csrf_token_is_refused_with_400(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    response = browser.post(
        keys_page(org_id), {"name": "No token", "environment": "live", "expiry": "never"}, csrf=False
    )
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)
    forged = browser.post(
        keys_page(org_id), {"name": "Forged", "environment": "live", "expiry": "never", "csrf_token": "x"}
    )
    assert forged.status_code == 400
    assert "Forged" not in browser.get(keys_page(org_id)).get_data(as_text=True)


def test_the_sign_in_form_needs_its_csrf_token_too(browser: Browser, people: People) -> None:
    people.organization()
    response = browser.post("/sign-in", {"email": OWNER, "password": PASSWORD}, csrf=False)
    assert response.status_code == 400


def create_with(browser: Browser, org_id: int, name: str, headers: dict[str, str]) -> int:
    """POST the new-key form with only these headers (no Origin unless given); the status."""
    response = browser.post(keys_page(org_id), new_key_form(name), origin=None, headers=headers)
    if response.status_code == 403:
        # Says where to open the page, and links there (not to this host, which may be the wrong one).
        assert f'<a href="{BASE_URL}/">' in response.get_data(as_text=True)
    return response.status_code


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "http://127.0.0.1:8001"}, 403),  # another port is another origin
        ({"Origin": "null"}, 403),
        ({"Referer": "https://evil.example/page"}, 403),
        ({}, 403),  # neither header: refused too
        ({"Origin": BASE_URL}, 303),  # to the page that shows the key
        ({"Referer": f"{BASE_URL}/orgs/1/settings/api-keys/new"}, 303),  # a browser that sent no Origin
    ],
    ids=["other-site", "other-port", "null", "other-referer", "none", "this-origin", "this-referer"],
)
def test_a_post_from_another_origin_is_refused_with_403(
    browser: Browser, people: People, headers: dict[str, str], status: int
) -> None:
    org_id = people.organization()
    browser.sign_in()
    assert create_with(browser, org_id, "Sent", headers) == status
    assert ("Sent" in browser.get(keys_page(org_id)).get_data(as_text=True)) is (status == 303)


@pytest.mark.parametrize("path", ["/sign-in", "/static/style.css", "/static/copy.js", "/healthz", "/no-such-page"])
def test_every_response_carries_the_security_headers(browser: Browser, path: str) -> None:
    response = browser.get(path)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_the_pages_name_their_icon_and_it_is_served(browser: Browser) -> None:
    # Without it every page view costs the browser a 404 for /favicon.ico.
    html = browser.get("/sign-in").get_data(as_text=True)
    [icon] = re.findall(r'<link rel="icon" type="image/svg\+xml" href="([^"]+)">', html)
    response = browser.get(icon)
    assert (response.status_code, response.mimetype) == (200, "image/svg+xml")
    assert response.get_data(as_text=True).startswith("<svg")


def test_the_policy_allows_no_inline_script_and_no_framing() -> None:
    directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no nonce: no inline script at all
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self'"


def test_the_pages_have_no_inline_script_or_style(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    key_id, _ = people.key(org_id)
    for path in (
        "/sign-in",
        keys_page(org_id),
        f"{keys_page(org_id)}/new",
        f"{keys_page(org_id)}/{key_id}/roll",
        f"{keys_page(org_id)}/{key_id}/delete",
        f"/orgs/{org_id}/settings/members",
        f"/orgs/{org_id}/settings/audit",
    ):
        html = browser.get(path).get_data(as_text=True)
        assert html.count("<script") == html.count('<script src="/static/copy.js" defer></script>'), path
        assert "style=" not in html and "<style" not in html and " on" + "click=" not in html, path


def test_a_key_named_like_a_script_is_shown_as_text(browser: Browser, people: People) -> None:
    org_id = people.organization()
    browser.sign_in()
    name = "<script>alert(1)</script>"
    created = browser.shown_once(browser.post(keys_page(org_id), new_key_form(name)))
    listed = browser.get(keys_page(org_id))
    for response in (created, listed):
        html = response.get_data(as_text=True)
        assert name not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_another_organizations_key_id_answers_404(browser: Browser, people: People) -> None:
    mine = people.organization("Mine")
    theirs = people.organization("Theirs", owner="other@example.com")
    their_key, plaintext = people.key(theirs)
    browser.sign_in()
    assert browser.get(f"{keys_page(mine)}/{their_key}/new").status_code == 404  # the page a new key is shown on
    for path in (f"{keys_page(mine)}/{their_key}/roll", f"{keys_page(mine)}/{their_key}/delete"):
        assert browser.get(path).status_code == 404
        assert browser.post(path, {"grace": "0"}).status_code == 404
    # Their organization's pages are not found either, rather than forbidden.
    assert browser.get(keys_page(theirs)).status_code == 404
    assert browser.post(f"{keys_page(theirs)}/{their_key}/delete").status_code == 404
    # Nothing was done to it: it authenticates as before.
    with Session(people.engine) as session:
        assert isinstance(KeyService(session, TEST_KEY_PEPPER).authenticate(plaintext), KeyIdentity)


def test_the_404_for_another_organizations_key_is_the_one_for_an_unknown_id(browser: Browser, people: People) -> None:
    mine = people.organization("Mine")
    theirs = people.organization("Theirs", owner="other@example.com")
    their_key, _ = people.key(theirs)
    browser.sign_in()
    foreign = browser.get(f"{keys_page(mine)}/{their_key}/roll")
    unknown = browser.get(f"{keys_page(mine)}/999999/roll")
    assert foreign.status_code == unknown.status_code == 404
    # The same page, but for the sign-out form's CSRF token (signed with the second it was made).
    assert CSRF_FIELD.sub("", foreign.get_data(as_text=True)) == CSRF_FIELD.sub("", unknown.get_data(as_text=True))


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "http:/evil.example",
        "javascript:alert(1)",
        " https://evil.example",
    ],
)
def test_a_next_pointing_off_the_site_is_ignored(browser: Browser, people: People, target: str) -> None:
    people.organization()
    response = browser.post(f"/sign-in?next={target}", {"email": OWNER, "password": PASSWORD, "next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_a_next_on_the_site_is_followed_after_sign_in(browser: Browser, people: People) -> None:
    org_id = people.organization()
    asked = browser.get(f"/orgs/{org_id}/settings/audit")
    assert asked.status_code == 302
    sign_in_page = browser.get(asked.headers["Location"]).get_data(as_text=True)
    assert f'name="next" value="/orgs/{org_id}/settings/audit"' in sign_in_page
    response = browser.post(
        "/sign-in",
        {"email": OWNER, "password": PASSWORD, "next": f"/orgs/{org_id}/settings/audit"},
    )
    assert response.headers["Location"] == f"/orgs/{org_id}/settings/audit"


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("/orgs/1/settings/api-keys", True),
        ("/orgs/1/settings/audit?page=2", True),
        ("/", True),
        ("", False),
        (None, False),
        ("orgs/1", False),
        ("//evil.example", False),
        ("/\\evil.example", False),
        ("/\tevil", False),
        ("https://evil.example", False),
    ],
)
def test_only_paths_of_this_site_count_as_local(target: str | None, local: bool) -> None:
    assert is_local_path(target) is local


def test_origins_are_compared_without_default_ports_and_case() -> None:
    assert origin_of("HTTPS://Example.COM:443/path") == "https://example.com"
    assert origin_of("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert origin_of("null") is None
    assert origin_of("ftp://example.com") is None


def set_cookie(response: TestResponse, name: str) -> str:
    [cookie] = [cookie for cookie in response.headers.getlist("Set-Cookie") if cookie.startswith(f"{name}=")]
    return cookie


@pytest.mark.parametrize("name", [SESSION_COOKIE, BROWSER_COOKIE])
def test_the_cookies_are_httponly_and_samesite_lax_and_not_secure_on_http(
    browser: Browser, people: People, name: str
) -> None:
    people.organization()
    cookie = set_cookie(browser.sign_in(), name)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_the_browser_cookie_names_no_e_mail_and_cannot_be_forged(app: Flask, browser: Browser, people: People) -> None:
    """It lets a browser that signed in before past the failures others caused: signed, and with a
    digest of the e-mail, not the e-mail."""
    people.organization()
    cookie = set_cookie(browser.sign_in(), BROWSER_COOKIE)
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert OWNER not in base64.urlsafe_b64decode(value.split(".")[0] + "==").decode(errors="replace")
    attacker = Browser(app.test_client()).from_address("203.0.113.66")
    for _ in range(5):
        attacker.post("/sign-in", {"email": OWNER, "password": "not the password"})
    forged = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    attacker.client.set_cookie(BROWSER_COOKIE, forged)
    assert attacker.post("/sign-in", {"email": OWNER, "password": PASSWORD}).status_code == 429
    attacker.client.set_cookie(BROWSER_COOKIE, value)  # the owner's own, stolen: past the address's count
    assert attacker.post("/sign-in", {"email": OWNER, "password": PASSWORD}).status_code == 302


def test_the_session_cookie_is_secure_when_the_base_url_is_https(web_engine: Engine, people: People) -> None:
    people.organization()
    app: Flask = create_app(web_settings(web_engine, web_base_url="https://keys.example.com"), web_engine)
    browser = Browser(app.test_client())
    response = browser.post(
        "/sign-in",
        {"email": OWNER, "password": PASSWORD},
        origin="https://keys.example.com",
        headers={"Referer": "https://keys.example.com/sign-in"},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    for name in (SESSION_COOKIE, BROWSER_COOKIE):
        cookie = set_cookie(response, name)
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_a_failure_inside_a_page_is_a_plain_500_with_the_headers_and_no_detail(
    browser: Browser, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_id = people.organization()
    browser.sign_in()

    def broken(*_: object) -> None:
        raise OperationalError("SELECT secret", {"parameter": "up_live_notarealkey"}, Exception("server closed"))

    monkeypatch.setattr(KeyService, "listing", broken)
    response = browser.get(keys_page(org_id))
    html = response.get_data(as_text=True)
    assert response.status_code == 500
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "Internal Server Error" in html
    assert "SELECT" not in html and "notarealkey" not in html and "Traceback" not in html
    monkeypatch.undo()
    assert browser.get(keys_page(org_id)).status_code == 200  # the next request is served as usual
