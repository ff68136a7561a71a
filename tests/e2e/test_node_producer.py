"""The Node producer of docs/contract.md, run as written with ``node`` against a real worker: the
event it pushes onto Redis is stored, and a mistyped key is refused before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.factories import new_key
from tests.common.node import contract_node_producer, run_node
from tests.common.workers import migrated_database, running_worker, settle_at, worker_environment
from userpath_client.contract import EVENTS_QUEUE
from userpath_worker.events.models import Event

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/3"


@pytest.fixture(scope="module")
def node_producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract_node_producer(tmp_path_factory.mktemp("node-producer"))


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, Engine]]:
    url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_node")
    yield url, engine
    engine.dispose()


def test_the_contracts_node_producer_sends_an_event_a_real_worker_stores(
    node_producer: Path, database: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = database
    redis.Redis.from_url(REDIS_URL).flushdb()
    org_id, key_id, key = new_key(engine)
    with running_worker(worker_environment(url, REDIS_URL), tmp_path / "worker.log"):
        sent = run_node(node_producer, key, REDIS_URL)
        assert sent.returncode == 0, sent.stderr
        settle_at(engine, (1, 0), timeout=30)
    with Session(engine) as session:
        (event,) = session.scalars(select(Event)).all()
    assert (event.org_id, event.api_key_id, event.source.value) == (org_id, key_id, "server")
    assert (event.name, event.user_id, event.properties) == ("Signed Up", "user_123", {"plan": "pro"})
    assert event.sent_at is not None and event.timestamp.utcoffset() is not None
    assert key not in (tmp_path / "worker.log").read_text()


def test_the_contracts_node_producer_refuses_a_mistyped_key_before_sending(node_producer: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    valid = "up_test_zdHBfhkO1NzfOR5Y1XqLck3kleDbHAiC3NtHTn"  # the contract's example key
    assert run_node(node_producer, valid.replace("zdHB", "zdHb"), REDIS_URL).returncode != 0
    refused = run_node(node_producer, valid[:-1] + "m", REDIS_URL)
    assert refused.returncode != 0 and "not a UserPath key" in refused.stderr
    assert client.llen(EVENTS_QUEUE) == 0
