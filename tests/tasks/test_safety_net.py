"""The last line of defence: a task that fails in a way nobody planned for (a bug of ours) has
its message dead-lettered as internal_error, so it can be replayed after the fix, never dropped.

Runs Celery's in-process test worker (what pytest-celery's in-process fixtures use) on the real
app, with the in-memory transport, against a SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.workers import wait_for
from userpath_client.contract import EVENTS_QUEUE
from userpath_worker import runtime, schema
from userpath_worker.db import make_engine
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.keys import tokens
from userpath_worker.keys.tokens import Environment


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'userpath.db'}"
    monkeypatch.setenv("USERPATH_DATABASE_URL", url)
    engine = make_engine(url)
    schema.upgrade(engine)
    yield engine
    engine.dispose()
    runtime.forget_connections_after_fork()


def test_an_unexpected_failure_is_dead_lettered_with_the_key_redacted(database: Engine) -> None:
    from tasks.app import app
    from tasks.base import UserPathTask

    @app.task(name="tests.explodes", base=UserPathTask, bind=True)
    def explodes(self: UserPathTask, envelope: dict) -> None:
        raise RuntimeError("a bug of ours")

    previous_broker = app.conf.broker_url
    app.conf.broker_url = "memory://"
    key = tokens.generate(Environment.LIVE)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            explodes.apply_async(args=[{"api_key": key, "batch": []}], queue=EVENTS_QUEUE)

            def dead_letters() -> list[DeadLetter]:
                with Session(database) as session:
                    return list(session.scalars(select(DeadLetter)))

            [letter] = wait_for(dead_letters, 30, "the dead letter")
    finally:
        app.conf.broker_url = previous_broker
        app.tasks.unregister("tests.explodes")

    assert letter.reason == "internal_error"
    assert letter.detail == "the task failed unexpectedly: RuntimeError"
    assert letter.payload["body"][0][0]["api_key"] == tokens.display_form(key)
    assert key not in str(letter.payload)
