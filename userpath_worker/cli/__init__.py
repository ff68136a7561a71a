"""The ``userpath`` command.

User mistakes print one line and exit 1; usage mistakes exit 2 (click's convention).
"""

from __future__ import annotations

import click

from userpath_worker.cli import (
    audit,
    broker,
    db,
    edge,
    events,
    keys,
    members,
    operations,
    orgs,
    rotation,
    web,
    webhooks,
    worker,
)
from userpath_worker.cli.common import UserPathGroup, settings


# -h as well as --help, on every command: click hands context settings down to each subcommand.
@click.group(cls=UserPathGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="userpath-worker", prog_name="userpath")
def cli() -> None:
    """UserPath's event ingestion worker and its operations tools."""
    settings()  # a bad USERPATH_* value stops every command here, with one line


# Every top-level command and group, each from its own module under userpath_worker/cli/.
for command in (
    db.db,
    orgs.orgs,
    members.members,
    keys.keys,
    audit.audit_group,
    events.events,
    events.deadletter,
    worker.worker,
    worker.demo,
    rotation.rotation,
    rotation.beat,
    operations.status,
    operations.health,
    web.web,
    edge.edge,
    webhooks.webhooks,
    broker.broker,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="userpath")
