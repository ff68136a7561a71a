"""Fixtures of the rotation tests: a recorded reminder to deliver, and a webhook to deliver it to."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import pytest
import time_machine
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from tests.common.factories import OWNER, add_member, make_organization
from tests.common.webhook import WebhookServer
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations.models import Role
from userpath_worker.rotation.models import Reminder
from userpath_worker.rotation.services import RotationPolicy, run_pass


@pytest.fixture
def reminder(session: Session, keys: KeyService) -> tuple[Reminder, str]:
    """A recorded reminder for a key created 100 days ago and never used, and that key's plaintext.

    Its organization, Acme, has two owners (owner@example.com, second-owner@example.com), an admin
    (admin@example.com) and a member (member@example.com).
    """
    organization = make_organization(session, "Acme")
    add_member(session, organization, "second-owner@example.com", Role.OWNER)
    add_member(session, organization, "admin@example.com", Role.ADMIN)
    add_member(session, organization, "member@example.com", Role.MEMBER)
    with time_machine.travel(dt.datetime.now(dt.UTC) - dt.timedelta(days=100), tick=False):
        key, plaintext = keys.create(organization, "App X Production Server", OWNER)
    for _ in run_pass(lambda: contextlib.nullcontext(session), RotationPolicy.from_settings(Settings())):
        pass
    (recorded,) = session.scalars(select(Reminder).where(Reminder.api_key_id == key.id))
    return recorded, plaintext


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()
