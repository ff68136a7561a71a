"""The ``userpath`` command: database, organizations, members and API keys.

User mistakes print one line and exit 1; usage mistakes exit 2 (click's convention).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from config.celery import QUEUES
from config.settings import Settings, get_settings
from userpath_worker import runtime, schema
from userpath_worker.db import utcnow
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import DeadLetter, Reason
from userpath_worker.durations import format_duration, parse_duration
from userpath_worker.errors import UserError
from userpath_worker.events.models import Event
from userpath_worker.events.services import newest_events
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import DEFAULT_ROLL_GRACE, KeyService
from userpath_worker.keys.tokens import Environment
from userpath_worker.organizations import services as organizations
from userpath_worker.organizations.models import Role


class UserPathGroup(click.Group):
    """Turns a ``UserError`` anywhere below into click's one-line ``Error: ...`` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise click.ClickException(str(error)) from None
        except OperationalError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else "unreachable"
            raise click.ClickException(
                f"cannot use the database in USERPATH_DATABASE_URL: {reason}"
            ) from None


def settings() -> Settings:
    return get_settings()


@contextlib.contextmanager
def transaction() -> Iterator[Session]:
    """One transaction per command, on a schema that is known to be current."""
    schema.prepare(runtime.engine())
    with runtime.session_factory().begin() as session:
        yield session


def key_service(session: Session) -> KeyService:
    return KeyService(session, pepper=settings().key_pepper)


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(function)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v)))


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def key_as_dict(key: ApiKey, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "display": key.display,
        "environment": key.environment.value,
        "status": key.status(now).value,
        "created_at": key.created_at.isoformat(),
        "created_by": key.created_by,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "deleted_at": key.deleted_at.isoformat() if key.deleted_at else None,
        "replaced_by_id": key.replaced_by_id,
        "flagged_at": key.flagged_at.isoformat() if key.flagged_at else None,
        "flag_reasons": key.flag_reasons or [],
    }


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def print_new_key(key: ApiKey, plaintext: str, as_json: bool, **extra: Any) -> None:
    if as_json:
        print_json({**key_as_dict(key, utcnow()), "key": plaintext, **extra})
        return
    click.echo(plaintext)
    click.echo(
        f"Copy this key now: it will not be shown again. (id {key.id}, '{key.name}', "
        f"{key.environment.value})",
        err=True,
    )


@click.group(cls=UserPathGroup)
def cli() -> None:
    """UserPath's event ingestion worker and its operations tools."""
    settings()  # a bad USERPATH_* value stops every command here, with one line


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    schema.upgrade(runtime.engine())
    click.echo(f"Database schema is at revision {schema.current_revision(runtime.engine())}.")


@cli.group()
def orgs() -> None:
    """Organizations."""


@orgs.command("create")
@click.argument("name")
@click.option("--owner", "owner_email", required=True, help="E-mail of the first owner.")
def orgs_create(name: str, owner_email: str) -> None:
    """Create organization NAME with its first owner."""
    with transaction() as session:
        organization = organizations.create_organization(session, name, owner_email)
    click.echo(f"Created organization '{organization.name}' (id {organization.id}) owned by {owner_email}.")


@cli.group()
def members() -> None:
    """Members of organizations."""


@members.command("add")
@click.argument("org")
@click.argument("email")
@click.option("--role", type=click.Choice([role.value for role in Role]), required=True)
def members_add(org: str, email: str, role: str) -> None:
    """Add EMAIL to organization ORG with a role."""
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        member = organizations.add_member(session, organization, email, Role(role))
    click.echo(f"Added {member.email} to '{org}' as {member.role.value}.")


@cli.group()
def keys() -> None:
    """API keys: create, list, roll, delete."""


@keys.command("create")
@click.option("--org", required=True, help="Organization name.")
@click.option("--name", required=True, help='What the key is for, e.g. "App X Production Server".')
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option("--env", "environment", type=click.Choice(["live", "test"]), default="live", show_default=True)
@click.option("--expires-in", metavar="DURATION", help="Lifetime such as 90d; none by default.")
@json_option
def keys_create(org: str, name: str, actor: str, environment: str, expires_in: str | None, as_json: bool) -> None:
    """Create a key and print it once."""
    lifetime = parse_duration(expires_in, what="--expires-in") if expires_in else None
    with transaction() as session:
        organization = organizations.get_organization(session, org)
        key, plaintext = key_service(session).create(
            organization, name, actor, Environment(environment), lifetime
        )
    print_new_key(key, plaintext, as_json)


@keys.command("list")
@click.option("--org", required=True, help="Organization name.")
@json_option
def keys_list(org: str, as_json: bool) -> None:
    """List an organization's keys (never their secrets)."""
    now = utcnow()
    with transaction() as session:
        found = key_service(session).list(organizations.get_organization(session, org))
    if as_json:
        print_json([key_as_dict(key, now) for key in found])
        return
    print_table(
        ["ID", "NAME", "KEY", "ENV", "STATUS", "CREATED", "LAST USED", "EXPIRES", "FLAG"],
        [
            [str(key.id), key.name, key.display, key.environment.value, key.status(now).value,
             _when(key.created_at), _when(key.last_used_at), _when(key.expires_at), ",".join(key.flag_reasons or []) or "-"]
            for key in found
        ],
    )


