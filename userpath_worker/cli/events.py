"""``userpath events`` and ``userpath deadletter``: what was stored and what was not."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click

from userpath_worker.cli.common import json_option, print_json, print_table, shorten, transaction, when
from userpath_worker.db import utcnow
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.durations import parse_duration
from userpath_worker.errors import UserError
from userpath_worker.events.models import Event
from userpath_worker.events.replay import REPLAYABLE, ReplayResult, count_replayable, replay_dead_letters
from userpath_worker.events.storage import newest_events
from userpath_worker.organizations import services as organizations


@click.group()
def events() -> None:
    """Stored events."""


@events.command("list")
@click.option("--org", required=True, help="Organization name.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
def events_list(org: str, limit: int, as_json: bool) -> None:
    """The newest events of an organization."""
    with transaction() as session:
        found = newest_events(session, organizations.get_organization(session, org).id, limit)
    show_events(found, as_json)


def show_events(found: list[Event], as_json: bool) -> None:
    if as_json:
        print_json(
            [
                {
                    "id": e.id,
                    "event_id": e.event_id,
                    "name": e.name,
                    "source": e.source.value,
                    "environment": e.environment.value,
                    "user_id": e.user_id,
                    "anonymous_id": e.anonymous_id,
                    "api_key_id": e.api_key_id,
                    "properties": e.properties,
                    "context": e.context,
                    "timestamp": e.timestamp,
                    "sent_at": e.sent_at,
                    "received_at": e.received_at,
                    "occurred_at": e.occurred_at,
                    "verified": e.verified,
                }
                for e in found
            ]
        )
        return
    print_table(
        ["ID", "OCCURRED", "SOURCE", "ENV", "EVENT", "USER", "PROPERTIES"],
        [
            [
                str(e.id),
                when(e.occurred_at),
                e.source.value,
                e.environment.value,
                e.name,
                e.user_id or e.anonymous_id or "-",
                shorten(json.dumps(e.properties, default=str), 50),
            ]
            for e in found
        ],
    )


@click.group()
def deadletter() -> None:
    """Messages and events that were not stored, with the reason."""


@deadletter.command("list")
@click.option("--org", help="Only this organization's (default: every organization's and the unattributed ones).")
@click.option("--unattributed", is_flag=True, help="Only those without an organization (an unknown or malformed key).")
@click.option("--reason", type=click.Choice([reason.value for reason in Reason]), help="Only this reason.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
def deadletter_list(org: str | None, unattributed: bool, reason: str | None, limit: int, as_json: bool) -> None:
    """The newest dead letters, with their organization ("-" when their key was unknown or malformed)."""
    if org is not None and unattributed:
        raise click.UsageError("--org and --unattributed exclude each other.")
    with transaction() as session:
        org_id = organizations.get_organization(session, org).id if org is not None else None
        found = dead_letters.list_dead_letters(session, org_id, reason, limit, unattributed=unattributed)
    show_dead_letters([letter for letter, _ in found], as_json, [name for _, name in found])


def show_dead_letters(found: list[DeadLetter], as_json: bool, org_names: list[str | None] | None = None) -> None:
    """``found`` as a table or JSON; with ``org_names`` (one per dead letter), an organization column."""
    orgs = org_names if org_names is not None else [None] * len(found)
    if as_json:
        print_json(
            [
                {
                    "id": d.id,
                    "reason": d.reason,
                    "detail": d.detail,
                    "queue": d.queue,
                    "task": d.task,
                    "api_key_id": d.api_key_id,
                    "received_at": d.received_at,
                    "payload": d.payload,
                }
                | ({"org_id": d.org_id, "org": name} if org_names is not None else {})
                for d, name in zip(found, orgs, strict=True)
            ]
        )
        return
    if org_names is None:
        print_table(
            ["ID", "RECEIVED", "REASON", "QUEUE", "DETAIL"],
            [[str(d.id), when(d.received_at), d.reason, d.queue or "-", shorten(d.detail, 70)] for d in found],
        )
        return
    print_table(
        ["ID", "RECEIVED", "ORG", "REASON", "QUEUE", "DETAIL"],
        [
            [str(d.id), when(d.received_at), name or "-", d.reason, d.queue or "-", shorten(d.detail, 60)]
            for d, name in zip(found, orgs, strict=True)
        ],
    )


@deadletter.command("replay")
@click.option("--org", required=True, help="Organization name.")
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option("--reason", type=click.Choice([reason.value for reason in REPLAYABLE]), help="Only this reason.")
@click.option(
    "--since", metavar="WHEN", help="Only dead letters received since then: a duration (24h, 7d) or an ISO time."
)
def deadletter_replay(org: str, actor: str, reason: str | None, since: str | None) -> None:
    """Validate dead letters again and store what passes now (after a contract fix)."""
    chosen = Reason(reason) if reason else None
    cutoff = _since(since) if since else None
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        total = count_replayable(session, organization.id, chosen, cutoff)
    result = ReplayResult()
    with click.progressbar(length=total, label="Replaying", file=sys.stderr) as progress:
        for result in replay_dead_letters(transaction, organization, actor, chosen, cutoff):
            progress.update(result.examined - progress.pos)
    click.echo(
        f"Examined {result.examined} dead letters: {result.stored} now stored, {result.still_failing} still failing."
    )


@deadletter.command("purge")
@click.option("--older-than", required=True, metavar="DURATION", help="Delete dead letters older than this, e.g. 30d.")
def deadletter_purge(older_than: str) -> None:
    """Delete old dead letters (retention)."""
    age = parse_duration(older_than, what="--older-than")
    purged = dead_letters.purge_dead_letters(transaction, age)
    click.echo(f"Deleted {purged} dead letters received more than {older_than} ago.")


def _since(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return utcnow() - parse_duration(text, what="--since")
    if moment.tzinfo is None:
        raise UserError(f"--since {text!r} has no time zone; add one, such as +00:00")
    return moment
