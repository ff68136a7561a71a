"""The web pages in tests: the app's settings, a browser-like client that sends the Origin header
and the form's CSRF token as a browser does, and people with passwords on a committed database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from config.settings import Settings
from tests.common.signing import TEST_KEY_PEPPER
from userpath_worker.accounts import services as accounts
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization, Role

BASE_URL = "http://127.0.0.1:8000"
WEB_SECRET = "web-test-secret-0123456789abcdef0123456789"
OWNER = "owner@example.com"
PASSWORD = "correct horse battery staple"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def new_key_form(name: str, **fields: str | list[str]) -> dict[str, str | list[str]]:
    """Settings → API Keys' "+" form as it first shows, named ``name``: every scope box ticked."""
    return {"name": name, "environment": "live", "expiry": "never", "scope": ["track", "jobs", "webhooks"], **fields}


def web_settings(engine: Engine, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": engine.url.render_as_string(hide_password=False),
        "web_secret": WEB_SECRET,
        "web_base_url": BASE_URL,
        **overrides,
    }
    return Settings(**values)


class Browser:
    """The Flask test client with what a browser adds to a form it submits: the page's CSRF token
    (read from a page, as the browser has it) and the Origin header of the site."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def get(self, path: str, **options: Any) -> TestResponse:
        return self.client.get(path, **options)

    def post(
        self,
        path: str,
        data: dict[str, str | list[str]] | None = None,
        *,
        origin: str | None = BASE_URL,
        csrf: bool = True,
        headers: dict[str, str] | None = None,
        follow_redirects: bool = False,
    ) -> TestResponse:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf_token", self.csrf_token())
        sent = {"Origin": origin} if origin else {}
        return self.client.post(path, data=form, headers={**sent, **(headers or {})}, follow_redirects=follow_redirects)

    def csrf_token(self) -> str:
        """A valid token of the current session, from a page that has a form (sign-in, or when
        signed in the sign-out button of any page)."""
        page = self.client.get("/sign-in", follow_redirects=True)
        return csrf_token_in(page.get_data(as_text=True))

    def sign_in(self, email: str = OWNER, password: str = PASSWORD) -> TestResponse:
        response = self.post("/sign-in", {"email": email, "password": password})
        assert response.status_code == 302, response.get_data(as_text=True)
        return response

    def from_address(self, address: str) -> Browser:
        """This browser, its requests coming from client ``address`` from now on."""
        self.client.environ_base["REMOTE_ADDR"] = address
        return self


def csrf_token_in(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


@dataclass
class People:
    """Organizations and members with accounts and passwords, committed."""

    engine: Engine

    def organization(self, name: str = "Acme", owner: str = OWNER) -> int:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            organization = organizations.create_organization(session, name, owner)
            self._join(session, organization, owner, Role.OWNER)
            return organization.id

    def founded(self, name: str, owner: str) -> tuple[int, str]:
        """An organization as ``userpath orgs create`` makes it: its founder has not opened the link
        it printed yet (no password). Its id and the link's path."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            organization = organizations.create_organization(session, name, owner)
            token = accounts.invite(session, organization, owner, Role.OWNER, accounts.OPERATOR)
            return organization.id, f"/invitations/{token}"

    def member(self, org_id: int, email: str, role: Role) -> None:
        with Session(self.engine) as session, session.begin():
            self._join(session, session.get_one(Organization, org_id), email, role)

    def key(self, org_id: int, name: str = "App X Production Server", **options: Any) -> tuple[int, str]:
        """(key id, plaintext) of a key made through the service, as the CLI makes them."""
        with Session(self.engine) as session, session.begin():
            organization = session.get_one(Organization, org_id)
            owner = organizations.members_of(session, organization)[0].email
            key, plaintext = KeyService(session, TEST_KEY_PEPPER).create(organization, name, owner, **options)
            return key.id, plaintext

    @staticmethod
    def _join(session: Session, organization: Organization, email: str, role: Role) -> None:
        """Invited by the operator, and accepted (with a first password, or the one it has)."""
        accounts.accept_invitation(
            session, accounts.invite(session, organization, email, role, accounts.OPERATOR), PASSWORD
        )
