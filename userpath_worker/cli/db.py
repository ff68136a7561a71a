"""``userpath db``: the database schema."""

from __future__ import annotations

import click

from userpath_worker import runtime, schema
from userpath_worker.cli.common import json_option, print_json


@click.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@click.option(
    "--prepare-only",
    is_flag=True,
    help="Stop before the online migrations (moving events into partitions): replace the previous "
    "release's workers, then run `userpath db upgrade` again while they ingest.",
)
@json_option
def db_upgrade(prepare_only: bool, as_json: bool) -> None:
    """Apply every pending migration."""
    schema.announce_new_database(runtime.engine())
    schema.upgrade(runtime.engine(), prepare_only=prepare_only)
    revision = schema.current_revision(runtime.engine())
    if as_json:
        print_json({"revision": revision})
        return
    click.echo(f"Database schema is at revision {revision}.")
