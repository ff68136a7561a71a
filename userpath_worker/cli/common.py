"""What every ``userpath`` command shares: settings, one transaction per command, output."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from config.celery import QUEUES
from config.durations import DURATION_HINT, parse_duration
from config.settings import Settings, SettingsError, get_settings
from userpath_worker import runtime, schema
from userpath_worker.accounts.services import INVITATION_LIFETIME, invitation_url
from userpath_worker.db import utcnow
from userpath_worker.errors import UserError
from userpath_worker.keys import scopes
from userpath_worker.keys.models import ApiKey
from userpath_worker.keys.services import KeyService, configured_pepper


class UserPathGroup(click.Group):
    """Turns a ``UserError`` or ``SettingsError`` anywhere below into click's one-line
    ``Error: ...`` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (UserError, SettingsError) as error:
            raise click.ClickException(str(error)) from None
        except OperationalError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else "unreachable"
            raise click.ClickException(f"cannot use the database in USERPATH_DATABASE_URL: {reason}") from None
        except BrokerError as error:
            raise click.ClickException(f"cannot reach the broker in USERPATH_BROKER_URL: {error}") from None


def settings() -> Settings:
    return get_settings()


@contextlib.contextmanager
def transaction() -> Iterator[Session]:
    """A transaction on a schema that is known to be current.

    A command may open many (a rotation pass opens one a batch); only its first one
    checks the schema (or migrates the embedded SQLite file). Commands that open none,
    like ``userpath worker`` or any ``--help``, never touch the database.
    """
    _prepare_schema_once()
    with runtime.session_factory().begin() as session:
        yield session


_SCHEMA_PREPARED = "userpath.schema_prepared"


def _prepare_schema_once() -> None:
    # click's ``meta`` is one dict for the whole invocation, shared by every nested context, so the
    # flag lasts exactly one command: the next invocation (a test's next CliRunner run, perhaps on
    # another database) checks again. Called outside a command, it checks every time.
    context = click.get_current_context(silent=True)
    meta: dict[str, Any] = context.meta if context else {}
    if not meta.get(_SCHEMA_PREPARED):
        schema.prepare(runtime.engine())  # raises on a schema behind the code: the flag stays unset
        meta[_SCHEMA_PREPARED] = True


def key_service(session: Session) -> KeyService:
    return KeyService(session, pepper=configured_pepper(settings()))


class Duration(click.ParamType):
    """A duration such as 30s, 15m, 24h, 90d or 0; anything else, or one that ``check`` (the
    service's own rule) refuses, is a usage mistake (exit 2)."""

    name = "duration"  # shown as DURATION in the help

    def __init__(self, check: Callable[[dt.timedelta], None] | None = None) -> None:
        self.check = check

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        try:
            duration = parse_duration(value)
            if self.check is not None:
                self.check(duration)
        except (ValueError, UserError) as error:
            self.fail(str(error), param, ctx)
        return duration


DURATION = Duration()


class Identifier(click.ParamType):
    """A row's id (``--before-id``): a whole number from 1; anything else is a usage mistake."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if not (isinstance(value, str) and value.strip().isdigit() and int(value) >= 1):
            self.fail(f"{value!r} is not an id: give a whole number from 1, as the listing printed it", param, ctx)
        return int(value)


ID = Identifier()


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 dead letter``, ``2 dead letters``: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


class Since(click.ParamType):
    """A moment given as a duration back from now (24h) or an ISO time; an ISO time without an
    offset is read as UTC, and a line on standard error says so."""

    name = "when"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            try:
                return utcnow() - parse_duration(value)
            except ValueError:
                self.fail(
                    f"'{value}' is neither a duration ({DURATION_HINT}) nor an ISO time such as 2026-03-01T12:00",
                    param,
                    ctx,
                )
        if moment.tzinfo is None:
            name = param.opts[0] if param is not None else "the time"
            click.echo(f"Note: {name} {value} has no UTC offset; read as UTC.", err=True)
            moment = moment.replace(tzinfo=dt.UTC)
        return moment


SINCE = Since()


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(function)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v)))


def when(value: dt.datetime | None) -> str:
    """A time in a table or a line, always UTC: its column header says so (``utc``)."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def when_in_line(value: dt.datetime | None) -> str:
    """A time in a line of prose (``userpath status``), where no column header says UTC."""
    return f"{when(value)} UTC" if value else "never"


def utc(header: str) -> str:
    """The header of a table column of times (``when``): every table labels them alike."""
    return f"{header} (UTC)"


def key_as_dict(key: ApiKey, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "display": key.display,
        "environment": key.environment.value,
        "scopes": scopes.listed(key.scopes),  # all three for a key without scopes
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
        f"Copy this key now: it will not be shown again. (id {key.id}, '{key.name}', {key.environment.value})",
        err=True,
    )


def print_link(token: str, as_json: bool, what: str, **fields: Any) -> None:
    """A one-time link to the web pages: ``what`` happened (on standard error), then the link as the
    last line of standard output, or ``{...fields, "url": ...}`` with --json."""
    url = invitation_url(settings().web_base_url, token)
    if as_json:
        print_json({**fields, "url": url})
        return
    click.echo(f"{what} Send them this one-time link, valid {_hours(INVITATION_LIFETIME)} hours:", err=True)
    click.echo(url)


def _hours(duration: dt.timedelta) -> int:
    return int(duration.total_seconds() // 3600)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def celery_command(*arguments: str) -> list[str]:
    """Celery's own command line on our app. The CLI runs Celery as a program rather than
    importing the tasks package, so the core never depends on the task layer."""
    return [sys.executable, "-m", "celery", "-A", "tasks.app", *arguments]


def worker_arguments(
    concurrency: int | None, loglevel: str | None, beat: bool, hostname: str | None = None
) -> list[str]:
    """Celery's worker arguments. The node name defaults to one of this process's own (the command
    execs into Celery, so the pid stays): two workers on one host never share Celery's default
    celery@HOST, which RabbitMQ refuses to the second (RESOURCE_LOCKED) and Redis mixes up."""
    arguments = [
        "worker",
        f"--queues={','.join(QUEUES)}",
        f"--loglevel={loglevel or settings().log_level}",
        f"--hostname={hostname or f'userpath-{os.getpid()}@%h'}",
    ]
    if settings().uses_embedded_database:
        # One SQLite file takes one writer at a time: more processes would only queue on its lock.
        concurrency = concurrency or 1
    if concurrency:
        arguments.append(f"--concurrency={concurrency}")
    if beat:
        arguments.append("--beat")
    return arguments
