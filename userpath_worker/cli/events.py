"""``userpath events`` and ``userpath deadletter``: what was stored and what was not."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import sys

import click

from config.durations import format_duration
from userpath_worker.cli.common import (
    DURATION,
    ID,
    SINCE,
    counted,
    json_option,
    print_json,
    print_table,
    shorten,
    transaction,
    utc,
    when,
)
from userpath_worker.cli.progress import progress
from userpath_worker.db import utcnow
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.errors import UserError
from userpath_worker.events import erasure
from userpath_worker.events.models import Event, Source
from userpath_worker.events.replay import REPLAYABLE, ReplayResult, count_replayable, replay_dead_letters
from userpath_worker.events.storage import EventFilter, find_events
from userpath_worker.organizations import services as organizations


@click.group()
def events() -> None:
    """Stored events."""


@events.command("list")
@click.option("--org", required=True, help="Organization name.")
@click.option("--name", help="Only events of this name.")
@click.option("--user-id", help="Only this user's events.")
@click.option("--source", type=click.Choice([source.value for source in Source]), help="Only events from this source.")
@click.option("--since", type=SINCE, help="Only events that occurred since then: a duration (24h, 7d) or an ISO time.")
@click.option("--before-id", type=ID, help="The next page: events older than this id.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
def events_list(
    org: str,
    name: str | None,
    user_id: str | None,
    source: str | None,
    since: dt.datetime | None,
    before_id: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """The newest events of an organization, newest first; pages on with --before-id."""
    chosen = EventFilter(name, user_id, Source(source) if source else None, since, before_id)
    with transaction() as session:
        found = find_events(session, organizations.get_organization(session, org).id, chosen, limit)
    show_events(found, as_json)
    if len(found) == limit and not as_json:
        click.echo(f"Older events: add --before-id {found[-1].id}", err=True)


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
        ["ID", utc("OCCURRED"), "SOURCE", "ENV", "EVENT", "USER", "PROPERTIES"],
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
            ["ID", utc("RECEIVED"), "REASON", "QUEUE", "DETAIL"],
            [[str(d.id), when(d.received_at), d.reason, d.queue or "-", shorten(d.detail, 70)] for d in found],
        )
        return
    print_table(
        ["ID", utc("RECEIVED"), "ORG", "REASON", "QUEUE", "DETAIL"],
        [
            [str(d.id), when(d.received_at), name or "-", d.reason, d.queue or "-", shorten(d.detail, 60)]
            for d, name in zip(found, orgs, strict=True)
        ],
    )


@deadletter.command("replay")
@click.option("--org", required=True, help="Organization name.")
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option("--reason", type=click.Choice([reason.value for reason in REPLAYABLE]), help="Only this reason.")
@click.option("--since", type=SINCE, help="Only dead letters received since then: a duration (24h, 7d) or an ISO time.")
@json_option
def deadletter_replay(org: str, actor: str, reason: str | None, since: dt.datetime | None, as_json: bool) -> None:
    """Validate dead letters again and store what passes now (after a contract fix)."""
    chosen = Reason(reason) if reason else None
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        total = count_replayable(session, organization.id, chosen, since)
    result = ReplayResult()
    with progress("replayed", "dead letter", total) as show:
        for result in replay_dead_letters(transaction, organization, actor, chosen, since):
            show(result.examined)
    if as_json:
        print_json({"examined": result.examined, "stored": result.stored, "still_failing": result.still_failing})
        return
    click.echo(
        f"Examined {counted(result.examined, 'dead letter')}: {result.stored} now stored, "
        f"{result.still_failing} still failing."
    )


@deadletter.command("purge")
@click.option("--older-than", required=True, type=DURATION, help="Delete dead letters older than this, e.g. 30d.")
@click.option("--org", help="Only this organization's (default: every organization's and the unattributed ones).")
@click.option("--reason", type=click.Choice([reason.value for reason in Reason]), help="Only this reason.")
@click.option("--dry-run", is_flag=True, help="Only say how many would be deleted.")
@click.option("--yes", is_flag=True, help="Delete without asking (needed when standard input is not a terminal).")
@json_option
def deadletter_purge(
    older_than: dt.timedelta, org: str | None, reason: str | None, dry_run: bool, yes: bool, as_json: bool
) -> None:
    """Delete old dead letters (retention), after a confirmation."""
    with transaction() as session:
        org_id = organizations.get_organization(session, org).id if org is not None else None
        scope = dead_letters.PurgeScope(utcnow() - older_than, org_id, reason)
        total = dead_letters.count_purgeable(session, scope)
    which = f"{f' of {org!r}' if org else ''}{f' ({reason})' if reason else ''}"
    which += f" received more than {format_duration(older_than)} ago"
    purged = 0
    if total and not dry_run:
        confirm(f"Delete {counted(total, 'dead letter')}{which}?", yes)
        with progress("deleted", "dead letter", total) as show:
            for purged in dead_letters.purge_dead_letters(transaction, scope):
                show(purged)
    if as_json:
        print_json({"matched": total, "deleted": purged, "dry_run": dry_run})
        return
    click.echo(
        f"Would delete {counted(total, 'dead letter')}{which}."
        if dry_run
        else f"Deleted {counted(purged, 'dead letter')}{which}."
    )


@events.command("erase")
@click.option("--org", required=True, help="Organization name.")
@click.option("--user-id", help="The person's user_id.")
@click.option("--anonymous-id", help="The person's anonymous_id.")
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option("--dry-run", is_flag=True, help="Only say what would be erased.")
@click.option("--yes", is_flag=True, help="Erase without asking (needed when standard input is not a terminal).")
@json_option
def events_erase(
    org: str, user_id: str | None, anonymous_id: str | None, actor: str, dry_run: bool, yes: bool, as_json: bool
) -> None:
    """Erase a person: their events and the dead letters that carry their id (owners only)."""
    if user_id is not None and anonymous_id is None:
        person = erasure.Person(erasure.IdKind.USER_ID, user_id)
    elif anonymous_id is not None and user_id is None:
        person = erasure.Person(erasure.IdKind.ANONYMOUS_ID, anonymous_id)
    else:
        raise click.UsageError("give exactly one of --user-id and --anonymous-id.")
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        organizations.require_owner(session, organization, actor, erasure.OWNERS_WORK)
        found = erasure.count_events(session, organization.id, person)
    if not dry_run:
        confirm(f"Erase {counted(found, 'event')} of this {person.kind} in {org!r}, and its dead letters?", yes)
    done: erasure.ErasureProgress | None = None
    verbs = {"events": "found" if dry_run else "erased", "dead letters": "searched"}
    nouns = {"events": "event", "dead letters": "dead letter"}
    for stage, steps in itertools.groupby(
        erasure.erase_person(transaction, organization, actor, person, dry_run), key=lambda step: step.stage
    ):
        done = next(steps)  # a stage's first step tells its total
        with progress(verbs[stage], nouns[stage], done.total) as show:
            show(done.done)
            for done in steps:  # noqa: B031 (the rest of the same group, within its iteration)
                show(done.done)
    assert done is not None  # every stage yields at least once
    if as_json:
        print_json(
            {
                "org": org,
                "by": person.kind.value,
                "events": done.events,
                "dead_letters": done.dead_letters,
                "dry_run": dry_run,
            }
        )
        return
    verb = "Would erase" if dry_run else "Erased"
    erased = f"{counted(done.events, 'event')} and {counted(done.dead_letters, 'dead letter')}"
    click.echo(f"{verb} {erased} of this {person.kind} in {org!r}.")


def confirm(question: str, yes: bool) -> None:
    """Ask before deleting, unless --yes; with no terminal to ask on, refuse rather than guess."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{question} Standard input is not a terminal to answer on: pass --yes to go ahead.")
    click.confirm(question, abort=True, err=True)
