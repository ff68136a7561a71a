"""``userpath events`` and ``userpath deadletter``: what was stored and what was not."""

from __future__ import annotations

import json

import click

from userpath_worker.cli.common import json_option, print_json, print_table, shorten, transaction, when
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.events.models import Event
from userpath_worker.events.services import newest_events
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
@click.option("--org", required=True, help="Organization name.")
@click.option("--reason", type=click.Choice([reason.value for reason in Reason]), help="Only this reason.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
def deadletter_list(org: str, reason: str | None, limit: int, as_json: bool) -> None:
    """An organization's newest dead letters (those whose key was known)."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        found = dead_letters.list_dead_letters(session, organization.id, reason, limit)
    show_dead_letters(found, as_json)


def show_dead_letters(found: list[DeadLetter], as_json: bool) -> None:
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
                for d in found
            ]
        )
        return
    print_table(
        ["ID", "RECEIVED", "REASON", "QUEUE", "DETAIL"],
        [[str(d.id), when(d.received_at), d.reason, d.queue or "-", shorten(d.detail, 70)] for d in found],
    )
