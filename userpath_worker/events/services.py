"""Ingestion: authenticate a message by its key, validate it, store its events exactly once and
dead-letter everything else with a reason.

One message is one transaction: the events (one multi-row INSERT ... ON CONFLICT DO NOTHING),
its dead letters and the key's last-used time commit together, so a crash or a redelivery can
neither lose nor duplicate anything.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session, sessionmaker

from userpath_client.contract import MAX_ENVELOPE_BYTES, MAX_EVENT_BYTES, TRACK_TASK, WEBHOOK_TASK
from userpath_client.schemas import EnvelopeIn, EventIn, WebhookIn, canonical_json, describe, has_nul
from userpath_worker.db import utcnow
from userpath_worker.deadletter import services as dead_letters
from userpath_worker.deadletter.models import Reason
from userpath_worker.deadletter.services import Delivery, Rejection, without_key
from userpath_worker.events import normalizers
from userpath_worker.events.models import Event, Source
from userpath_worker.events.schemas import encoded_size
from userpath_worker.keys import tokens
from userpath_worker.keys.auth import KeyAuthenticator
from userpath_worker.keys.services import KeyIdentity
from userpath_worker.keys.tokens import AuthFailure

_EVENT_ID_NAMESPACE = uuid.UUID("6f1c1a52-3d4e-4a8f-9a57-0d5b2b0c9e11")
_REFUSED_KEY = {
    AuthFailure.MALFORMED: Reason.MALFORMED_KEY,
    AuthFailure.BAD_CHECKSUM: Reason.BAD_CHECKSUM,
    AuthFailure.UNKNOWN: Reason.UNKNOWN_KEY,
    AuthFailure.DELETED: Reason.DELETED_KEY,
    AuthFailure.EXPIRED: Reason.EXPIRED_KEY,
}
# Webhook headers that carry someone's credentials; they are not kept in the event.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message: events accepted (new or already stored) and dead letters.

    The other fields are for logs and metrics; two outcomes are equal when their counts are.
    """

    stored: int
    dead_lettered: int
    reasons: dict[str, int] = field(default_factory=dict, compare=False)  # dead letters by reason
    org_id: int | None = field(default=None, compare=False)
    key: str | None = field(default=None, compare=False)  # the key's display form

    @classmethod
    def of(cls, stored: int, rejections: Sequence[Rejection], identity: KeyIdentity | None = None) -> Outcome:
        return cls(
            stored=stored,
            dead_lettered=len(rejections),
            reasons=dict(Counter(rejection.reason.value for rejection in rejections)),
            org_id=identity.org_id if identity else None,
            key=identity.display if identity else None,
        )


@dataclass(frozen=True, slots=True)
class _Verdicts:
    rows: list[dict[str, Any]]
    rejections: list[Rejection]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One ``userpath.track`` or ``userpath.webhook`` message, decoded."""

    task: str
    args: Sequence[Any]
    kwargs: dict[str, Any]
    source: Source
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class Refused:
    """A message dead-lettered before it could be judged: undecodable, not one of our tasks..."""

    rejection: Rejection
    delivery: Delivery


@dataclass(frozen=True, slots=True)
class _Judgement:
    """One message's rows and dead letters, before they are written."""

    delivery: Delivery
    rows: list[dict[str, Any]]
    rejections: list[Rejection]
    identity: KeyIdentity | None = None

    @property
    def outcome(self) -> Outcome:
        return Outcome.of(len(self.rows), self.rejections, self.identity)


def derived_event_id(*parts: str | bytes) -> str:
    """A deterministic event id, so a re-sent event without one is still stored once."""
    text = "\x1f".join(part.decode() if isinstance(part, bytes) else part for part in parts)
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, text))


def occurred_at(timestamp: dt.datetime, sent_at: dt.datetime | None, received_at: dt.datetime) -> dt.datetime:
    """Segment's clock-skew correction: the client's clock is trusted for durations only."""
    if sent_at is None:
        return timestamp
    return received_at - (sent_at - timestamp)


