"""``userpath members``: who belongs to an organization, with which role."""

from __future__ import annotations

import click

from userpath_worker.cli.common import transaction
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Role


@click.group()
def members() -> None:
    """Members of organizations."""


@members.command("add")
@click.argument("org")
@click.argument("email")
@click.option("--role", type=click.Choice([role.value for role in Role]), required=True)
def members_add(org: str, email: str, role: str) -> None:
    """Add EMAIL to organization ORG with a role."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        member = organizations.add_member(session, organization, email, Role(role))
    click.echo(f"Added {member.email} to '{org}' as {member.role.value}.")
