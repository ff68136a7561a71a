"""What an operator needs at a glance: do events flow, what was rejected, which keys are stale,
did rotation run, is a worker alive."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from amqp.exceptions import ChannelError
from celery import Celery
from kombu import Connection, Queue
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from config.celery import QUEUES
from userpath_client.contract import INGESTION_QUEUES, lane_queues
from userpath_worker.db import utcnow
from userpath_worker.deadletter.models import DeadLetter
from userpath_worker.events import lanes
from userpath_worker.events.models import Event
from userpath_worker.keys.models import ApiKey
from userpath_worker.organizations.models import Organization
from userpath_worker.rotation.models import Reminder, RotationPass


@dataclass(frozen=True)
class Status:
    database: str  # the URLs in use, passwords masked
    broker: str
    queues: dict[str, int]
    # Redis: the organizations with the most messages waiting (org_id None: a lane no worker has
    # stored from yet); None on brokers that cannot tell.
    heaviest_organizations: list[dict[str, Any]] | None
    workers: list[str] | None  # None: the broker cannot broadcast (the embedded one)
    # Node names that more than one worker answered a ping as, and how many did.
    shared_node_names: dict[str, int]
    last_event_received_at: dt.datetime | None
    dead_letters_24h: dict[str, int]
    stale_keys: int
    last_rotation_pass: dict[str, Any] | None
    last_reminder_delivered_at: dt.datetime | None
    reminders_waiting: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def broadcasts(broker_url: str) -> bool:
    """Whether workers on this broker answer a ping (kombu's SQLAlchemy transport cannot)."""
    return not broker_url.startswith("sqla+")


HEARTBEAT_SECONDS = 5.0  # how often a worker on the embedded broker touches its heartbeat file
HEARTBEAT_STALE = 3 * HEARTBEAT_SECONDS  # a file older than this: no worker beats


def heartbeat_path(broker_url: str) -> Path | None:
    """Where workers on the embedded broker, which cannot answer a ping, show they are alive:
    ``userpath-worker.heartbeat`` beside the broker's file (None on Redis and RabbitMQ)."""
    if broadcasts(broker_url):
        return None
    database = make_url(broker_url.removeprefix("sqla+")).database
    return Path(database or ".").resolve().with_name("userpath-worker.heartbeat")


def last_heartbeat(broker_url: str) -> dt.datetime | None:
    """When a worker on the embedded broker last beat, or None if none ever did here."""
    path = heartbeat_path(broker_url)
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC) if path else None
    except FileNotFoundError:
        return None


def queue_depths(broker_url: str, timeout: float = 5.0) -> dict[str, int]:
    """Messages waiting in each of our queues, their lanes (contract "lanes") included.

    The queues are declared as the worker declares them (idempotent), so a queue that a
    non-Python producer filled before any worker started is counted too. A lane queue that no
    worker has made yet holds nothing.
    """
    with Connection(broker_url, connect_timeout=timeout) as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.default_channel
        depths = {name: Queue(name)(channel).queue_declare().message_count for name in QUEUES}
        if connection.transport.driver_type == "amqp":
            for queue in INGESTION_QUEUES:
                for lane in lane_queues(queue):
                    with contextlib.suppress(ChannelError):
                        depths[queue] += connection.channel().queue_declare(lane, passive=True).message_count
        elif broker_url.startswith("redis"):
            with _redis(broker_url, timeout) as client:
                for queue, _, waiting in lanes.waiting_in_lanes(client):
                    depths[queue] += waiting
        return depths


@contextlib.contextmanager
def _redis(broker_url: str, timeout: float) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def organization_backlog(broker_url: str, timeout: float = 5.0) -> dict[int | None, int]:
    """Redis: messages waiting in each organization's lanes (empty on other brokers)."""
    if not broker_url.startswith("redis"):
        return {}
    with _redis(broker_url, timeout) as client:
        return dict(lanes.backlog_by_organization(client, lanes.waiting_in_lanes(client)))


def heaviest_organizations(
    session: Session, broker_url: str, top: int = 5, timeout: float = 5.0
) -> list[dict[str, Any]] | None:
    """Redis: the organizations with the most messages waiting in their lanes (None on other
    brokers, which cannot say whose messages a queue holds: see the per-organization metrics)."""
    if not broker_url.startswith("redis"):
        return None
    backlog = Counter(organization_backlog(broker_url, timeout))
    heaviest = [(org_id, waiting) for org_id, waiting in backlog.most_common(top) if waiting]
    known = [org_id for org_id, _ in heaviest if org_id]
    names = dict(session.execute(select(Organization.id, Organization.name).where(Organization.id.in_(known))).all())
    return [
        {"org_id": org_id, "organization": names.get(org_id) if org_id else None, "messages_waiting": waiting}
        for org_id, waiting in heaviest
    ]


def ping_workers(broker_url: str, timeout: float) -> list[str]:
    """Names of the workers that answered within ``timeout`` seconds, once per reply.

    A name is there twice when two workers share it: on Redis each receives the broadcast and
    replies on its own (Celery's ``ping`` returns one dict per reply). On RabbitMQ the second one
    cannot start: its control queue, named after the node, is the first one's exclusive queue.
    """
    app = Celery("userpath-status", broker=broker_url, set_as_current=False)
    try:
        replies = app.control.ping(timeout=timeout) or []
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)


def collect(session: Session, database_url: str, broker_url: str, ping_timeout: float = 1.0) -> Status:
    now = utcnow()
    workers = ping_workers(broker_url, ping_timeout) if broadcasts(broker_url) else None
    newest_event_id = session.scalar(select(func.max(Event.id)))
    last_pass = session.scalars(select(RotationPass).order_by(RotationPass.finished_at.desc()).limit(1)).first()
    rejected = session.execute(
        select(DeadLetter.reason, func.count())
        .where(DeadLetter.received_at >= now - dt.timedelta(hours=24))
        .group_by(DeadLetter.reason)
    ).all()
    return Status(
        database=make_url(database_url).render_as_string(hide_password=True),
        broker=maybe_sanitize_url(broker_url),
        queues=queue_depths(broker_url),
        heaviest_organizations=heaviest_organizations(session, broker_url),
        workers=workers,
        shared_node_names={name: count for name, count in Counter(workers or []).items() if count > 1},
        last_event_received_at=(
            session.scalar(select(Event.received_at).where(Event.id == newest_event_id)) if newest_event_id else None
        ),
        dead_letters_24h={reason: count for reason, count in rejected},
        stale_keys=session.scalar(
            select(func.count()).select_from(ApiKey).where(ApiKey.flagged_at.is_not(None), ApiKey.deleted_at.is_(None))
        )
        or 0,
        last_rotation_pass=(
            {
                "finished_at": last_pass.finished_at,
                "flagged": last_pass.flagged,
                "cleared": last_pass.cleared,
                "reminded": last_pass.reminded,
                "expired": last_pass.expired,
            }
            if last_pass
            else None
        ),
        last_reminder_delivered_at=session.scalar(select(func.max(Reminder.delivered_at))),
        reminders_waiting=session.scalar(
            select(func.count()).select_from(Reminder).where(Reminder.delivered_at.is_(None))
        )
        or 0,
    )
