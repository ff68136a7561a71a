"""Leaked keys (issue 23, item 4): GitHub's secret-scanning reports at POST /v1/secret-scanning/github,
verified against a local ECDSA P-256 key pair served as GitHub publishes its keys; a valid report
revokes the key within a second, audits where it was found, e-mails the owners (a local SMTP server)
and posts ``api_key.exposed`` to the reminder webhook; the keys list shows it exposed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.secret_scanning import GithubKeys, report
from tests.common.signing import TEST_KEY_PEPPER
from tests.common.smtp import SmtpServer
from tests.common.web import OWNER, Browser, People, web_settings
from tests.common.webhook import WebhookServer
from userpath_worker.audit.models import AuditEntry
from userpath_worker.db import utcnow
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyIdentity, KeyService
from userpath_worker.keys.tokens import AuthFailure, Environment, generate
from userpath_worker.organizations.models import Role
from userpath_worker.web.app import create_app

ENDPOINT = "/v1/secret-scanning/github"
LEAK_URL = "https://github.com/acme/app/blob/abc123/.env"
SECOND_OWNER = "second-owner@example.com"


@pytest.fixture
def github() -> Iterator[GithubKeys]:
    keys = GithubKeys()
    yield keys
    keys.close()


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


def scanning_app(engine: Engine, github: GithubKeys, **settings: Any) -> Flask:
    return create_app(web_settings(engine, secret_scanning_keys_url=github.url, **settings), engine)


@pytest.fixture
def reporting_app(web_engine: Engine, github: GithubKeys, smtp: SmtpServer, hook: WebhookServer) -> Flask:
    return scanning_app(web_engine, github, smtp_url=smtp.url, reminder_webhook_url=hook.url)


def post(app: Flask, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """POST as GitHub does: no cookie, no Origin, no CSRF token."""
    response = app.test_client().post(ENDPOINT, data=body, headers=headers)
    return response.status_code, response.get_json()


def authenticate(people: People, plaintext: str) -> KeyIdentity | AuthFailure:
    with Session(people.engine) as session:
        return KeyService(session, TEST_KEY_PEPPER).authenticate(plaintext)


def test_a_valid_report_revokes_the_key_within_a_second_audits_and_tells_the_owners(
    reporting_app: Flask, github: GithubKeys, smtp: SmtpServer, hook: WebhookServer, people: People
) -> None:
    org_id = people.organization()
    people.member(org_id, SECOND_OWNER, Role.OWNER)
    people.member(org_id, "member@example.com", Role.MEMBER)
    key_id, leaked = people.key(org_id, "App X Production Server")
    other_id, other = people.key(org_id, "Untouched")
    assert isinstance(authenticate(people, leaked), KeyIdentity)

    body = report(leaked, url=LEAK_URL)
    started = time.monotonic()
    status, answer = post(reporting_app, body, github.signed(body))
    assert status == 200, answer
    assert authenticate(people, leaked) is AuthFailure.EXPIRED  # refused from now on
    assert time.monotonic() - started < 1.0  # verified, revoked, e-mailed and posted within a second
    assert answer == [
        {
            "token_hash": hashlib.sha256(leaked.encode()).hexdigest(),
            "token_type": "userpath_api_key",
            "label": "true_positive",
        }
    ]
    assert leaked not in json.dumps(answer)
    assert isinstance(authenticate(people, other), KeyIdentity)  # only the reported key

    with Session(people.engine) as session:
        key = session.get_one(ApiKey, key_id)
        assert key.exposed_url == LEAK_URL and key.exposed_at is not None
        audited = session.scalars(select(AuditEntry).where(AuditEntry.action == "key.exposed")).one()
    assert (audited.actor, audited.api_key_id) == ("system", key_id)
    assert audited.detail["url"] == LEAK_URL
    assert (audited.detail["source"], audited.detail["action"]) == ("github", "revoked")

    [mail] = smtp.received
    assert sorted(mail.recipients) == sorted([OWNER, SECOND_OWNER])  # the owners, not the member
    assert "found in public" in str(mail.message["Subject"])
    text = mail.message.get_content()
    assert LEAK_URL in text and "revoked" in text and f"/orgs/{org_id}/settings/api-keys#key-{key_id}" in text
    assert leaked not in mail.raw.decode()
    [posted] = hook.bodies
    assert (posted["event"], posted["key_id"], posted["action"]) == ("api_key.exposed", key_id, "revoked")
    assert posted["exposed_url"] == LEAK_URL and leaked not in json.dumps(posted)
    assert other_id != key_id


def test_the_keys_list_shows_the_key_exposed_with_where_and_when(
    reporting_app: Flask, github: GithubKeys, people: People
) -> None:
    org_id = people.organization()
    key_id, leaked = people.key(org_id)
    body = report(leaked, url=LEAK_URL)
    assert post(reporting_app, body, github.signed(body))[0] == 200
    browser = Browser(reporting_app.test_client())
    browser.sign_in()
    html = browser.get(f"/orgs/{org_id}/settings/api-keys").get_data(as_text=True)
    row = html.split(f'<tr id="key-{key_id}"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="badge expired">expired</span>' in row
    assert '<span class="badge exposed">exposed</span> found just now at ' in row
    assert f'<a class="exposed-url" href="{LEAK_URL}" rel="nofollow noopener noreferrer">{LEAK_URL}</a>' in row
    assert utcnow().strftime("%Y-%m-%d") in row.split("exposure", 1)[1]  # when, in UTC
    assert 'class="roll"' not in row  # nothing to roll: make a new key


def test_a_bad_signature_is_400_and_revokes_nothing(reporting_app: Flask, github: GithubKeys, people: People) -> None:
    org_id = people.organization()
    _, leaked = people.key(org_id)
    body = report(leaked)
    headers = github.signed(body)
    tampered = report(leaked, url="https://github.com/someone/else")
    assert post(reporting_app, tampered, headers) == (400, {"error": "bad signature"})
    stranger = GithubKeys()  # a key pair GitHub never published
    try:
        assert post(reporting_app, body, stranger.signed(body))[0] == 400
    finally:
        stranger.close()
    garbled = {**headers, "Github-Public-Key-Signature": "not base64!"}
    assert post(reporting_app, body, garbled)[0] == 400
    unknown_identifier = github.signed(body, identifier="no-such-key")
    assert post(reporting_app, body, unknown_identifier)[0] == 400
    assert isinstance(authenticate(people, leaked), KeyIdentity)


@pytest.mark.parametrize("missing", ["Github-Public-Key-Identifier", "Github-Public-Key-Signature"])
def test_a_report_without_the_headers_is_404(
    reporting_app: Flask, github: GithubKeys, people: People, missing: str
) -> None:
    org_id = people.organization()
    _, leaked = people.key(org_id)
    body = report(leaked)
    headers = {name: value for name, value in github.signed(body).items() if name != missing}
    assert post(reporting_app, body, headers)[0] == 404
    assert isinstance(authenticate(people, leaked), KeyIdentity)


def test_tokens_that_are_not_our_keys_are_false_positives(
    reporting_app: Flask, github: GithubKeys, smtp: SmtpServer, people: People
) -> None:
    org_id = people.organization()
    _, ours = people.key(org_id)
    unknown = generate(Environment.LIVE)  # well formed, checksum right, never issued
    mistyped = ours[:-1] + ("A" if ours[-1] != "A" else "B")  # its checksum fails
    body = report(unknown, mistyped, "ghp_notours", ours)
    status, answer = post(reporting_app, body, github.signed(body))
    assert status == 200
    assert [item["label"] for item in answer] == ["false_positive", "false_positive", "false_positive", "true_positive"]
    assert [item["token_hash"] for item in answer] == [
        hashlib.sha256(token.encode()).hexdigest() for token in (unknown, mistyped, "ghp_notours", ours)
    ]
    assert len(smtp.received) == 1  # for our key only


def test_the_public_keys_are_fetched_once_and_cached(reporting_app: Flask, github: GithubKeys, people: People) -> None:
    org_id = people.organization()
    for name in ("One", "Two", "Three"):
        _, leaked = people.key(org_id, name)
        body = report(leaked)
        assert post(reporting_app, body, github.signed(body))[0] == 200
    assert github.fetches == 1


def test_a_body_that_is_no_report_is_400(reporting_app: Flask, github: GithubKeys) -> None:
    for body in (b"not json", b'{"token": "x"}', b'[{"type": "no token"}]'):
        assert post(reporting_app, body, github.signed(body))[0] == 400, body


def test_unreachable_public_keys_answer_503_for_github_to_retry(web_engine: Engine, people: People) -> None:
    closed = GithubKeys()
    closed.close()
    app = create_app(web_settings(web_engine, secret_scanning_keys_url=closed.url), web_engine)
    org_id = people.organization()
    _, leaked = people.key(org_id)
    body = report(leaked)
    assert post(app, body, closed.signed(body))[0] == 503
    assert isinstance(authenticate(people, leaked), KeyIdentity)


def test_the_setting_may_give_an_hour_instead(web_engine: Engine, github: GithubKeys, people: People) -> None:
    app = scanning_app(web_engine, github, exposed_key_action="expire_in_1h")
    org_id = people.organization()
    key_id, leaked = people.key(org_id)
    body = report(leaked)
    assert post(app, body, github.signed(body))[0] == 200
    identity = authenticate(people, leaked)
    assert isinstance(identity, KeyIdentity)  # still works, for the owners to roll it first
    assert identity.expires_at is not None
    assert abs(identity.expires_at - (utcnow() + dt.timedelta(hours=1))) < dt.timedelta(minutes=1)
    with Session(people.engine) as session:
        audited = session.scalars(select(AuditEntry).where(AuditEntry.action == "key.exposed")).one()
    assert audited.detail["action"] == "expires_in_1h" and audited.api_key_id == key_id
