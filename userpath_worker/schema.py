"""Schema management: Alembic migrations are the only way tables are made or changed."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from userpath_worker.errors import UserError

MIGRATIONS = Path(__file__).with_name("migrations")
# Migrations that run while this release's workers ingest: a database waiting only for these is
# current enough to work against. 0015 moves events in batches of its own transactions; 0017 only
# adds a table and nullable key columns that a worker never reads; 0018 only a table the edge reads
# (which takes the default limits until it is there); 0019 adds the keys' counters, which the
# previous release never reads and this one skips until they are there (events.rollups).
ONLINE_REVISIONS = ("0015", "0017", "0018", "0019")


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine, *, prepare_only: bool = False) -> None:
    """Apply every pending migration, each in a transaction of its own (an online one commits its
    batches itself, after the migrations before it committed). ``prepare_only``: stop before the
    first online migration, so that this release's workers can replace the previous release's
    before it runs."""
    config = alembic_config(engine)
    target = "head"
    if prepare_only:
        scripts = ScriptDirectory.from_config(config)
        target = scripts.get_revision(ONLINE_REVISIONS[0]).down_revision  # type: ignore[union-attr,assignment]
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        current = MigrationContext.configure(connection).get_current_revision()
        connection.rollback()  # no transaction open: Alembic then commits migration by migration
        if not (prepare_only and current and _is_at_or_after(config, current, target)):
            command.upgrade(config, target)
        connection.commit()


def _is_at_or_after(config: Config, current: str, target: str) -> bool:
    scripts = ScriptDirectory.from_config(config)
    return any(script.revision == target for script in scripts.iterate_revisions(current, "base"))


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def require_current(engine: Engine) -> None:
    """Refuse to run against a database whose schema is behind this code."""
    current, head = current_revision(engine), head_revision(engine)
    if current != head and not _only_online_pending(engine, current):
        raise UserError(
            f"the database schema is at revision {current or 'none'} but this release needs "
            f"{head}; run `userpath db upgrade` first"
        )


def _only_online_pending(engine: Engine, current: str | None) -> bool:
    scripts = ScriptDirectory.from_config(alembic_config(engine))
    pending = [script.revision for script in scripts.iterate_revisions("head", current)] if current else []
    return bool(pending) and all(revision in ONLINE_REVISIONS for revision in pending)


def announce_new_database(engine: Engine) -> None:
    """Say so on standard error when an embedded SQLite file is about to be created: an unset or
    mistyped USERPATH_DATABASE_URL, or another working directory, would otherwise go unnoticed
    behind a fresh empty database."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if path and path != ":memory:" and not Path(path).exists():
        print(
            f"userpath: creating a new embedded database {Path(path).resolve()} "
            "(USERPATH_DATABASE_URL names the database to use)",
            file=sys.stderr,
        )


def prepare(engine: Engine, *, quiet: bool = False) -> None:
    """Make the schema usable: migrate an embedded SQLite database, check any other one.

    The embedded default must run with no setup step; a shared PostgreSQL is migrated
    deliberately by an operator (or the compose file's one-shot migrate service). ``quiet`` is for
    the demo, whose files the quick start names: it skips the new-database line.
    """
    if engine.dialect.name == "sqlite":
        if not quiet:
            announce_new_database(engine)
        upgrade(engine)
    else:
        require_current(engine)
