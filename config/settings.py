"""The one settings class of userpath-worker, read from ``USERPATH_*`` environment variables.

The defaults run the whole product on a laptop with nothing installed: a SQLite database and
kombu's SQLAlchemy broker transport on SQLite files in the working directory. Production sets
``USERPATH_DATABASE_URL=postgresql+psycopg://...`` and ``USERPATH_BROKER_URL=redis://...``
(or ``amqp://...``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.schedules import parse_schedule
from userpath_client.contract import KEY_VARIABLE

ENV_PREFIX = "USERPATH_"
# The test suite's own variables (USERPATH_TEST_DATABASE_PREFIX, USERPATH_TEST_POSTGRES and the
# like) share the prefix but choose the test servers, not settings: never warned about.
_TEST_VARIABLES_PREFIX = ENV_PREFIX + "TEST_"
_NOT_SETTINGS = {KEY_VARIABLE}  # the producers' key, in the same shell as the CLI
# Set once the unknown variables were warned about: ``userpath worker`` execs Celery, which reads
# the settings again in the same terminal, and one command warns once.
_WARNED_MARKER = "_USERPATH_UNKNOWN_VARIABLES_WARNED"


class SettingsError(ValueError):
    """A ``USERPATH_*`` setting has a value the program cannot use. Its message is one line that
    names the variable, never its value; the CLI and the worker print it and exit 1."""


_BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "sqla+sqlite", "sqla+postgresql")


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where e-mail goes, from ``USERPATH_SMTP_URL``.

    ``smtp://host[:port]`` (port 25) is a plain connection, for a relay on the same host or network;
    with ``user:password@`` it must upgrade with STARTTLS before it logs in (port 587 usually), so a
    password never crosses the network in clear. ``smtps://[user:password@]host[:port]`` (port 465)
    is TLS from the first byte. Certificates are verified against the system's CAs.
    """

    host: str
    port: int
    implicit_tls: bool
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def starttls(self) -> bool:
        return not self.implicit_tls and self.username is not None


