"""``userpath db``: the database schema."""

from __future__ import annotations

import click

from userpath_worker import runtime, schema


@click.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    schema.announce_new_database(runtime.engine())
    schema.upgrade(runtime.engine())
    click.echo(f"Database schema is at revision {schema.current_revision(runtime.engine())}.")
