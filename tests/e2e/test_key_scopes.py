"""Key scopes through a real worker (issue 21, item 6), on Redis and RabbitMQ: what a key may not
send is dead-lettered as ``scope_denied`` in its organization, what it may send is stored, and a
rolled key keeps its scopes. A webhook URL's key that leaks cannot send track events."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.cli import ok
from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.factories import OWNER
from tests.common.signing import TEST_KEY_PEPPER
from tests.common.workers import (
    FAULTS_RABBITMQ_VHOST,
    FAULTS_REDIS_URL,
    database_fixtures,
    empty_queues,
    rabbitmq_vhost,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_client import UserPath
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event
from userpath_worker.keys.services import KeyService
from userpath_worker.organizations import services as organizations

pytestmark = pytest.mark.slow

INVOICE = '{"id":"evt_%s","type":"invoice.paid","data":{"object":{"customer":"cus_1"}}}'


database, clean_database = database_fixtures(f"{TEST_DATABASE_PREFIX}_key_scopes")


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    url = FAULTS_REDIS_URL if request.param == "redis" else rabbitmq_vhost(FAULTS_RABBITMQ_VHOST)
    empty_queues(url)
    return url


def test_a_key_sends_only_what_its_scopes_permit_and_a_rolled_key_keeps_them(
    clean_database: tuple[str, Engine], broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url, engine = clean_database
    with Session(engine) as session, session.begin():
        organization = organizations.create_organization(session, "Scoped Inc", OWNER)
        org_id = organization.id
        keys = KeyService(session, TEST_KEY_PEPPER)
        _, stripe_only = keys.create(organization, "Stripe webhook URL", OWNER, scopes=frozenset({"webhooks:stripe"}))
        track_only, _ = keys.create(organization, "Backend", OWNER, scopes=frozenset({"track"}))
        _, rolled = keys.roll(track_only.id, OWNER, dt.timedelta(0))  # the old plaintext stops now

    leaked = UserPath(stripe_only, broker_url=broker)
    leaked.track("Refund Issued", user_id="victim", properties={"amount": -999999})
    leaked.job_event("Export Run", user_id="victim", job_name="export", run_id="1")
    leaked.webhook("github", "gh-1", {"X-GitHub-Event": "push"}, "{}")
    leaked.webhook("stripe", "evt_1", {"Content-Type": "application/json"}, INVOICE % "1")
    leaked.close()
    backend = UserPath(rolled, broker_url=broker)
    backend.track("Signed Up", user_id="u1")
    backend.job_event("Invoices Sent", user_id="billing", job_name="send-invoices", run_id="42")
    backend.webhook("stripe", "evt_2", {}, INVOICE % "2")
    backend.close()

    with running_worker(worker_environment(database_url, broker), tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (2, 5), timeout=60)

    with Session(engine) as session:
        stored = {(event.org_id, event.source.value, event.name) for event in session.scalars(select(Event))}
        letters = {(letter.org_id, letter.reason, letter.detail) for letter in session.scalars(select(DeadLetter))}
    assert stored == {(org_id, "webhook", "stripe.invoice.paid"), (org_id, "server", "Signed Up")}
    assert letters == {
        (org_id, "scope_denied", "API key may not send server events: its scopes are webhooks:stripe"),
        (org_id, "scope_denied", "API key may not send job events: its scopes are webhooks:stripe"),
        (org_id, "scope_denied", "API key may not send github webhooks: its scopes are webhooks:stripe"),
        (org_id, "scope_denied", "API key may not send job events: its scopes are track"),
        (org_id, "scope_denied", "API key may not send stripe webhooks: its scopes are track"),
    }
    monkeypatch.setenv("USERPATH_DATABASE_URL", database_url)
    listed = json.loads(ok("deadletter", "list", "--org", "Scoped Inc", "--reason", "scope_denied", "--json").stdout)
    assert len(listed) == 5  # what the organization's owner sees
    assert stripe_only not in (tmp_path / "worker.log").read_text()
