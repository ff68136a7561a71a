"""``userpath status`` and ``userpath health``: is the pipeline alive, and what did it reject."""

from __future__ import annotations

import sys

import click

from userpath_worker import status as pipeline
from userpath_worker.cli.common import json_option, print_json, print_table, settings, transaction, when_in_line
from userpath_worker.db import utcnow


@click.command()
@click.option("--ping-timeout", type=click.FloatRange(0.1, 30), default=1.0, show_default=True)
@json_option
def status(ping_timeout: float, as_json: bool) -> None:
    """Queue depths, workers, dead letters of the last 24 h, stale keys, rotation."""
    with transaction() as session:
        found = pipeline.collect(session, settings().database_url, settings().broker_url, ping_timeout)
    if as_json:
        print_json(found.as_dict())
        return
    click.echo(f"Database:             {found.database}")
    click.echo(f"Broker:               {found.broker}\n")
    print_table(["QUEUE", "WAITING"], [[name, str(depth)] for name, depth in found.queues.items()])
    if found.heaviest_organizations:
        click.echo("\nHeaviest organizations (messages waiting in their lanes):")
        print_table(
            ["ORGANIZATION", "WAITING"],
            [
                [heavy["organization"] or "(not stored from yet)", str(heavy["messages_waiting"])]
                for heavy in found.heaviest_organizations
            ],
        )
    if found.workers is None:
        workers = "unknown (the embedded broker cannot broadcast a ping)"
    else:
        workers = ", ".join(found.workers) or "none answered"
    rejected = ", ".join(f"{reason} {count}" for reason, count in sorted(found.dead_letters_24h.items())) or "none"
    last_pass = found.last_rotation_pass
    rotation = (
        f"{when_in_line(last_pass['finished_at'])} (flagged {last_pass['flagged']}, reminded {last_pass['reminded']}, "
        f"expired {last_pass['expired']})"
        if last_pass
        else "never"
    )
    click.echo(f"\nWorkers:              {workers}")
    for name, count in sorted(found.shared_node_names.items()):
        click.echo(
            f"Warning: {count} workers answer as {name}; start each with a node name of its own "
            "(celery -A tasks.app worker -n NAME@%h), or they cannot be told apart",
            err=True,
        )
    click.echo(f"Last event stored:    {when_in_line(found.last_event_received_at)}")
    click.echo(f"Dead letters (24 h):  {rejected}")
    click.echo(f"Stale keys:           {found.stale_keys}")
    click.echo(f"Last rotation pass:   {rotation}")
    click.echo(
        f"Reminders:            last delivered {when_in_line(found.last_reminder_delivered_at)}, "
        f"{found.reminders_waiting} waiting"
    )


@click.command()
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True)
def health(timeout: float) -> None:
    """Exit 0 when a worker answers a ping within the timeout, 1 otherwise (container healthchecks).
    On the embedded broker, which cannot carry a ping, a worker's heartbeat file answers instead."""
    broker_url = settings().broker_url
    if not pipeline.broadcasts(broker_url):
        _embedded_health(broker_url)
        return
    workers = pipeline.ping_workers(broker_url, timeout)
    if not workers:
        click.echo(f"unhealthy: no worker answered within {timeout:g} s", err=True)
        sys.exit(1)
    click.echo(f"healthy: {', '.join(workers)}")


def _embedded_health(broker_url: str) -> None:
    beat = pipeline.last_heartbeat(broker_url)
    where = pipeline.heartbeat_path(broker_url)
    if beat is None:
        click.echo(f"unhealthy: no worker has run on this embedded broker ({where} does not exist)", err=True)
        sys.exit(1)
    age = (utcnow() - beat).total_seconds()
    if age > pipeline.HEARTBEAT_STALE:
        click.echo(
            f"unhealthy: the last worker heartbeat was {age:.0f} s ago ({when_in_line(beat)}, {where})", err=True
        )
        sys.exit(1)
    click.echo(f"healthy: a worker beat {age:.0f} s ago (the embedded broker cannot carry a ping: {where} tells)")
