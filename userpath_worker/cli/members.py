"""``userpath members``: who belongs to an organization, with which role."""

from __future__ import annotations

import click

from userpath_worker.accounts import services as accounts
from userpath_worker.cli.common import json_option, print_link, transaction
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


@members.command("invite")
@click.option("--org", required=True, help="The organization's name.")
@click.argument("email")
@click.option("--role", type=click.Choice([role.value for role in Role]), default=Role.MEMBER.value, show_default=True)
@json_option
def members_invite(org: str, email: str, role: str, as_json: bool) -> None:
    """Invite EMAIL to ORG: print a one-time link (72 hours) where they set a password.

    An existing member keeps their role and gets a new link."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        token = accounts.invite(session, organization, email, Role(role), accounts.OPERATOR)
    print_link(token, as_json, f"Invited {organizations.normalize_email(email)} to '{organization.name}'.")


@members.command("reset-password")
@click.option("--org", required=True, help="The organization's name.")
@click.argument("email")
@json_option
def members_reset_password(org: str, email: str, as_json: bool) -> None:
    """Print a one-time link (72 hours) where member EMAIL of ORG sets a new password; their older
    links stop working."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        token = accounts.reset_password(session, organization, email, accounts.OPERATOR)
    print_link(token, as_json, f"Password reset for {organizations.normalize_email(email)} in '{organization.name}'.")
