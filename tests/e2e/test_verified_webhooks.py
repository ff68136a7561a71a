"""Verified webhooks through a real worker (issue 15's "done when"): for an organization with
Stripe and GitHub secrets, forged deliveries sent by the producer client are dead-lettered with
their reason, genuine ones stored as verified; no secret in any table, dead letter or DEBUG log."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.brokers import RABBITMQ_URL
from tests.common.cli import ok
from tests.common.databases import TEST_DATABASE_PREFIX, table_dump, truncate_all
from tests.common.factories import OWNER, new_key
from tests.common.signing import GITHUB_SECRET, STRIPE_SECRET, TEST_SECRET_KEY, github_headers, stripe_headers
from tests.common.workers import (
    REPOSITORY,
    empty_queues,
    migrated_database,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_client import UserPath
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events.models import Event
from userpath_worker.organizations.models import Organization
from userpath_worker.webhooks import services as webhook_secrets
from userpath_worker.webhooks.crypto import SecretBox

# Redis database 2 is this module's alone.
REDIS_URL = os.environ.get("USERPATH_TEST_WEBHOOKS_REDIS_URL", "redis://127.0.0.1:6379/2")
INVOICE = '{"id":"evt_%s","type":"invoice.paid","data":{"object":{"customer":"cus_1"}}}'
PUSH = '{"ref":"refs/heads/main","sender":{"login":"octocat"}}'
FORGER_SECRET = "whsec_forged_0000000000000000000000000000"


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, Engine]]:
    url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_verified_webhooks")
    yield url, engine
    engine.dispose()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    # Verification is the core's, whatever the transport: both brokers' batched paths reach it.
    url = REDIS_URL if request.param == "redis" else RABBITMQ_URL
    empty_queues(url)
    return url


@pytest.mark.slow
def test_forged_webhooks_are_dead_lettered_and_genuine_ones_stored_as_verified(
    database: tuple[str, Engine], broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url, engine = database
    truncate_all(engine)
    org_id, _, api_key = new_key(engine)
    _, _, other_key = new_key(engine)  # an organization without secrets
    with Session(engine) as session, session.begin():
        organization = session.get_one(Organization, org_id)
        organization_name = organization.name
        box = SecretBox(TEST_SECRET_KEY)
        webhook_secrets.add_secret(session, box, organization, "stripe", STRIPE_SECRET, OWNER)
        webhook_secrets.add_secret(session, box, organization, "github", GITHUB_SECRET, OWNER)

    now = dt.datetime.now(dt.UTC)
    client = UserPath(api_key, broker_url=broker)
    client.webhook("stripe", "evt_good", stripe_headers([STRIPE_SECRET], INVOICE % "good", now), INVOICE % "good")
    client.webhook("stripe", "evt_forged", stripe_headers([FORGER_SECRET], INVOICE % "f", now), INVOICE % "f")
    client.webhook("stripe", "evt_unsigned", {}, INVOICE % "unsigned")
    genuine_then_changed = stripe_headers([STRIPE_SECRET], INVOICE % "x", now)
    client.webhook("stripe", "evt_changed", genuine_then_changed, (INVOICE % "x").replace("cus_1", "cus_9"))
    old = now - dt.timedelta(hours=1)
    client.webhook("stripe", "evt_old", stripe_headers([STRIPE_SECRET], INVOICE % "old", old), INVOICE % "old")
    client.webhook("github", "gh-good", github_headers(GITHUB_SECRET, PUSH), PUSH)
    client.webhook("github", "gh-forged", github_headers("guessed", PUSH), PUSH)
    client.close()
    without_secrets = UserPath(other_key, broker_url=broker)
    without_secrets.webhook("stripe", "evt_any", stripe_headers([FORGER_SECRET], INVOICE % "a", now), INVOICE % "a")
    without_secrets.close()

    log = tmp_path / "worker.log"
    environment = worker_environment(database_url, broker, USERPATH_LOG_LEVEL="DEBUG")
    with running_worker(environment, log, "--concurrency=1"):
        settle_at(engine, (3, 5), timeout=60)

    with Session(engine) as session:
        events = {(e.org_id, e.context["webhook"]["delivery_id"], e.verified) for e in session.scalars(select(Event))}
        letters = {
            (d.org_id, d.payload["delivery_id"], d.reason, d.detail) for d in session.scalars(select(DeadLetter))
        }
        dump = table_dump(session, engine)
    other_org = next(org for org, delivery, _ in events if delivery == "evt_any")
    assert events == {(org_id, "evt_good", True), (org_id, "gh-good", True), (other_org, "evt_any", False)}
    assert letters == {
        (org_id, "evt_forged", "bad_signature", "no v1 signature of Stripe-Signature matches a signing secret"),
        (org_id, "evt_unsigned", "unsigned_webhook", "no Stripe-Signature header"),
        (org_id, "evt_changed", "bad_signature", "no v1 signature of Stripe-Signature matches a signing secret"),
        (org_id, "evt_old", "bad_signature", "Stripe-Signature's t is 3600 s from received_at; the tolerance is 300 s"),
        (org_id, "gh-forged", "bad_signature", "X-Hub-Signature-256 matches no signing secret"),
    }
    monkeypatch.setenv("USERPATH_DATABASE_URL", database_url)
    listed = json.loads(ok("events", "list", "--org", organization_name, "--json").output)
    assert sorted((e["context"]["webhook"]["delivery_id"], e["verified"]) for e in listed) == [
        ("evt_good", True),
        ("gh-good", True),
    ]
    logged = log.read_text(errors="replace")
    assert "message handled" in logged  # DEBUG lines were written
    for secret in (STRIPE_SECRET, GITHUB_SECRET, STRIPE_SECRET.removeprefix("whsec_"), TEST_SECRET_KEY):
        assert secret not in dump and secret not in logged


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["USERPATH_SECRET_KEY", "USERPATH_KEY_PEPPER"])
def test_against_postgresql_the_worker_refuses_to_start_without_its_secrets(
    database: tuple[str, Engine], variable: str
) -> None:
    """Seen: without a pepper a worker ran for months on plain digests, and then no pepper could be
    added without invalidating every key."""
    environment = worker_environment(database[0], REDIS_URL)
    del environment[variable]
    finished = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "--loglevel=INFO"],
        env=environment,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert f"userpath: {variable} is not set;" in finished.stdout + finished.stderr
