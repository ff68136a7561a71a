"""Security properties not proven elsewhere: organization isolation through a real worker, CLI
refusals for members and strangers, and no key lookup at all for a malformed or mistyped key.

Already proven elsewhere (see the README's Guarantees): the key leak scan of DEBUG logs, tables,
dead letters and task events, and a deleted key refused by every worker process within 5 s
(tests/test_worker_e2e.py); owner-only rules in the service API (tests/test_keys.py).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import TEST_DATABASE_PREFIX, truncate_all
from tests.test_worker_e2e import empty_queues, envelope, new_key
from tests.workers import (
    FAULTS_REDIS_URL,
    migrated_database,
    producer,
    running_worker,
    settle_at,
    worker_environment,
)
from userpath_client.contract import EVENTS_QUEUE, WEBHOOKS_QUEUE
from userpath_worker.cli import cli
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.deadletter.services import Delivery
from userpath_worker.events.models import Event, Source
from userpath_worker.events.services import Ingestor
from userpath_worker.keys import tokens
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.tokens import Environment


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, Engine]]:
    url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_security")
    yield url, engine
    engine.dispose()


@pytest.mark.slow
def test_a_key_stores_only_in_its_own_organization_and_environment(
    database: tuple[str, Engine], tmp_path: Path
) -> None:
    """Whatever a payload claims, events land in the key's organization, and a test key's events
    in the test environment: through a real worker, not only in the core."""
    database_url, engine = database
    truncate_all(engine)
    redis.Redis.from_url(FAULTS_REDIS_URL).flushdb()
    empty_queues(FAULTS_REDIS_URL)
    org_a, key_a_id, key_a = new_key(engine)
    org_b, _, _ = new_key(engine)
    org_t, key_t_id, test_key = new_key(engine, Environment.TEST)
    claims = {"org_id": org_b, "organization": org_b, "environment": "live", "api_key_id": 1}
    app = producer(FAULTS_REDIS_URL)
    for message in (
        envelope(key_a, 5, "a", properties=claims, context=claims),
        {**envelope(key_a, 1, "claim"), "org_id": org_b},  # not a field: refused
        envelope(test_key, 3, "t", properties=claims),
    ):
        app.send_task("userpath.track", args=[message], queue=EVENTS_QUEUE)
    app.send_task(
        "userpath.webhook",
        args=[
            {
                "api_key": key_a,
                "provider": "stripe",
                "delivery_id": "evt_isolation",
                "received_at": dt.datetime.now(dt.UTC).isoformat(),
                "body": json.dumps({"type": "invoice.paid", "org_id": org_b}),
            }
        ],
        queue=WEBHOOKS_QUEUE,
    )

    with running_worker(worker_environment(database_url, FAULTS_REDIS_URL), tmp_path / "worker.log", "--concurrency=1"):
        settle_at(engine, (5 + 3 + 1, 1), timeout=60)

    with Session(engine) as session:
        stored = {(e.org_id, e.api_key_id, e.environment) for e in session.scalars(select(Event))}
        refused = session.scalars(select(DeadLetter)).one()
    assert stored == {(org_a, key_a_id, "live"), (org_t, key_t_id, "test")}
    assert (refused.reason, refused.org_id) == ("invalid_envelope", org_a)


class TestOnlyOwnersManageKeysThroughTheCli:
    """test_cli.py covers an admin; members and people outside the organization are refused too."""

    @pytest.fixture
    def acme_key_id(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv("USERPATH_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
        for arguments in (
            ["db", "upgrade"],
            ["orgs", "create", "Acme", "--owner", "owner@acme.io"],
            ["members", "add", "Acme", "member@acme.io", "--role", "member"],
        ):
            assert run(*arguments).exit_code == 0
        created = run("keys", "create", "--org", "Acme", "--name", "Server", "--as", "owner@acme.io", "--json")
        return str(json.loads(created.stdout)["id"])

    @pytest.mark.parametrize("actor", ["member@acme.io", "stranger@elsewhere.io"])
    def test_members_and_strangers_cannot_create_roll_or_delete(self, acme_key_id: str, actor: str) -> None:
        for arguments in (
            ["keys", "create", "--org", "Acme", "--name", "Mine", "--as", actor],
            ["keys", "roll", acme_key_id, "--as", actor],
            ["keys", "delete", acme_key_id, "--as", actor],
        ):
            result = run(*arguments)
            assert result.exit_code == 1, result.output
            assert "only owners can create, roll or delete keys" in result.output
            assert not tokens.KEY_PATTERN.search(result.output)
        listed = json.loads(run("keys", "list", "--org", "Acme", "--json").stdout)
        assert [(key["name"], key["status"]) for key in listed] == [("Server", "active")]


def run(*arguments: str) -> Result:
    return CliRunner().invoke(cli, list(arguments), prog_name="userpath")


def test_malformed_and_mistyped_keys_cost_the_worker_no_key_lookup(session: Session, engine: Engine) -> None:
    """Through the worker's own path (Ingestor + KeyAuthenticator), not only KeyService: the dead
    letter is written, but no statement reads api_keys."""
    factory = sessionmaker(bind=session.connection(), join_transaction_mode="create_savepoint", expire_on_commit=False)
    ingestor = Ingestor(factory, KeyAuthenticator(pepper=None, ttl=2.0))
    good = tokens.generate(Environment.LIVE)
    mistyped = good[:-1] + ("0" if good[-1] != "0" else "1")
    statements: list[str] = []

    def record(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    def send(key: object) -> None:
        batch = [{"event": "x", "user_id": "u", "timestamp": "2026-05-01T12:00:00+00:00"}]
        delivery = Delivery(task="userpath.track", queue=EVENTS_QUEUE, received_at=dt.datetime.now(dt.UTC))
        ingestor.track([{"api_key": key, "batch": batch}], {}, Source.SERVER, delivery)

    event.listen(engine, "before_cursor_execute", record)
    try:
        for key in ("not a key", 12345, None, "up_live_short", mistyped):
            send(key)
        assert statements, "the dead letters were written"
        assert not [statement for statement in statements if "api_keys" in statement]
        send(good)  # well-formed and unknown: this one is looked up
        assert [statement for statement in statements if "api_keys" in statement]
    finally:
        event.remove(engine, "before_cursor_execute", record)
    reasons = sorted(session.scalars(select(DeadLetter.reason)))
    assert reasons == sorted(["malformed_key"] * 4 + ["bad_checksum", "unknown_key"])
