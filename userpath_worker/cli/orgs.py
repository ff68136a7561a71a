"""``userpath orgs``: organizations."""

from __future__ import annotations

import click

from userpath_worker.cli.common import transaction
from userpath_worker.organizations import services as organizations


@click.group()
def orgs() -> None:
    """Organizations."""


@orgs.command("create")
@click.argument("name")
@click.option("--owner", "owner_email", required=True, help="E-mail of the first owner.")
def orgs_create(name: str, owner_email: str) -> None:
    """Create organization NAME with its first owner."""
    with transaction() as session:
        organization = organizations.create_organization(session, name, owner_email)
    click.echo(f"Created organization '{organization.name}' (id {organization.id}) owned by {owner_email}.")
