"""``userpath orgs``: organizations."""

from __future__ import annotations

import click

from userpath_worker.accounts import services as accounts
from userpath_worker.cli.common import print_link, transaction
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Role


@click.group()
def orgs() -> None:
    """Organizations."""


@orgs.command("create")
@click.argument("name")
@click.option("--owner", "owner_email", required=True, help="E-mail of the first owner.")
def orgs_create(name: str, owner_email: str) -> None:
    """Create organization NAME with its first owner, and print the owner's one-time link (72 hours)
    where they set a password, as the last line."""
    with transaction() as session:
        organization = organizations.create_organization(session, name, owner_email)
        owner = organizations.normalize_email(owner_email)
        token = accounts.invite(session, organization, owner, Role.OWNER, accounts.OPERATOR)
    click.echo(f"Created organization '{organization.name}' (id {organization.id}) owned by {owner_email}.")
    print_link(token, False, f"Invited {owner} to sign in as its owner.")
