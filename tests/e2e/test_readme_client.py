"""The README's Python client snippet, run as written against a real worker: its three events
(an event, a job's event and a forwarded webhook) are stored, and a mistyped key never leaves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.common.databases import TEST_DATABASE_PREFIX
from tests.common.factories import new_key
from tests.common.workers import REPOSITORY, migrated_database, running_worker, settle_at, worker_environment
from userpath_client.contract import INGESTION_QUEUES, KEY_VARIABLE
from userpath_worker.events.models import Event

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/1"  # this module's own: flushed first
SNIPPET = re.compile(r"<!-- example: python-client -->\n```python\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module")
def snippet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (source,) = SNIPPET.findall((REPOSITORY / "README.md").read_text())
    script = tmp_path_factory.mktemp("readme-client") / "send.py"
    script.write_text(source + "\n")
    return script


def run_snippet(script: Path, key: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, KEY_VARIABLE: key, "USERPATH_BROKER_URL": REDIS_URL}
    return subprocess.run([sys.executable, str(script)], env=environment, capture_output=True, text=True, timeout=60)


def test_the_readmes_client_snippet_runs_as_written(snippet: Path, tmp_path: Path) -> None:
    url, engine = migrated_database(f"{TEST_DATABASE_PREFIX}_readme_client")
    redis.Redis.from_url(REDIS_URL).flushdb()
    org_id, key_id, key = new_key(engine)
    with running_worker(worker_environment(url, REDIS_URL), tmp_path / "worker.log"):
        sent = run_snippet(snippet, key)
        assert sent.returncode == 0, sent.stderr
        settle_at(engine, (3, 0), timeout=30)
    with Session(engine) as session:
        stored = session.scalars(select(Event).order_by(Event.name)).all()
    assert [(e.name, e.source.value, e.org_id, e.api_key_id) for e in stored] == [
        ("Invoices Sent", "job", org_id, key_id),
        ("Signed Up", "server", org_id, key_id),
        ("stripe.invoice.paid", "webhook", org_id, key_id),
    ]
    engine.dispose()


def test_the_readmes_client_snippet_refuses_a_mistyped_key(snippet: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    mistyped = "up_test_zdHBfhkO1NzfOR5Y1XqLck3kleDbHAiC3NtHTm"  # the contract's example key, last letter changed
    refused = run_snippet(snippet, mistyped)
    assert refused.returncode != 0 and "InvalidKey" in refused.stderr
    assert sum(client.llen(queue) for queue in INGESTION_QUEUES) == 0
