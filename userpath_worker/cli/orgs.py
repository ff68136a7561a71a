"""``userpath orgs``: organizations."""

from __future__ import annotations

import click

from userpath_worker.accounts import services as accounts
from userpath_worker.cli.common import (
    json_option,
    print_json,
    print_link,
    print_table,
    settings,
    transaction,
    utc,
    when,
)
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Role


@click.group()
def orgs() -> None:
    """Organizations."""


@orgs.command("create")
@click.argument("name")
@click.option("--owner", "owner_email", required=True, help="E-mail of the first owner.")
@json_option
def orgs_create(name: str, owner_email: str, as_json: bool) -> None:
    """Create organization NAME with its first owner, and print the owner's one-time link (72 hours)
    where they set a password, as the last line."""
    with transaction() as session:
        organization = organizations.create_organization(session, name, owner_email)
        owner = organizations.normalize_email(owner_email)
        token = accounts.invite(session, organization, owner, Role.OWNER, accounts.OPERATOR)
    created = {"id": organization.id, "name": organization.name, "owner": owner}
    if not as_json:
        click.echo(f"Created organization '{organization.name}' (id {organization.id}) owned by {owner_email}.")
    print_link(token, as_json, f"Invited {owner} to sign in as its owner.", **created)


@orgs.command("list")
@json_option
def orgs_list(as_json: bool) -> None:
    """Every organization, with its number of members."""
    with transaction() as session:
        found = organizations.list_organizations(session)
    if as_json:
        print_json(
            [
                {"id": org.id, "name": org.name, "created_at": org.created_at, "members": members}
                for org, members in found
            ]
        )
        return
    print_table(
        ["ID", "NAME", "MEMBERS", utc("CREATED")],
        [[str(org.id), org.name, str(members), when(org.created_at)] for org, members in found],
    )


@orgs.command("set-retention")
@click.option("--org", required=True, help="Organization name.")
@click.option(
    "--days", type=click.IntRange(1, organizations.MAX_RETENTION_DAYS), help="Keep its events this many days."
)
@click.option("--default", "use_default", is_flag=True, help="Back to USERPATH_EVENT_RETENTION_DAYS.")
@json_option
def orgs_set_retention(org: str, days: int | None, use_default: bool, as_json: bool) -> None:
    """How long the organization's events are kept, counted from when they were received; beat's
    retention pass (or `userpath events apply-retention`) deletes what is older."""
    if (days is None) != use_default:
        raise click.UsageError("give either --days N or --default")
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        organizations.set_event_retention(session, organization, days)
    default_days = settings().event_retention_days
    if as_json:
        print_json(
            {"id": organization.id, "name": organization.name, "days": days or default_days, "default": use_default}
        )
        return
    if use_default:
        click.echo(f"'{organization.name}' keeps its events {default_days} days (USERPATH_EVENT_RETENTION_DAYS).")
    else:
        click.echo(f"'{organization.name}' keeps its events {days} days.")


@orgs.command("set-limits")
@click.option("--org", required=True, help="Organization name.")
@click.option(
    "--events-per-second",
    type=click.IntRange(1, organizations.MAX_EVENTS_PER_SECOND),
    help="Events a second its bucket refills with.",
)
@click.option("--burst", type=click.IntRange(1, organizations.MAX_BURST), help="Events its bucket holds.")
@click.option("--default", "use_default", is_flag=True, help="Back to USERPATH_EDGE_EVENTS_PER_SECOND and _BURST.")
@json_option
def orgs_set_limits(
    org: str, events_per_second: int | None, burst: int | None, use_default: bool, as_json: bool
) -> None:
    """The organization's rate at the edge: a token bucket holding --burst events, refilled at
    --events-per-second; over it the edge answers 429 with Retry-After. Every edge process applies
    it within USERPATH_AUTH_CACHE_SECONDS."""
    own = None
    if events_per_second is not None and burst is not None and not use_default:
        own = organizations.RateLimit(events_per_second, burst)
    elif not (use_default and events_per_second is None and burst is None):
        raise click.UsageError("give either --events-per-second N --burst N, or --default")
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        organizations.set_rate_limit(session, organization, own)
    limit = own or organizations.default_rate_limit(settings())
    if as_json:
        print_json(
            {
                "id": organization.id,
                "name": organization.name,
                "events_per_second": limit.events_per_second if limit else None,
                "burst": limit.burst if limit else None,
                "default": use_default,
            }
        )
        return
    what = f"{limit.events_per_second} events a second, in bursts of up to {limit.burst}" if limit else "without limit"
    source = " (USERPATH_EDGE_EVENTS_PER_SECOND and USERPATH_EDGE_BURST)" if use_default else ""
    click.echo(f"'{organization.name}' may send {what}{source}.")
