"""``userpath broker``: what the broker needs for services inside the deployment that publish."""

from __future__ import annotations

from typing import Any

import click

from userpath_worker.brokers import producer_users
from userpath_worker.cli.common import json_option, print_json, settings


class UserName(click.ParamType):
    """A broker user's name; anything else is a usage mistake (exit 2)."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not producer_users.NAME_PATTERN.fullmatch(value):
            self.fail(f"'{value}' cannot be a user name: {producer_users.NAME_RULE}", param, ctx)
        return str(value)


@click.group()
def broker() -> None:
    """The broker: users for producers inside the deployment."""


@broker.command("producer-user")
@click.argument("name", type=UserName())
@click.option("--apply", "apply_now", is_flag=True, help="Make the user on the broker of USERPATH_BROKER_URL.")
@json_option
def producer_user(name: str, apply_now: bool, as_json: bool) -> None:
    """Print (or, with --apply, make) a broker user that may only publish to the ingestion queues.

    Its password is generated now and shown once, in the producer's broker URL. Redis: an ACL user
    allowed LPUSH on the three queues and nothing else. RabbitMQ: a user allowed to write to the
    three queues' exchanges and nothing else (--apply runs rabbitmqctl, for a RabbitMQ on this
    machine: AMQP cannot make users).
    """
    broker_url = settings().broker_url
    user = producer_users.make(broker_url, name)
    if apply_now:
        user = producer_users.apply(user, broker_url)
    if as_json:
        print_json(
            {
                "broker": user.broker,
                "name": user.name,
                "url": user.url,
                "password": user.password,
                "commands": user.commands,
                "acl_file_line": user.acl_file_line,
                "vhost": user.vhost,
                "applied": apply_now,
                "notes": user.notes,
            }
        )
        return
    for note in user.notes:
        click.echo(note, err=True)
    if not apply_now:
        where = "in redis-cli, as an administrator" if user.broker == "redis" else "where RabbitMQ runs"
        click.echo(f"# Run {where}:")
        click.echo("\n".join(user.commands))
        if user.broker == "rabbitmq":
            click.echo(f"# add_user asks for the password: {user.password}")
    if user.acl_file_line:
        click.echo("# The same user as a line of the ACL file (aclfile), to keep it across restarts:")
        click.echo(user.acl_file_line)
    click.echo("# The producer's broker URL (the password is shown once):")
    click.echo(user.url)
