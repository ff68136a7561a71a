"""Database plumbing shared by every domain: the declarative base, UTC timestamps, engines."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Engine, Enum, Integer, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so Alembic migrations can refer to them on SQLite and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no time zone type and hands back naive datetimes; this puts UTC back on them so
    comparisons with ``utcnow()`` work the same on both databases.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC timestamp is stored")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# JSONB on PostgreSQL (indexable, compact), plain JSON text on SQLite.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def string_enum(enum_class: type[enum.StrEnum], name: str) -> Enum:
    """A portable enum column: VARCHAR plus a CHECK constraint, the same on SQLite and PostgreSQL."""
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSONDocument}


# An execution option: on SQLite, transactions begin with BEGIN IMMEDIATE, taking the write lock at
# once (waiting for it up to the busy timeout). A deferred transaction that has read cannot start
# writing once another connection committed after its first read: SQLite answers "database is
# locked" at once, whatever the timeout. Ignored on PostgreSQL.
_SQLITE_BEGIN_IMMEDIATE = "userpath_sqlite_begin_immediate"


def writer(engine: Engine) -> Engine:
    """``engine``, for work that reads and then writes while other connections write too (a form
    sent to the web pages): on SQLite its transactions take the write lock when they begin."""
    return engine.execution_options(**{_SQLITE_BEGIN_IMMEDIATE: True})


def make_engine(url: str, **options: Any) -> Engine:
    if url.startswith("sqlite"):
        # Several worker processes may share one SQLite file: wait for locks instead of failing.
        engine = create_engine(url, connect_args={"timeout": 30}, **options)
        event.listen(engine, "connect", _configure_sqlite)
        event.listen(engine, "begin", _begin_sqlite)
        return engine
    # No pool_pre_ping: it costs a round trip per transaction, a tenth of a worker's time on
    # small messages. A connection that died with the server fails its transaction instead;
    # SQLAlchemy then discards the pool, and the task retries the message (tasks/ingest.py).
    return create_engine(url, **options)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin, so that
    # SAVEPOINTs (nested transactions) work: SQLAlchemy's documented pysqlite recipe.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_sqlite(connection: Any) -> None:
    immediate = connection.get_execution_options().get(_SQLITE_BEGIN_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# What a service that commits batch by batch is given: a call that opens one transaction and
# yields its session, committing on a clean exit (``sessionmaker.begin``, for instance).
Transaction = Callable[[], AbstractContextManager[Session]]


def is_transient(error: BaseException) -> bool:
    """A database failure that says nothing about the input: retry it, never dead-letter it.

    Unreachable server, dropped connection, deadlock, serialization failure and a locked
    SQLite file all surface as OperationalError or InterfaceError (or an invalidated connection).
    """
    return isinstance(error, OperationalError | InterfaceError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    )
