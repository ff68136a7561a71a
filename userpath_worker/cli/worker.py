"""``userpath worker`` and ``userpath demo``."""

from __future__ import annotations

import os
import sys

import click

from userpath_worker.cli.common import celery_command, settings, transaction, worker_arguments
from userpath_worker.cli.events import show_dead_letters, show_events
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.events.storage import newest_events


@click.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 512), help="Worker processes (default: one per core).")
@click.option("--loglevel", "-l", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--beat", is_flag=True, help="Also run the beat scheduler (one machine only).")
@click.option(
    "--hostname",
    "-n",
    metavar="NAME@%h",
    help="The worker's node name, as Celery's -n (default userpath-PID@%h: unique on this host).",
)
def worker(concurrency: int | None, loglevel: str | None, beat: bool, hostname: str | None) -> None:
    """Consume the event, job, webhook and maintenance queues."""
    command = celery_command(*worker_arguments(concurrency, loglevel, beat, hostname))
    os.execv(command[0], command)


@click.command()
def demo() -> None:
    """Run the whole pipeline once on the configured broker and database, and show the result."""
    from userpath_worker import demo as demonstration  # brings in the client only when asked

    command = celery_command(*worker_arguments(concurrency=1, loglevel="WARNING", beat=False))
    edge = [sys.executable, "-m", "userpath_worker.cli", "edge"]
    run = demonstration.run(command, edge, click.echo)
    with transaction() as session:
        found = newest_events(session, run.org_id, run.events)
        rejected = dead_letters.list_dead_letters(session, None, since=run.started_at)
    click.echo(f"\nStored events ({run.events}):")
    show_events(found, as_json=False)
    click.echo(f"\nDead letters ({run.dead_letters}):")
    show_dead_letters([letter for letter, _ in rejected], as_json=False, org_names=[name for _, name in rejected])
    click.echo("\nEvery message was stored or dead-lettered. Try: userpath events list --org Demo")
    click.echo(
        "\nSend an event yourself with the demo's key, printed this once (the next `userpath demo` deletes it);"
        " `userpath worker` or the next `userpath demo` stores it:"
    )
    click.echo(demonstration.snippet(run.key))
    click.echo(
        "\nOr through the HTTP edge, as Segment's libraries send: start `userpath edge` (another terminal), then:"
    )
    click.echo(demonstration.curl_line(run.key, settings().edge_base_url))
    click.echo(
        f"\nSee its keys on the web pages as the demo's owner ({demonstration.DEMO_OWNER}): run `userpath web`, "
        "then open this one-time link (valid 72 hours) to set a password:"
    )
    click.echo(run.owner_link)
