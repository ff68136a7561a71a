"""The ``userpath`` command.

User mistakes print one line and exit 1; usage mistakes exit 2 (click's convention).
"""

from __future__ import annotations

import click

from userpath_worker.cli import db, events, keys, members, operations, orgs, rotation, web, webhooks, worker
from userpath_worker.cli.common import UserPathGroup, settings


@click.group(cls=UserPathGroup)
def cli() -> None:
    """UserPath's event ingestion worker and its operations tools."""
    settings()  # a bad USERPATH_* value stops every command here, with one line


# Every top-level command and group, each from its own module under userpath_worker/cli/.
for command in (
    db.db,
    orgs.orgs,
    members.members,
    keys.keys,
    events.events,
    events.deadletter,
    worker.worker,
    worker.demo,
    rotation.rotation,
    rotation.beat,
    operations.status,
    operations.health,
    web.web,
    webhooks.webhooks,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="userpath")
