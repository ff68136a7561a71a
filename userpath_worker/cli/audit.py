"""``userpath audit``: who did what in an organization, newest first."""

from __future__ import annotations

import json

import click

from userpath_worker.audit import services as audit
from userpath_worker.cli.common import json_option, print_json, print_table, shorten, transaction, utc, when
from userpath_worker.organizations import services as organizations


@click.group("audit")
def audit_group() -> None:
    """The audit log: key, member and replay changes."""


@audit_group.command("list")
@click.option("--org", required=True, help="Organization name.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
def audit_list(org: str, limit: int, as_json: bool) -> None:
    """The newest entries of ORG's audit log."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        entries = audit.page(session, organization.id, size=limit).entries
    if as_json:
        print_json(
            [
                {
                    "id": entry.id,
                    "created_at": entry.created_at,
                    "actor": entry.actor,
                    "action": entry.action,
                    "api_key_id": entry.api_key_id,
                    "detail": entry.detail,
                }
                for entry in entries
            ]
        )
        return
    print_table(
        ["ID", utc("TIME"), "ACTOR", "ACTION", "KEY", "DETAIL"],
        [
            [
                str(entry.id),
                when(entry.created_at),
                entry.actor,
                entry.action,
                str(entry.api_key_id or "-"),
                shorten(json.dumps(entry.detail, default=str), 60),
            ]
            for entry in entries
        ],
    )
