"""The CLI tests' database: a fresh SQLite file per test, or the shared PostgreSQL test database
emptied after each test, named by USERPATH_DATABASE_URL as an operator would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.common.databases import TEST_DATABASE_PREFIX, fresh_postgres_database, truncate_all
from userpath_worker import schema
from userpath_worker.db import make_engine


@pytest.fixture(scope="package")
def cli_postgres_url() -> str:
    url = fresh_postgres_database(f"{TEST_DATABASE_PREFIX}_cli")
    schema.upgrade(make_engine(url))
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cli.db'}"
    else:
        url = request.getfixturevalue("cli_postgres_url")
    monkeypatch.setenv("USERPATH_DATABASE_URL", url)
    yield url
    if request.param == "postgresql":
        engine = make_engine(url)
        truncate_all(engine)
        engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the CLI's database, for a test to look at what the commands wrote."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()
