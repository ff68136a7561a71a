"""Shared fixtures: real PostgreSQL on 127.0.0.1 and SQLite, each test in a rolled-back transaction.

The database-backed fixtures are parametrized over both backends, because the same migrations
and the same services must behave identically on the embedded default and in production.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from config.settings import get_settings
from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database
from tests.common.signing import TEST_KEY_PEPPER
from userpath_worker import schema
from userpath_worker.db import make_engine
from userpath_worker.keys.services import KeyService

# Every process of the tests (the CLI and pages in this one, workers and servers it starts) makes
# and checks key digests with the same pepper, as a PostgreSQL installation must.
os.environ["USERPATH_KEY_PEPPER"] = TEST_KEY_PEPPER


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return fresh_postgres_database(TEST_DATABASE_PREFIX)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'userpath.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    schema.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session whose every write, commits included, is rolled back after the test."""
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()
    outer.rollback()
    connection.close()


@pytest.fixture
def keys(session: Session) -> KeyService:
    return KeyService(session)


@pytest.fixture(autouse=True)
def _settings_from_this_test() -> Iterator[None]:
    """Settings are read once per process; tests that change the environment re-read them."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every log record at DEBUG, SQL statements and their parameters included."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    return caplog


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds", type=float, default=120.0, help="how long tests/e2e/test_soak.py offers load (default 120)"
    )
