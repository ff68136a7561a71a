"""``userpath keys``: the API key lifecycle, and the keys flagged for rotation."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click

from userpath_worker.accounts.services import OPERATOR
from userpath_worker.cli.common import (
    Duration,
    json_option,
    key_as_dict,
    key_service,
    print_json,
    print_new_key,
    print_table,
    settings,
    transaction,
    utc,
    when,
)
from userpath_worker.db import utcnow
from userpath_worker.errors import UserError
from userpath_worker.keys import scopes
from userpath_worker.keys.auth import LAST_USED_RESOLUTION
from userpath_worker.keys.exposure import BY_HAND, ExposureService
from userpath_worker.keys.services import check_grace, check_lifetime, configured_pepper
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization
from userpath_worker.rotation.services import stale_keys


class Scope(click.ParamType):
    """One ``--scope``; anything else is a usage mistake (exit 2), as a bad choice is."""

    name = "scope"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return scopes.parse_scope(value)
        except UserError as error:
            self.fail(str(error), param, ctx)


@click.group()
def keys() -> None:
    """API keys: create, list, show, roll, delete, report a leak."""


@keys.command("create")
@click.option("--org", required=True, help="Organization name.")
@click.option("--name", required=True, help='What the key is for, e.g. "App X Production Server".')
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option("--env", "environment", type=click.Choice(["live", "test"]), default="live", show_default=True)
@click.option("--expires-in", type=Duration(check_lifetime), help="Lifetime such as 90d; none by default.")
@click.option(
    "--scope",
    "scope",
    type=Scope(),
    multiple=True,
    help=f"What the key may send: {scopes.SCOPES_HINT}. Repeat for several; none: everything.",
)
@json_option
def keys_create(
    org: str,
    name: str,
    actor: str,
    environment: str,
    expires_in: dt.timedelta | None,
    scope: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a key and print it once."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        key, plaintext = key_service(session).create(
            organization, name, actor, Environment(environment), expires_in, frozenset(scope) or None
        )
    print_new_key(key, plaintext, as_json)


@keys.command(
    "list",
    help="List an organization's keys (never their secrets): its current ones, as the pages list them; "
    "--all adds the deleted ones, marked.\n\nLAST USED has a resolution of "
    f"{LAST_USED_RESOLUTION:g} seconds: a worker process writes it at most that often per key, so it can be "
    "that far behind the key's last use.",
)
@click.option("--org", required=True, help="Organization name.")
@click.option("--all", "show_all", is_flag=True, help="Also the deleted keys, with when they were deleted.")
@json_option
def keys_list(org: str, show_all: bool, as_json: bool) -> None:
    now = utcnow()
    with transaction() as session:
        found = key_service(session).list(organizations.get_organization(session, org), include_deleted=show_all)
    if as_json:
        print_json([key_as_dict(key, now) for key in found])
        return
    headers = ["ID", "NAME", "KEY", "ENV", "SCOPES", "STATUS", utc("CREATED"), utc("LAST USED"), utc("EXPIRES"), "FLAG"]
    print_table(
        [*headers, utc("DELETED")] if show_all else headers,
        [
            [
                str(key.id),
                key.name,
                key.display,
                key.environment.value,
                scopes.described(key.scopes),
                key.status(now).value,
                when(key.created_at),
                when(key.last_used_at),
                when(key.expires_at),
                ",".join(key.flag_reasons or []) or "-",
                *([when(key.deleted_at)] if show_all else []),
            ]
            for key in found
        ],
    )


@keys.command("show")
@click.argument("key_id", type=int)
@json_option
def keys_show(key_id: int, as_json: bool) -> None:
    """One key's details (never its secret)."""
    now = utcnow()
    with transaction() as session:
        key = key_service(session).get(key_id)
        organization = session.get_one(Organization, key.org_id)
    if as_json:
        print_json({"org": organization.name, **key_as_dict(key, now)})
        return
    replaced_by = str(key.replaced_by_id) if key.replaced_by_id else "-"
    for label, value in (
        ("ID", str(key.id)),
        ("ORG", organization.name),
        ("NAME", key.name),
        ("KEY", key.display),
        ("ENV", key.environment.value),
        ("SCOPES", scopes.described(key.scopes)),
        ("STATUS", key.status(now).value),
        ("CREATED BY", key.created_by),
        (utc("CREATED"), when(key.created_at)),
        (utc("LAST USED"), when(key.last_used_at)),
        (utc("EXPIRES"), when(key.expires_at)),
        (utc("DELETED"), when(key.deleted_at)),
        ("REPLACED BY", replaced_by),
        ("FLAG", ",".join(key.flag_reasons or []) or "-"),
        (utc("EXPOSED"), f"{when(key.exposed_at)} at {key.exposed_url}" if key.exposed_url else when(key.exposed_at)),
    ):
        click.echo(f"{label + ':':<18}{value}")


@keys.command("roll")
@click.argument("key_id", type=int)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option(
    "--grace",
    type=Duration(check_grace),
    default="24h",  # DEFAULT_ROLL_GRACE, written as people say it (format_duration would say 1d)
    show_default=True,
    help="How long the old key keeps working (0 to 7d; 0 stops it now).",
)
@json_option
def keys_roll(key_id: int, actor: str, grace: dt.timedelta, as_json: bool) -> None:
    """Replace a key with a new one; the old one stops after the grace period."""
    with transaction() as session:
        new, plaintext = key_service(session).roll(key_id, actor, grace)
        old = key_service(session).get(key_id)
    print_new_key(new, plaintext, as_json, replaces=old.id, old_key_expires_at=old.expires_at.isoformat())
    if as_json:
        return
    if grace:
        click.echo(f"Key {old.id} keeps working until {old.expires_at:%Y-%m-%d %H:%M:%S} UTC.", err=True)
    else:
        click.echo(f"Key {old.id} stopped working now.", err=True)


@keys.command("delete")
@click.argument("key_id", type=int)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@json_option
def keys_delete(key_id: int, actor: str, as_json: bool) -> None:
    """Delete a key: it stops authenticating at once."""
    with transaction() as session:
        key = key_service(session).delete(key_id, actor)
    if as_json:
        print_json(key_as_dict(key, utcnow()))
        return
    click.echo(f"Deleted key {key.id} ('{key.name}', {key.display}).")


@keys.command("report-leak")
@click.argument("key")
@click.option("--url", help="Where the key was found in public (a commit, a paste, a log).")
@json_option
def keys_report_leak(key: str, url: str | None, as_json: bool) -> None:
    """Report KEY found in public ("-": read it from standard input, out of the shell's history):
    revoke it as a secret-scanning report would, audit where it was found, and tell the owners."""
    plaintext = sys.stdin.readline().strip() if key == "-" else key.strip()
    exposure = ExposureService(settings(), transaction, configured_pepper(settings())).report(
        plaintext, url, BY_HAND, OPERATOR
    )
    if exposure is None:
        raise UserError("this is none of this installation's keys: nothing was revoked")
    if as_json:
        print_json(exposure.webhook_body())
        return
    click.echo(exposure.text())


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
        ["ID", "ORG", "NAME", "KEY", "REASONS", utc("FLAGGED"), utc("LAST USED"), utc("EXPIRES")],
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
