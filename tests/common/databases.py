"""The test servers' databases: fresh PostgreSQL databases and Redis databases, and dumps of
every row for tests that prove a secret was never stored."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import Session

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


def table_dump(connection_or_session: Session, engine: Engine) -> str:
    """Every row of every table as text, for tests that prove a secret was never stored."""
    lines = []
    for table in inspect(engine).get_table_names():
        for row in connection_or_session.execute(text(f'SELECT * FROM "{table}"')):
            lines.append(f"{table}: {tuple(row)}")
    return "\n".join(lines)


def truncate_all(engine: Engine) -> None:
    """Empty every table of a PostgreSQL test database shared by several tests."""
    from userpath_worker.models import metadata

    # event_ids, the dedupe table, is PostgreSQL's alone and no model's (events.storage).
    tables = ", ".join([table.name for table in metadata.sorted_tables] + ["event_ids"])
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def savepoints(session: Session) -> Callable[[], Any]:
    """A ``transaction`` for services that open their own (replay, purge): each one a savepoint
    of the test's rolled-back session."""

    @contextlib.contextmanager
    def savepoint() -> Iterator[Session]:
        with session.begin_nested():
            yield session

    return savepoint
