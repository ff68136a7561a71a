"""The ``userpath`` command.

User mistakes print one line and exit 1; usage mistakes exit 2 (click's convention).
"""

from __future__ import annotations

import click

from userpath_worker.cli import events, keys, operations, worker
from userpath_worker.cli.common import UserPathGroup, settings
from userpath_worker.rotation import cli as rotation


@click.group(cls=UserPathGroup)
def cli() -> None:
    """UserPath's event ingestion worker and its operations tools."""
    settings()  # a bad USERPATH_* value stops every command here, with one line


for command in (
    keys.db,
    keys.orgs,
    keys.members,
    keys.keys,
    events.events,
    events.deadletter,
    worker.worker,
    worker.demo,
    rotation.rotation,
    rotation.beat,
    operations.status,
    operations.health,
):
    cli.add_command(command)
keys.keys.add_command(rotation.stale)


def main() -> None:
    cli(prog_name="userpath")
