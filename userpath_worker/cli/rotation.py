"""``userpath rotation`` and ``userpath beat``: a rotation pass by hand, and the scheduler that runs it.

``userpath keys stale`` (in ``keys``) lists what a pass flagged.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any

import click

from userpath_worker.cli.common import celery_command, json_option, print_json, settings, transaction
from userpath_worker.rotation.delivery import DeliveryOutcome, deliver_as_configured, unclaimed_reminders
from userpath_worker.rotation.services import KeyChange, RotationPolicy, run_pass


@click.group()
def rotation() -> None:
    """Key rotation: flag stale keys, remind owners, enforce expiry."""


_CHANGES = ("flagged", "cleared", "reminded", "expired")  # what a pass does to keys: BatchResult's lists


@rotation.command("run")
@json_option
def rotation_run(as_json: bool) -> None:
    """Run one rotation pass now, then deliver every reminder still to send."""
    totals: Counter[str] = Counter()
    changes: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _CHANGES}
    reminders: list[dict[str, Any]] = []
    for batch in run_pass(transaction, RotationPolicy.from_settings(settings())):
        for kind in _CHANGES:
            for change in getattr(batch, kind):
                changes[kind].append(dataclasses.asdict(change))
                if not as_json:
                    click.echo(f"{kind:<8}  {_describe(change)}")
        totals.update(batch.counts())
    for reminder_id in unclaimed_reminders(transaction):
        result = deliver_as_configured(transaction, reminder_id, settings())
        totals[result.outcome.value] += 1
        reminders.append({"id": reminder_id, "outcome": result.outcome.value, "error": result.error})
        if result.outcome is not DeliveryOutcome.DELIVERED and not as_json:
            click.echo(f"reminder {reminder_id} {result.outcome.value}: {result.error or '-'}", err=True)
    if as_json:
        print_json({**changes, "reminders": reminders})
        return
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
