"""Saying what is being used: the database and broker in ``userpath status``."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.engine import make_url

from tests.common.cli import ok
from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.workers import rabbitmq_vhost


def test_status_starts_with_the_database_and_broker_in_use_without_their_passwords(
    cli_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL's trust authentication accepts any password: this one only has to stay unseen.
    database_url = make_url(cli_postgres_url).set(password="database-password")
    broker_url = rabbitmq_vhost(f"{TEST_DATABASE_PREFIX}_status")
    monkeypatch.setenv("USERPATH_DATABASE_URL", database_url.render_as_string(hide_password=False))
    monkeypatch.setenv("USERPATH_BROKER_URL", broker_url)
    masked_database = database_url.render_as_string(hide_password=True)
    masked_broker = f"amqp://guest:**@127.0.0.1:5672/{TEST_DATABASE_PREFIX}_status"

    shown = ok("status").stdout
    assert shown.splitlines()[:2] == [
        f"Database:             {masked_database}",
        f"Broker:               {masked_broker}",
    ]
    found = json.loads(ok("status", "--json").stdout)
    assert (found["database"], found["broker"]) == (masked_database, masked_broker)
    assert "database-password" not in shown + json.dumps(found) and "guest:guest" not in shown + json.dumps(found)
