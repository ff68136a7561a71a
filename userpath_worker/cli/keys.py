"""``userpath keys``: the API key lifecycle, and the keys flagged for rotation."""

from __future__ import annotations

import click

from userpath_worker.cli.common import (
    json_option,
    key_as_dict,
    key_service,
    print_json,
    print_new_key,
    print_table,
    transaction,
    when,
)
from userpath_worker.db import utcnow
from userpath_worker.durations import format_duration, parse_duration
from userpath_worker.keys.services import DEFAULT_ROLL_GRACE
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations
from userpath_worker.rotation.services import stale_keys


@click.group()
def keys() -> None:
    """API keys: create, list, roll, delete."""


@keys.command("create")
@click.option("--org", required=True, help="Organization name.")
@click.option("--name", required=True, help='What the key is for, e.g. "App X Production Server".')
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option("--env", "environment", type=click.Choice(["live", "test"]), default="live", show_default=True)
@click.option("--expires-in", metavar="DURATION", help="Lifetime such as 90d; none by default.")
@json_option
def keys_create(org: str, name: str, actor: str, environment: str, expires_in: str | None, as_json: bool) -> None:
    """Create a key and print it once."""
    lifetime = parse_duration(expires_in, what="--expires-in") if expires_in else None
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        key, plaintext = key_service(session).create(organization, name, actor, Environment(environment), lifetime)
    print_new_key(key, plaintext, as_json)


@keys.command("list")
@click.option("--org", required=True, help="Organization name.")
@json_option
def keys_list(org: str, as_json: bool) -> None:
    """List an organization's keys (never their secrets)."""
    now = utcnow()
    with transaction() as session:
        found = key_service(session).list(organizations.get_organization(session, org))
    if as_json:
        print_json([key_as_dict(key, now) for key in found])
        return
    print_table(
        ["ID", "NAME", "KEY", "ENV", "STATUS", "CREATED", "LAST USED", "EXPIRES", "FLAG"],
        [
            [
                str(key.id),
                key.name,
                key.display,
                key.environment.value,
                key.status(now).value,
                when(key.created_at),
                when(key.last_used_at),
                when(key.expires_at),
                ",".join(key.flag_reasons or []) or "-",
            ]
            for key in found
        ],
    )


@keys.command("roll")
@click.argument("key_id", type=int)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option(
    "--grace",
    default=format_duration(DEFAULT_ROLL_GRACE),
    show_default=True,
    help="How long the old key keeps working (0 to 7d).",
)
@json_option
def keys_roll(key_id: int, actor: str, grace: str, as_json: bool) -> None:
    """Replace a key with a new one; the old one stops after the grace period."""
    with transaction() as session:
        new, plaintext = key_service(session).roll(key_id, actor, parse_duration(grace, what="--grace"))
        old = key_service(session).get(key_id)
    print_new_key(new, plaintext, as_json, replaces=old.id, old_key_expires_at=old.expires_at.isoformat())
    if not as_json:
        click.echo(f"Key {old.id} keeps working until {old.expires_at:%Y-%m-%d %H:%M:%S} UTC.", err=True)


@keys.command("delete")
@click.argument("key_id", type=int)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
def keys_delete(key_id: int, actor: str) -> None:
    """Delete a key: it stops authenticating at once."""
    with transaction() as session:
        key = key_service(session).delete(key_id, actor)
    click.echo(f"Deleted key {key.id} ('{key.name}', {key.display}).")


@keys.command("stale")
@click.option("--org", help="Only this organization.")
@json_option
def keys_stale(org: str | None, as_json: bool) -> None:
    """Keys flagged for rotation, and why."""
    now = utcnow()
    with transaction() as session:
        organization = organizations.get_organization(session, org) if org else None
        found = stale_keys(session, organization)
    if as_json:
        print_json([{**key_as_dict(key, now), "org": org_name} for key, org_name in found])
        return
    print_table(
        ["ID", "ORG", "NAME", "KEY", "REASONS", "FLAGGED", "LAST USED", "EXPIRES"],
        [
            [
                str(key.id),
                org_name,
                key.name,
                key.display,
                ",".join(key.flag_reasons or []),
                when(key.flagged_at),
                when(key.last_used_at),
                when(key.expires_at),
            ]
            for key, org_name in found
        ],
    )
