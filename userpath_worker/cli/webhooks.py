"""``userpath webhooks``: the organizations' webhook signing secrets."""

from __future__ import annotations

import sys
from typing import Any

import click

from userpath_worker.cli.common import (
    json_option,
    key_service,
    print_json,
    print_table,
    settings,
    transaction,
    utc,
    when,
)
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Organization
from userpath_worker.webhooks import services as webhook_secrets
from userpath_worker.webhooks import signatures
from userpath_worker.webhooks.crypto import SecretBox, secret_key
from userpath_worker.webhooks.models import WebhookSecret
from userpath_worker.webhooks.sources import create_source


@click.group()
def webhooks() -> None:
    """Verified webhooks."""


@webhooks.group("secrets")
def secrets() -> None:
    """Signing secrets: a provider's webhooks must verify once its organization has one."""


@secrets.command("add")
@click.option("--org", required=True, help="Organization name.")
@click.option("--provider", required=True, help=f"One of: {', '.join(signatures.providers())}.")
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@json_option
def secrets_add(org: str, provider: str, actor: str, as_json: bool) -> None:
    """Add a signing secret, read from standard input (or a hidden prompt), never from the command line."""
    if sys.stdin.isatty():
        secret = click.prompt(f"{provider} signing secret", hide_input=True, err=True)
    else:
        secret = sys.stdin.read()
    box = SecretBox(secret_key(settings()))
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        added = webhook_secrets.add_secret(session, box, organization, provider, secret, actor)
    if as_json:
        print_json(secret_as_dict(added))
        return
    click.echo(f"Added {provider} secret {added.id} ({added.display}): {org}'s {provider} webhooks must now verify.")


def secret_as_dict(secret: WebhookSecret) -> dict[str, Any]:
    """A secret for scripts: its display form, never the secret."""
    return {
        "id": secret.id,
        "provider": secret.provider,
        "display": secret.display,
        "created_at": secret.created_at.isoformat(),
        "created_by": secret.created_by,
    }


@secrets.command("list")
@click.option("--org", required=True, help="Organization name.")
@json_option
def secrets_list(org: str, as_json: bool) -> None:
    """An organization's signing secrets, in their display form (never the secrets)."""
    with transaction() as session:
        found = webhook_secrets.list_secrets(session, organizations.get_organization(session, org))
    if as_json:
        print_json([secret_as_dict(secret) for secret in found])
        return
    print_table(
        ["ID", "PROVIDER", "SECRET", utc("ADDED"), "BY"],
        [[str(s.id), s.provider, s.display, when(s.created_at), s.created_by] for s in found],
    )


@secrets.command("remove")
@click.argument("secret_id", type=int)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@json_option
def secrets_remove(secret_id: int, actor: str, as_json: bool) -> None:
    """Remove a signing secret: deliveries signed only with it stop verifying."""
    with transaction() as session:
        removed = webhook_secrets.remove_secret(session, secret_id, actor)
        left = len(
            webhook_secrets.list_secrets(session, session.get_one(Organization, removed.org_id), removed.provider)
        )
    if as_json:
        print_json({**secret_as_dict(removed), "removed": True, "left": left})
        return
    then = "its webhooks must still verify" if left else "its webhooks are now stored unverified"
    click.echo(f"Removed {removed.provider} secret {removed.id} ({removed.display}); {left} left, {then}.")


@webhooks.group("sources")
def sources() -> None:
    """Webhook sources: a URL on the HTTP edge (USERPATH_EDGE_BASE_URL) to paste into a provider."""


@sources.command("create")
@click.option("--org", required=True, help="Organization name.")
@click.option(
    "--provider", required=True, help="The provider, e.g. stripe or github (its signing secret: secrets add)."
)
@click.option("--env", "environment", type=click.Choice(["live", "test"]), default="live", show_default=True)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@json_option
def sources_create(org: str, provider: str, environment: str, actor: str, as_json: bool) -> None:
    """Make a key limited to PROVIDER's webhooks and print, once, the URL that carries it."""
    configured = settings()
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        key, url = create_source(
            key_service(session), organization, provider, actor, configured.edge_base_url, Environment(environment)
        )
    if as_json:
        print_json({"url": url, "key_id": key.id, "name": key.name, "provider": provider})
        return
    click.echo(url)
    click.echo(
        f"Paste this URL into {provider}'s webhook settings now: it will not be shown again. It carries key "
        f"{key.id} '{key.name}' ({key.display}), which may send only {provider} webhooks; deleting the key "
        "retires the URL.",
        err=True,
    )