class Ingestor:
    def __init__(self, session_factory: sessionmaker[Session], authenticator: KeyAuthenticator) -> None:
        self.session_factory = session_factory
        self.authenticator = authenticator

    def track(self, args: Sequence[Any], kwargs: dict[str, Any], source: Source, delivery: Delivery) -> Outcome:
        """Handle one ``userpath.track`` message."""
        [outcome] = self.ingest([Incoming(TRACK_TASK, args, kwargs, source, delivery)])
        return outcome

    def webhook(self, args: Sequence[Any], kwargs: dict[str, Any], delivery: Delivery) -> Outcome:
        """Handle one ``userpath.webhook`` message."""
        [outcome] = self.ingest([Incoming(WEBHOOK_TASK, args, kwargs, Source.WEBHOOK, delivery)])
        return outcome

    def ingest(self, messages: Sequence[Incoming | Refused]) -> list[Outcome]:
        """Handle messages in one transaction: their events (one INSERT for all), their dead
        letters and their keys' last-used times commit together or not at all.

        A ``Refused`` message (one that could not even be decoded) is only dead-lettered; being
        written in the same transaction, a retried batch records it once.
        """
        with self.session_factory.begin() as session:
            judgements = [
                self._judge(session, message)
                if isinstance(message, Incoming)
                else _Judgement(message.delivery, [], [message.rejection])
                for message in messages
            ]
            _insert_events(session, [row for judgement in judgements for row in judgement.rows])
            for judgement in judgements:
                dead_letters.record(session, judgement.rejections, judgement.delivery)
            for key_id in {j.identity.key_id for j in judgements if j.rows and j.identity}:
                self.authenticator.mark_used(session, key_id)
        return [judgement.outcome for judgement in judgements]

    def keep_for_replay(self, message: Incoming, detail: str) -> Outcome:
        """Dead-letter, whole, a message that could not be stored for a reason of ours (the
        database refused it): owned by its key's organization, so that ``deadletter replay``
        stores it once the bug is fixed."""
        with self.session_factory.begin() as session:
            argument = _the_one_argument(message.args, message.kwargs)
            identity = None
            if not isinstance(argument, Rejection):
                found = self.authenticator.authenticate(session, argument.get("api_key"))
                identity = found if isinstance(found, KeyIdentity) else None
            rejection = Rejection(
                Reason.INTERNAL_ERROR,
                detail,
                argument.payload if isinstance(argument, Rejection) else without_key(argument),
                org_id=identity.org_id if identity else None,
                api_key_id=identity.key_id if identity else None,
            )
            dead_letters.record(session, [rejection], message.delivery)
        return Outcome.of(0, [rejection], identity)

    # One message: argument shape, size, authentication, then the task's own verdicts.

    def _judge(self, session: Session, incoming: Incoming) -> _Judgement:
        delivery = incoming.delivery
        message = _the_one_argument(incoming.args, incoming.kwargs)
        if isinstance(message, Rejection):
            return _Judgement(delivery, [], [message])
        try:
            size = encoded_size(message)
        except RecursionError:
            rejection = Rejection(Reason.INVALID_ENVELOPE, "the message is nested too deeply", without_key(message))
            return _Judgement(delivery, [], [rejection])
        if size > MAX_ENVELOPE_BYTES:
            detail = f"message is {size} bytes; the limit is {MAX_ENVELOPE_BYTES}"
            return _Judgement(delivery, [], [Rejection(Reason.TOO_LARGE, detail, without_key(message))])

        identity = self.authenticator.authenticate(session, message.get("api_key"))
        refusal = identity if isinstance(identity, AuthFailure) else identity.refusal(utcnow())
        if refusal is not None:
            known = identity if isinstance(identity, KeyIdentity) else None
            rejection = Rejection(
                _REFUSED_KEY[refusal],
                f"API key refused: {refusal.value}",
                without_key(message),
                org_id=known.org_id if known else None,
                api_key_id=known.key_id if known else None,
            )
            return _Judgement(delivery, [], [rejection], known)
        if incoming.task == WEBHOOK_TASK:
            verdicts = _webhook_verdicts(message, identity, delivery)
        else:
            verdicts = _track_verdicts(message, identity, incoming.source, delivery)
        return _Judgement(delivery, verdicts.rows, verdicts.rejections, identity)


# Per-task verdicts: which events to store, which to dead-letter.


