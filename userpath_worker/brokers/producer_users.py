"""Producer users: broker credentials for services inside the deployment that publish events to
the ingestion queues and can do nothing else (no reading, purging or deleting a queue, no
pub/sub, none of the worker's remote control).

On Redis an ACL user that may run ``LPUSH`` on the three queue keys and their lanes only, with
no reading command but ``LLEN``, ``ZADD`` on their ready sets, the publishing script, and
``PING`` and ``SELECT`` (which the clients send on connecting: kombu pings, a URL's database is
selected); ``HELLO``, ``AUTH`` and ``QUIT`` need no permission. On RabbitMQ a user with no
configure and no read permission that may write to the three ingestion queues' own exchanges
(``userpath_client.contract.exchange_of``): not to the default exchange, which reaches every queue
by its name, the worker's remote-control queue included. A passive ``queue.declare`` needs no
permission at all, which is how the Python client checks that a queue exists.

``make`` says what the broker needs, with a password generated here and shown once; ``apply``
does it on the broker of ``USERPATH_BROKER_URL``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
from kombu import Connection

from userpath_client.contract import INGESTION_QUEUES, exchange_of, lane_list, ready_lanes
from userpath_worker.errors import Conflict, UserError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' and '-', starting with a letter or digit"

# What a Redis producer may do: nothing but push onto the ingestion queues and their lanes and list
# a lane in its queue's ready set. The publishing script (EVAL/EVALSHA) runs under the same rules;
# its keys must be readable (%RW), but LLEN, a length, is the only reading command the user has.
# MULTI/EXEC let producers without the script push and list atomically (docs/contract.md, "Lanes").
REDIS_RULES = (
    "resetkeys",
    "resetchannels",
    "-@all",
    "+lpush",
    "+llen",
    "+zadd",
    "+eval",
    "+evalsha",
    "+multi",
    "+exec",
    "+ping",
    "+select",
) + tuple(
    pattern
    for queue in INGESTION_QUEUES
    for pattern in (f"%W~{queue}", f"%RW~{lane_list(queue, '*')}", f"%RW~{ready_lanes(queue)}")
)
# RabbitMQ's configure, write and read patterns: write to the ingestion queues' exchanges only.
RABBITMQ_PERMISSIONS = ("^$", "^(" + "|".join(re.escape(exchange_of(q)) for q in INGESTION_QUEUES) + ")$", "^$")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ProducerUser:
    """A producer user and what the broker needs for it. The password is in ``password`` and
    ``url`` only: the commands carry its SHA-256 (Redis) or read it from standard input (RabbitMQ)."""

    broker: Literal["redis", "rabbitmq"]
    name: str
    password: str
    url: str  # the producer's broker URL
    commands: list[str]  # to run on the broker, in order
    acl_rules: tuple[str, ...] = ()  # Redis: the rules of ACL SETUSER
    acl_file_line: str | None = None  # Redis: the same user as a line of an ACL file
    vhost: str | None = None  # RabbitMQ
    notes: list[str] = field(default_factory=list)  # what ``apply`` did, line by line


def broker_kind(broker_url: str) -> Literal["redis", "rabbitmq"]:
    scheme = broker_url.partition("://")[0]
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "rabbitmq"
    raise UserError(
        "producer users are for Redis and RabbitMQ; USERPATH_BROKER_URL is the embedded broker, "
        "which only processes on this machine use"
    )


def make(broker_url: str, name: str) -> ProducerUser:
    """What the broker of ``broker_url`` needs for a producer user ``name``, with a new password."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"'{name}' cannot be a user name: {NAME_RULE}")
    kind = broker_kind(broker_url)
    password = secrets.token_urlsafe(32)  # URL-safe: it goes into the producer's URL as it is
    url = _with_credentials(broker_url, name, password)
    if kind == "redis":
        secret = ("on", f"#{hashlib.sha256(password.encode()).hexdigest()}")  # the password's SHA-256
        rules = ("reset", *secret, *REDIS_RULES)
        return ProducerUser(
            kind,
            name,
            password,
            url,
            [f"ACL SETUSER {name} {' '.join(rules)}"],
            acl_rules=rules,
            acl_file_line=f"user {name} {' '.join((*secret, *REDIS_RULES))}",
        )
    vhost = unquote(urlsplit(broker_url).path[1:]) or "/"
    configure, write, read = RABBITMQ_PERMISSIONS
    commands = [
        f"rabbitmqctl add_user {name}",  # reads the password from standard input
        f"rabbitmqctl set_permissions -p {_shell_word(vhost)} {name} '{configure}' '{write}' '{read}'",
    ]
    return ProducerUser(kind, name, password, url, commands, vhost=vhost)


