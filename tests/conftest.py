"""Shared fixtures: real PostgreSQL on 127.0.0.1 and SQLite, each test in a rolled-back transaction.

The database-backed fixtures are parametrized over both backends, because the same migrations
and the same services must behave identically on the embedded default and in production.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import Session

from config.settings import get_settings
from userpath_worker import schema
from userpath_worker.db import make_engine
from userpath_worker.keys.services import KeyService

POSTGRES_SERVER = os.environ.get("USERPATH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
# Separate names let several test runs share one server without touching each other's data.
TEST_DATABASE_PREFIX = os.environ.get("USERPATH_TEST_DATABASE_PREFIX", "userpath_test")


def fresh_postgres_database(name: str) -> str:
    """Drop and re-create database ``name``; fails loudly if PostgreSQL is not reachable."""
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{POSTGRES_SERVER}/{name}"


def flushed_redis(url: str) -> Iterator[redis.Redis]:
    """A client of the Redis database at ``url``, empty before the test and after it (for fixtures)."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


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


def table_dump(connection_or_session: Session, engine: Engine) -> str:
    """Every row of every table as text, for tests that prove a secret was never stored."""
    lines = []
    for table in inspect(engine).get_table_names():
        for row in connection_or_session.execute(text(f'SELECT * FROM "{table}"')):
            lines.append(f"{table}: {tuple(row)}")
    return "\n".join(lines)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every log record at DEBUG, SQL statements and their parameters included."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    return caplog


def truncate_all(engine: Engine) -> None:
    """Empty every table of a PostgreSQL test database shared by several tests."""
    from userpath_worker.models import metadata

    tables = ", ".join(table.name for table in metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds", type=float, default=120.0, help="how long tests/test_soak.py offers load (default 120)"
    )
