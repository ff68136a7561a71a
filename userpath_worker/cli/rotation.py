"""``userpath rotation`` and ``userpath beat``: a rotation pass by hand, and the scheduler that runs it.

``userpath keys stale`` (in ``keys``) lists what a pass flagged.
"""

from __future__ import annotations

import os
from collections import Counter

import click

from userpath_worker.cli.common import celery_command, settings, transaction
from userpath_worker.rotation.delivery import DeliveryOutcome, deliver_as_configured, unclaimed_reminders
from userpath_worker.rotation.services import KeyChange, RotationPolicy, run_pass


@click.group()
def rotation() -> None:
    """Key rotation: flag stale keys, remind owners, enforce expiry."""


@rotation.command("run")
def rotation_run() -> None:
    """Run one rotation pass now, then deliver every reminder still to send."""
    totals: Counter[str] = Counter()
    for batch in run_pass(transaction, RotationPolicy.from_settings(settings())):
        for kind in ("flagged", "cleared", "reminded", "expired"):
            for change in getattr(batch, kind):
                click.echo(f"{kind:<8}  {_describe(change)}")
        totals.update(batch.counts())
    for reminder_id in unclaimed_reminders(transaction):
        result = deliver_as_configured(transaction, reminder_id, settings())
        totals[result.outcome.value] += 1
        if result.outcome is not DeliveryOutcome.DELIVERED:
            click.echo(f"reminder {reminder_id} {result.outcome.value}: {result.error or '-'}", err=True)
    click.echo(
        f"Flagged {totals['flagged']}, cleared {totals['cleared']}, reminded {totals['reminded']}, "
        f"expired {totals['expired']} keys; delivered {totals[DeliveryOutcome.DELIVERED.value]} reminders."
    )


def _describe(change: KeyChange) -> str:
    return f"key {change.key_id} '{change.name}' ({change.display}) of {change.org}: {', '.join(change.reasons)}"


@click.command()
@click.option(
    "--schedule",
    "schedule_file",
    default="celerybeat-schedule",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Beat's state file: when each entry last ran.",
)
@click.option("--loglevel", "-l", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def beat(schedule_file: str, loglevel: str | None) -> None:
    """Run the beat scheduler. Exactly one may run per deployment."""
    command = celery_command("beat", f"--schedule={schedule_file}", f"--loglevel={loglevel or settings().log_level}")
    os.execv(command[0], command)