def apply(user: ProducerUser, broker_url: str) -> ProducerUser:
    """Make ``user`` on the broker of ``broker_url``, then connect as it; ``Conflict`` if a user of
    that name exists (it is never changed), ``UserError`` when the broker refuses."""
    notes = _apply_redis(user, broker_url) if user.broker == "redis" else _apply_rabbitmq(user, broker_url)
    _check_connects(user)
    return ProducerUser(**{**user.__dict__, "notes": [*notes, f"connected as {user.name}"]})


def _apply_redis(user: ProducerUser, broker_url: str) -> list[str]:
    client = redis.Redis.from_url(broker_url, socket_timeout=10)
    try:
        if client.acl_getuser(user.name) is not None:
            raise Conflict(
                f"Redis already has a user '{user.name}'; choose another name (or remove it: ACL DELUSER {user.name})"
            )
        client.execute_command("ACL", "SETUSER", user.name, *user.acl_rules)
        try:
            client.execute_command("ACL", "SAVE")
            return [f"made Redis user {user.name}", "saved to the server's ACL file"]
        except redis.ResponseError:
            return [
                f"made Redis user {user.name}",
                "in memory only: this Redis has no ACL file; add the ACL file line to its configuration too",
            ]
    except redis.exceptions.NoPermissionError:
        raise UserError(
            "the user of USERPATH_BROKER_URL may not manage Redis users (ACL refused): run this with an "
            "administrator's URL, or give the ACL SETUSER line to redis-cli"
        ) from None
    except redis.ConnectionError as error:
        raise UserError(f"cannot reach the broker in USERPATH_BROKER_URL: {error}") from None
    finally:
        client.close()


def _apply_rabbitmq(user: ProducerUser, broker_url: str) -> list[str]:
    # AMQP has no method to make a user: rabbitmqctl does it, on the node of this machine.
    host = urlsplit(broker_url).hostname or "localhost"
    rabbitmqctl = shutil.which("rabbitmqctl")
    if host not in LOCAL_HOSTS or rabbitmqctl is None:
        raise UserError(
            f"AMQP cannot make users and rabbitmqctl manages the RabbitMQ of this machine only "
            f"(the broker is on {host}{'' if rabbitmqctl else ', and rabbitmqctl is not installed here'}): "
            "run the printed commands where RabbitMQ runs (docker compose exec rabbitmq ...)"
        )
    made = _rabbitmqctl(rabbitmqctl, ["add_user", user.name], user.password)
    if made.returncode != 0:
        if "already exists" in made.stderr:
            raise Conflict(f"RabbitMQ already has a user '{user.name}'; choose another name")
        raise UserError(f"rabbitmqctl add_user failed: {_first_line(made.stderr)}")
    vhost = user.vhost or "/"
    permitted = _rabbitmqctl(rabbitmqctl, ["set_permissions", "-p", vhost, user.name, *RABBITMQ_PERMISSIONS])
    if permitted.returncode != 0:
        _rabbitmqctl(rabbitmqctl, ["delete_user", user.name])  # no user left half made
        raise UserError(f"rabbitmqctl set_permissions failed: {_first_line(permitted.stderr)}")
    return [f"made RabbitMQ user {user.name}", f"allowed it to publish to the ingestion queues of vhost {vhost}"]


def _rabbitmqctl(program: str, arguments: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program, "-q", *arguments], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def _check_connects(user: ProducerUser) -> None:
    """Connect as the new user, as its producers will: a wrong node or vhost shows here."""
    try:
        with Connection(user.url, connect_timeout=10) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:  # any transport's refusal: say it in one line
        raise UserError(f"made the user, but cannot connect as {user.name}: {_first_line(str(error))}") from None


def _with_credentials(broker_url: str, name: str, password: str) -> str:
    parts = urlsplit(broker_url)
    host = parts.hostname or ""
    netloc = f"{quote(name, safe='')}:{password}@{f'[{host}]' if ':' in host else host}"
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


def _shell_word(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"