def _track_verdicts(envelope: dict[str, Any], identity: KeyIdentity, source: Source, delivery: Delivery) -> _Verdicts:
    def refused(reason: Reason, detail: str, payload: Any, item: int | None = None) -> Rejection:
        return Rejection(reason, detail, payload, identity.org_id, identity.key_id, item)

    try:
        parsed = EnvelopeIn.model_validate(envelope)
    except ValidationError as error:
        return _Verdicts([], [refused(Reason.INVALID_ENVELOPE, describe(error), without_key(envelope))])

    rows: list[dict[str, Any]] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(parsed.batch):
        try:
            encoded = canonical_json(raw)
        except (ValueError, RecursionError):
            rejections.append(
                refused(
                    Reason.INVALID_EVENT,
                    f"batch.{index}: not storable JSON (NaN, lone surrogate or too deep)",
                    raw,
                    index,
                )
            )
            continue
        if len(encoded) > MAX_EVENT_BYTES:
            rejections.append(
                refused(
                    Reason.TOO_LARGE,
                    f"batch.{index}: event is {len(encoded)} bytes; the limit is {MAX_EVENT_BYTES}",
                    raw,
                    index,
                )
            )
            continue
        if has_nul(encoded):
            rejections.append(refused(Reason.INVALID_EVENT, f"batch.{index}: contains a NUL character", raw, index))
            continue
        try:
            event = EventIn.model_validate(raw)
        except ValidationError as error:
            rejections.append(refused(Reason.INVALID_EVENT, f"batch.{index}: {describe(error)}", raw, index))
            continue
        stored_json = encoded
        if tokens.BYTES_KEY_PATTERN.search(encoded):
            scrubbed = tokens.scrub(raw)
            event = EventIn.model_validate(scrubbed)
            stored_json = canonical_json(scrubbed)
        try:
            timestamp = event.timestamp.astimezone(dt.UTC)
            occurred = occurred_at(timestamp, parsed.sent_at, delivery.received_at)
        except OverflowError:
            rejections.append(
                refused(
                    Reason.INVALID_EVENT,
                    f"batch.{index}: timestamp is out of range, or too far from sent_at",
                    raw,
                    index,
                )
            )
            continue
        rows.append(
            _event_row(
                identity,
                source,
                event_id=event.event_id or derived_event_id(str(identity.key_id), encoded),
                name=event.event,
                user_id=event.user_id,
                anonymous_id=event.anonymous_id,
                properties=event.properties,
                context=event.context,
                event_json=stored_json,
                timestamp=timestamp,
                sent_at=parsed.sent_at,
                received_at=delivery.received_at,
                occurred=occurred,
            )
        )
    return _Verdicts(rows, rejections)


def _webhook_verdicts(payload: dict[str, Any], identity: KeyIdentity, delivery: Delivery) -> _Verdicts:
    try:
        webhook = WebhookIn.model_validate(payload)
    except ValidationError as error:
        rejection = Rejection(
            Reason.INVALID_ENVELOPE, describe(error), without_key(payload), identity.org_id, identity.key_id
        )
        return _Verdicts([], [rejection])
    try:
        body: Any = json.loads(webhook.body)
    except ValueError:
        body = webhook.body  # not JSON: kept as text

    def refused(detail: str) -> _Verdicts:
        return _Verdicts(
            [], [Rejection(Reason.INVALID_EVENT, detail, without_key(payload), identity.org_id, identity.key_id)]
        )

    if has_nul(canonical_json([body, webhook.headers])):
        return refused("the webhook contains a NUL character")
    try:
        received_at = webhook.received_at.astimezone(dt.UTC)
    except OverflowError:
        return refused("received_at is out of range")
    body = tokens.scrub(body)
    normalized = normalizers.normalize(webhook.provider, webhook.headers, body)
    headers = {name: value for name, value in webhook.headers.items() if name.lower() not in _CREDENTIAL_HEADERS}
    row = _event_row(
        identity,
        Source.WEBHOOK,
        event_id=derived_event_id("webhook", webhook.provider, webhook.delivery_id),
        name=f"{webhook.provider}.{normalized.type}"[:200],
        user_id=(normalized.user_id or f"webhook:{webhook.provider}")[:200],
        anonymous_id=None,
        properties=body if isinstance(body, dict) else {"body": body},
        context={
            "webhook": {
                "provider": webhook.provider,
                "delivery_id": webhook.delivery_id,
                "headers": tokens.scrub(headers),
            }
        },
        timestamp=received_at,
        sent_at=None,
        received_at=delivery.received_at,
    )
    return _Verdicts([row], [])