def parse_smtp_url(value: str) -> SmtpServer:
    """The server of an ``smtp://`` or ``smtps://`` URL; ValueError (never quoting it) otherwise."""
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("must be an smtp://host:port or smtps://user:password@host:port URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must name only the server: smtp://host:port or smtps://user:password@host:port")
    try:
        port = parts.port  # ValueError on a port that is not a number from 0 to 65535
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError("has a port that is not a number from 1 to 65535")
    if (parts.username is None) != (parts.password is None) or parts.username == "":
        raise ValueError("must give both a user and a password, as user:password@host, or neither")
    implicit_tls = parts.scheme == "smtps"
    return SmtpServer(
        host=parts.hostname,
        port=port or (465 if implicit_tls else 25),
        implicit_tls=implicit_tls,
        username=urllib.parse.unquote(parts.username) if parts.username is not None else None,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = "sqlite:///userpath.db"
    broker_url: str = "sqla+sqlite:///userpath-broker.db"
    # When set, stored key digests are HMAC-SHA-256 with this pepper instead of plain SHA-256,
    # so a leaked api_keys table cannot be checked against guessed keys offline.
    key_pepper: str | None = Field(default=None, repr=False)
    # How long a worker process trusts a key it has already looked up. A deleted or expired key
    # is refused by every worker within this many seconds (the contract promises 5).
    auth_cache_seconds: Annotated[float, Field(ge=0, le=5)] = 2.0
    log_level: str = "INFO"
    # Prometheus metrics of the worker's main process are served on this port; 0 turns them off.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9808
    # Redis only: how long a delivered but unacknowledged message stays invisible before Redis
    # hands it to another worker. Longer than the slowest task; RabbitMQ needs no such setting.
    visibility_timeout: Annotated[int, Field(ge=1)] = 3600
    # Messages a worker takes from the ingestion queues at once and stores in one transaction
    # (tasks/ingestion/), on Redis and RabbitMQ; 1 makes every message a Celery task of its own.
    ingest_batch_messages: Annotated[int, Field(ge=1, le=10_000)] = 1000
    # RabbitMQ only: the ingestion queues' type. Quorum queues are replicated across a cluster's
    # nodes and survive losing one; classic queues are faster on a single node. Producers must
    # declare the queues alike (the bundled client reads this setting too).
    queue_type: Literal["classic", "quorum"] = "classic"
    # Keys (by id, comma-separated) forced into the slow lane, as PostHog's forced overflow keys:
    # the worker takes one message of theirs in a turn where another key gets ten (Redis), and the
    # edge sends theirs to the overflow queue (RabbitMQ). A key's lane is fair without it.
    slow_keys: Annotated[frozenset[int], NoDecode] = frozenset()

    # Key rotation policy (the celery beat task userpath.flag_stale_keys).
    rotation_max_age_days: Annotated[int, Field(ge=1)] = 90
    rotation_unused_days: Annotated[int, Field(ge=1)] = 30
    rotation_expiring_window_days: Annotated[int, Field(ge=0)] = 7
    rotation_reminder_interval_days: Annotated[int, Field(ge=1)] = 7
    rotation_schedule: str = "0 3 * * *"  # crontab: minute hour day-of-month month day-of-week, UTC
    rotation_hard_expiry_days: Annotated[int | None, Field(ge=1)] = None  # off by default
    reminder_webhook_url: str | None = Field(default=None, repr=False)  # Slack's carry a secret

    # The web pages (``userpath web``): the address people open, which links in invitations and
    # reminders start with; the secret that signs session cookies (required against PostgreSQL,
    # generated beside the embedded SQLite database otherwise); the SMTP server that e-mails owners.
    web_base_url: str = "http://127.0.0.1:8000"
    web_secret: str | None = Field(default=None, repr=False)
    # A signed-in session ends this many hours after sign-in however active it is (besides 12 hours
    # idle): a stolen session cookie does not last forever.
    web_session_lifetime_hours: Annotated[int, Field(ge=1, le=8760)] = 168
    smtp_url: str | None = Field(default=None, repr=False)  # may carry a password
    smtp_from: str = "userpath@localhost"  # the sender of those e-mails

    # The HTTP edge (``userpath edge``): the address providers and producers reach it at (webhook
    # source URLs start with it), the requests it decides at once per process, and how long it
    # waits for the broker before answering 503.
    edge_base_url: str = "http://127.0.0.1:8080"
    edge_threads: Annotated[int, Field(ge=1, le=256)] = 16
    edge_broker_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Per-organization rate limits at the edge: a token bucket of EDGE_BURST events refilled at
    # EDGE_EVENTS_PER_SECOND, unless the organization has its own (``userpath orgs set-limits``);
    # 0 events a second: no limit but the organizations' own. A tenth of what Segment's edge takes
    # from a workspace (20,000 a second), about a twentieth of one 2-core worker's drain.
    edge_events_per_second: Annotated[int, Field(ge=0, le=10_000_000)] = 2_000
    edge_burst: Annotated[int, Field(ge=1, le=100_000_000)] = 20_000
    # The Redis every edge process shares its buckets through when the broker is not Redis (the
    # broker's Redis otherwise); without either, each edge process limits on its own.
    edge_redis_url: str | None = Field(default=None, repr=False)  # may carry a password
    # Prometheus metrics of the edge (its rate-limit refusals) on this port; 0 turns them off.
    edge_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9809

    # Encrypts the webhook signing secrets at rest: required against PostgreSQL (the same for every
    # worker and CLI), generated beside the embedded SQLite database otherwise.
    secret_key: str | None = Field(default=None, repr=False)
    # How far a signed webhook's timestamp may be from its received_at (replays older than this fail).
    webhook_tolerance_seconds: Annotated[int, Field(ge=1, le=86_400)] = 300

    # Leaked keys (userpath_worker.keys.exposure): where GitHub publishes the public keys that sign
    # its secret-scanning reports, and what a key found in public gets: revoked at once, or an hour's
    # expiry for its owners to roll it first.
    secret_scanning_keys_url: str = "https://api.github.com/meta/public_keys/secret_scanning"
    exposed_key_action: Literal["revoke", "expire_in_1h"] = "revoke"

    # Events: how long they are kept (days from received_at) unless an organization has its own
    # (``userpath orgs set-retention``), and when beat applies it and makes partitions ahead.
    event_retention_days: Annotated[int, Field(ge=1, le=36_500)] = 395
    retention_schedule: str = "30 4 * * *"
    partitions_schedule: str = "17 * * * *"

    @field_validator("rotation_schedule", "retention_schedule", "partitions_schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value.strip()

    @field_validator("reminder_webhook_url", "secret_scanning_keys_url")
    @classmethod
    def _http_webhook(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme, separator, rest = value.partition("://")
        if scheme not in ("http", "https") or not separator or not rest:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("slow_keys", mode="before")
    @classmethod
    def _key_ids(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return frozenset(int(part) for part in value.replace(" ", "").split(",") if part)
        except ValueError:
            raise ValueError(f"{value!r}: key ids separated by commas, e.g. 12,40") from None

    @field_validator("web_base_url", "edge_base_url")
    @classmethod
    def _http_base_url(cls, value: str) -> str:
        value = value.strip()
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be an http:// or https:// URL, such as https://userpath.example.com")
        if value.endswith("/"):
            raise ValueError("must not end with a slash")
        return value

    @field_validator("edge_redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        if urllib.parse.urlsplit(value.strip()).scheme not in ("redis", "rediss"):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value.strip()

    @field_validator("smtp_url")
    @classmethod
    def _smtp_server(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        parse_smtp_url(value)
        return value.strip()

    @field_validator("smtp_from")
    @classmethod
    def _one_address(cls, value: str) -> str:
        value = value.strip()
        local, at, domain = value.rpartition("@")
        if not at or not local or not domain or any(c.isspace() or c in '<>,"' for c in value):
            raise ValueError("must be one e-mail address, such as userpath@example.com")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme, separator, rest = value.partition("://")
        if not separator or scheme.split("+")[0] not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("must be sqlite:///PATH or postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE")
        if scheme in ("postgresql", "postgres"):
            # psycopg 3 is the driver we ship; SQLAlchemy would otherwise look for psycopg2.
            return f"postgresql+psycopg://{rest}"
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if scheme not in _BROKER_SCHEMES or "://" not in value:
            allowed = ", ".join(f"{s}://" for s in _BROKER_SCHEMES)
            raise ValueError(f"must be a broker URL starting with one of {allowed}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def smtp_server(self) -> SmtpServer | None:
        """The parsed ``smtp_url``, or None when owners are not e-mailed."""
        return parse_smtp_url(self.smtp_url) if self.smtp_url else None


def _first_problem(error: ValidationError) -> str:
    """One line naming the first bad variable and what is wrong with it (never its value)."""
    first = error.errors()[0]
    variable = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else ENV_PREFIX + "*"
    message = first["msg"].removeprefix("Value error, ")
    return f"{variable}: {message}"


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each ``USERPATH_*`` variable that is no setting, with the setting it most resembles (or None).

    pydantic-settings reads names in any case, so ``userpath_log_level`` is a setting too.
    """
    known = [name.upper() for name in Settings.model_fields]
    unknown = sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and not name.upper().startswith(_TEST_VARIABLES_PREFIX)
        and name.upper() not in _NOT_SETTINGS
        and name.upper().removeprefix(ENV_PREFIX) not in known
    )
    # Compared without the prefix, which every name shares and which would make any two look alike.
    closest = {name: difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), known, n=1) for name in unknown}
    return [(name, ENV_PREFIX + closest[name][0] if closest[name] else None) for name in unknown]


def _warn_about_unknown_variables() -> None:
    """One line on standard error per ``USERPATH_*`` variable that is no setting: a mistyped name
    would otherwise leave its setting at the default without a word."""
    if os.environ.get(_WARNED_MARKER):
        return
    for name, closest in unknown_variables(os.environ):
        hint = f"did you mean {closest}?" if closest else "the README's Settings table lists them"
        print(f"userpath: warning: {name} is not a setting and is ignored; {hint}", file=sys.stderr)
        os.environ[_WARNED_MARKER] = "1"


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once (warning once about unknown names)."""
    _warn_about_unknown_variables()
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(f"invalid setting {_first_problem(error)}") from None