@keys.command("roll")
@click.argument("key_id", type=int)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
@click.option("--grace", default=format_duration(DEFAULT_ROLL_GRACE), show_default=True,
              help="How long the old key keeps working (0 to 7d).")
@json_option
def keys_roll(key_id: int, actor: str, grace: str, as_json: bool) -> None:
    """Replace a key with a new one; the old one stops after the grace period."""
    with transaction() as session:
        new, plaintext = key_service(session).roll(key_id, actor, parse_duration(grace, what="--grace"))
        old = key_service(session).get(key_id)
    print_new_key(new, plaintext, as_json, replaces=old.id, old_key_expires_at=old.expires_at.isoformat())
    if not as_json:
        click.echo(f"Key {old.id} keeps working until {old.expires_at:%Y-%m-%d %H:%M:%S} UTC.", err=True)


@keys.command("delete")
@click.argument("key_id", type=int)
@click.option("--as", "actor", required=True, metavar="EMAIL", help="The acting owner.")
def keys_delete(key_id: int, actor: str) -> None:
    """Delete a key: it stops authenticating at once."""
    with transaction() as session:
        key = key_service(session).delete(key_id, actor)
    click.echo(f"Deleted key {key.id} ('{key.name}', {key.display}).")


@cli.group()
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
        print_json([
            {
                "id": e.id, "event_id": e.event_id, "name": e.name, "source": e.source.value,
                "environment": e.environment.value, "user_id": e.user_id, "anonymous_id": e.anonymous_id,
                "api_key_id": e.api_key_id, "properties": e.properties, "context": e.context,
                "timestamp": e.timestamp, "sent_at": e.sent_at, "received_at": e.received_at,
                "occurred_at": e.occurred_at,
            }
            for e in found
        ])
        return
    print_table(
        ["ID", "OCCURRED", "SOURCE", "ENV", "EVENT", "USER", "PROPERTIES"],
        [
            [str(e.id), _when(e.occurred_at), e.source.value, e.environment.value, e.name,
             e.user_id or e.anonymous_id or "-", _shorten(json.dumps(e.properties, default=str), 50)]
            for e in found
        ],
    )


@cli.group()
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
        print_json([
            {
                "id": d.id, "reason": d.reason, "detail": d.detail, "queue": d.queue, "task": d.task,
                "api_key_id": d.api_key_id, "received_at": d.received_at, "payload": d.payload,
            }
            for d in found
        ])
        return
    print_table(
        ["ID", "RECEIVED", "REASON", "QUEUE", "DETAIL"],
        [[str(d.id), _when(d.received_at), d.reason, d.queue or "-", _shorten(d.detail, 70)] for d in found],
    )


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def celery_command(*arguments: str) -> list[str]:
    """Celery's own command line on our app. The CLI runs Celery as a program rather than
    importing the tasks package, so the core never depends on the task layer."""
    return [sys.executable, "-m", "celery", "-A", "tasks.app", *arguments]


def worker_arguments(concurrency: int | None, loglevel: str | None, beat: bool) -> list[str]:
    arguments = ["worker", f"--queues={','.join(QUEUES)}", f"--loglevel={loglevel or settings().log_level}"]
    if settings().uses_embedded_database:
        # One SQLite file takes one writer at a time: more processes would only queue on its lock.
        concurrency = concurrency or 1
    if concurrency:
        arguments.append(f"--concurrency={concurrency}")
    if beat:
        arguments.append("--beat")
    return arguments


@cli.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 512), help="Worker processes (default: one per core).")
@click.option("--loglevel", "-l", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--beat", is_flag=True, help="Also run the beat scheduler (one machine only).")
def worker(concurrency: int | None, loglevel: str | None, beat: bool) -> None:
    """Consume the event, job, webhook and maintenance queues."""
    command = celery_command(*worker_arguments(concurrency, loglevel, beat))
    os.execv(command[0], command)


@cli.command()
def demo() -> None:
    """Run the whole pipeline once on the configured broker and database, and show the result."""
    from userpath_worker import demo as demonstration  # brings in the client only when asked

    command = celery_command(*worker_arguments(concurrency=1, loglevel="WARNING", beat=False))
    run = demonstration.run(command, click.echo)
    with transaction() as session:
        found = newest_events(session, run.org_id, run.events)
        rejected = dead_letters.list_dead_letters(session, None, since=run.started_at)
    click.echo(f"\nStored events ({run.events}):")
    show_events(found, as_json=False)
    click.echo(f"\nDead letters ({run.dead_letters}):")
    show_dead_letters(rejected, as_json=False)
    click.echo("\nEvery message was stored or dead-lettered. Try: userpath events list --org Demo")


# Last, because these commands use the helpers above.
from userpath_worker.rotation.cli import beat, rotation, stale  # noqa: E402

keys.add_command(stale)
cli.add_command(rotation)
cli.add_command(beat)


def main() -> None:
    cli(prog_name="userpath")