def replay(session: Session, payload: Any, identity: KeyIdentity, delivery: Delivery) -> str | None:
    """Validate a dead letter's payload again and store what passes now (after a contract fix).

    The payload is a whole message (api_key shown in its display form) or one event of a batch;
    the key is the one that sent it, authenticated when it arrived. Returns why it still fails,
    or None when its events are stored (again, harmlessly: storage is idempotent).
    """
    if not isinstance(payload, dict) or "preview" in payload:
        return "only a text preview was kept"
    if delivery.task == WEBHOOK_TASK:
        verdicts = _webhook_verdicts(payload, identity, delivery)
    else:
        envelope = payload if "batch" in payload else {"api_key": identity.display, "batch": [payload]}
        verdicts = _track_verdicts(envelope, identity, Source.for_queue(delivery.queue), delivery)
    if verdicts.rejections:
        return "; ".join(rejection.detail for rejection in verdicts.rejections)
    _insert_events(session, verdicts.rows)
    return None


def _event_row(
    identity: KeyIdentity,
    source: Source,
    *,
    timestamp: dt.datetime,
    sent_at: dt.datetime | None,
    received_at: dt.datetime,
    event_json: bytes | None = None,
    occurred: dt.datetime | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An events row, plus ``event_json``: the event (name, users, properties, context) as
    canonical JSON, which the PostgreSQL insert reads those columns from."""
    if event_json is None:
        event_json = canonical_json({"event": fields["name"]} | {name: fields[name] for name in _EVENT_JSON_FIELDS})
    return {
        "event_json": event_json,
        "org_id": identity.org_id,
        "api_key_id": identity.key_id,
        "environment": identity.environment,
        "source": source,
        "timestamp": timestamp,
        "sent_at": sent_at,
        "received_at": received_at,
        "occurred_at": occurred or occurred_at(timestamp, sent_at, received_at),
        **fields,
    }


def _the_one_argument(args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any] | Rejection:
    """The contract's single positional argument, which must be a JSON object."""
    if len(args) != 1 or kwargs:
        return Rejection(
            Reason.INVALID_ENVELOPE,
            f"expected exactly one positional argument, got {len(args)} positional and {len(kwargs)} keyword",
            without_key({"args": list(args), "kwargs": kwargs}),
        )
    if not isinstance(args[0], dict):
        return Rejection(
            Reason.INVALID_ENVELOPE, f"the argument must be a JSON object, not {type(args[0]).__name__}", args[0]
        )
    return args[0]


# PostgreSQL: the whole batch as one JSON document, turned into rows by one statement. A row at
# a time (executemany) costs a round of parsing and planning per event; and each event's JSON,
# already encoded to be measured, is spliced in as it is (an orjson Fragment) instead of being
# encoded again.
_EVENT_JSON_FIELDS = ("user_id", "anonymous_id", "properties", "context")  # and the name, as "event"
_JSON_ROWS_INSERT = """
INSERT INTO events (org_id, api_key_id, environment, source, event_id, name, user_id, anonymous_id,
                    properties, context, "timestamp", sent_at, received_at, occurred_at)
SELECT (r->>0)::integer, (r->>1)::integer, r->>2, r->>3, r->>4,
       r->5->>'event', r->5->>'user_id', r->5->>'anonymous_id',
       coalesce(r->5->'properties', '{}'), nullif(r->5->'context', 'null'),
       (r->>6)::timestamptz, (r->>7)::timestamptz, (r->>8)::timestamptz, (r->>9)::timestamptz
FROM jsonb_array_elements(%s::jsonb) AS incoming(r)
ON CONFLICT (org_id, event_id) DO NOTHING
"""


def _rows_document(rows: list[dict[str, Any]]) -> str:
    return orjson.dumps(
        [
            [
                row["org_id"],
                row["api_key_id"],
                row["environment"],
                row["source"],
                row["event_id"],
                orjson.Fragment(row["event_json"]),
                row["timestamp"],
                row["sent_at"],
                row["received_at"],
                row["occurred_at"],
            ]
            for row in rows
        ]
    ).decode()


def _insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql(_JSON_ROWS_INSERT, (_rows_document(rows),))
    else:
        insert = sqlite.insert(Event.__table__).on_conflict_do_nothing(index_elements=["org_id", "event_id"])
        session.execute(insert, [_sqlite_row(row) for row in rows])


def _sqlite_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its JSON columns read back from ``event_json``, as PostgreSQL reads them: the
    canonical text has kombu's datetimes and UUIDs as text already."""
    stored = orjson.loads(row["event_json"])
    return {name: value for name, value in row.items() if name != "event_json"} | {
        "properties": stored.get("properties", {}),
        "context": stored.get("context"),
    }


def newest_events(session: Session, org_id: int, limit: int = 20) -> list[Event]:
    return list(session.scalars(select(Event).where(Event.org_id == org_id).order_by(Event.id.desc()).limit(limit)))
