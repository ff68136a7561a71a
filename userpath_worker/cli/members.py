"""``userpath members``: who belongs to an organization, with which role."""

from __future__ import annotations

from typing import Any

import click

from userpath_worker.accounts import services as accounts
from userpath_worker.cli.common import json_option, print_json, print_link, print_table, transaction, utc, when
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Member, Organization, Role


@click.group()
def members() -> None:
    """Members of organizations."""


ROLES = click.Choice([role.value for role in Role])


def member_as_dict(member: Member, org: str) -> dict[str, Any]:
    return {"org": org, "email": member.email, "role": member.role.value, "created_at": member.created_at}


def print_change(member: Member, organization: Organization, as_json: bool, line: str, **extra: Any) -> None:
    """What a change did to one member: ``line`` for a person, or the member as JSON."""
    if as_json:
        print_json({**member_as_dict(member, organization.name), **extra})
        return
    click.echo(line)


@members.command("add")
@click.option("--org", help="The organization's name.")
@click.argument("arguments", nargs=-1, metavar="EMAIL")
@click.option("--role", type=ROLES, required=True)
@json_option
def members_add(org: str | None, arguments: tuple[str, ...], role: str, as_json: bool) -> None:
    """Add EMAIL to organization --org with a role."""
    if org is None and len(arguments) == 2:
        # The form before --org (``members add ORG EMAIL``), kept working for one release.
        org, email = arguments
        click.echo("Deprecated: `members add ORG EMAIL` will go; write `members add --org ORG EMAIL`.", err=True)
    elif org is not None and len(arguments) == 1:
        (email,) = arguments
    else:
        raise click.UsageError("give the organization with --org and one EMAIL: members add --org ORG EMAIL")
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        member = organizations.add_member(session, organization, email, Role(role))
    print_change(
        member, organization, as_json, f"Added {member.email} to '{organization.name}' as {member.role.value}."
    )


@members.command("list")
@click.option("--org", required=True, help="The organization's name.")
@json_option
def members_list(org: str, as_json: bool) -> None:
    """The members of ORG with their roles, owners first."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        found = organizations.members_of(session, organization)
    if as_json:
        print_json([member_as_dict(member, organization.name) for member in found])
        return
    print_table(
        ["EMAIL", "ROLE", utc("ADDED")],
        [[member.email, member.role.value, when(member.created_at)] for member in found],
    )


@members.command("set-role")
@click.option("--org", required=True, help="The organization's name.")
@click.argument("email")
@click.option("--role", type=ROLES, required=True)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@json_option
def members_set_role(org: str, email: str, role: str, actor: str, as_json: bool) -> None:
    """Give member EMAIL of ORG another role (owners only); the last owner stays an owner."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        member = organizations.change_role(session, organization, email, Role(role), actor)
    print_change(member, organization, as_json, f"{member.email} is now {member.role.value} of '{organization.name}'.")


@members.command("remove")
@click.option("--org", required=True, help="The organization's name.")
@click.argument("email")
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@json_option
def members_remove(org: str, email: str, actor: str, as_json: bool) -> None:
    """Take member EMAIL out of ORG (owners only); never its last owner."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        member = organizations.remove_member(session, organization, email, actor)
    line = f"Removed {member.email} ({member.role.value}) from '{organization.name}'."
    print_change(member, organization, as_json, line, removed=True)


@members.command("invite")
@click.option("--org", required=True, help="The organization's name.")
@click.argument("email")
@click.option("--role", type=ROLES, default=Role.MEMBER.value, show_default=True)
@json_option
def members_invite(org: str, email: str, role: str, as_json: bool) -> None:
    """Invite EMAIL to ORG: print a one-time link (72 hours, single use). They become a member when
    they open it, setting a password if they have none (or typing theirs if they have one).

    It replaces an earlier pending invitation of ORG for EMAIL; an existing member keeps their role
    and gets a new link."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        token = accounts.invite(session, organization, email, Role(role), accounts.OPERATOR)
    print_link(token, as_json, f"Invited {organizations.normalize_email(email)} to '{organization.name}'.")


@members.command("invitations")
@click.option("--org", required=True, help="The organization's name.")
@json_option
def members_invitations(org: str, as_json: bool) -> None:
    """The invitations of ORG nobody accepted yet, newest first: they grant nothing until then."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        found = accounts.pending_invitations(session, organization)
    rows = [
        {
            "org": organization.name,
            "email": invitation.email,
            "role": (invitation.role or Role.MEMBER).value,
            "invited_by": invitation.invited_by,
            "expires_at": invitation.expires_at,
        }
        for invitation in found
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        ["EMAIL", "ROLE", "INVITED BY", utc("EXPIRES")],
        [[row["email"], row["role"], row["invited_by"], when(row["expires_at"])] for row in rows],
    )


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
